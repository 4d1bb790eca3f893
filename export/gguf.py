"""Write a LLaMA-architecture HF model folder as a llama.cpp GGUF file, and check GGUF files.

Uses gguf-py's ``GGUFWriter`` and LLaMA tensor name map directly (llama.cpp's ``convert_hf_to_gguf.py`` is
not installable). Supports byte-level BPE tokenizers (SmolLM2, Llama-3.x).
"""

from __future__ import annotations

import json
import logging
import math
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from gloss.edge.errors import InputError, require
from gloss.edge.files import atomic_path
from gloss.edge.generation.gguf_header import LLAMA_ARCH, check_gguf, read_gguf_metadata  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)

_LLAMA3_REGEX_MARKS = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)", "\\p{N}{1,3}")


def write_gguf(model_dir: Path, out_path: Path, dtype: Literal["f32", "f16"] = "f16") -> Path:
    """Write a HF LLaMA model folder (safetensors, config, tokenizer) as a GGUF file for llama.cpp.

    Args:
        model_dir: HF folder of a ``LlamaForCausalLM``, e.g. the output of :func:`merge_adapter`.
        out_path: The ``.gguf`` file to write (atomically: temp file + rename).
        dtype: ``"f16"`` (matrices in float16, norms in float32) or ``"f32"``.

    Returns:
        ``out_path``.

    Raises:
        InputError: If the folder is not a LLaMA model with safetensors weights and a byte-level BPE
            tokenizer, or ``dtype`` is not one of the two choices.
    """
    gguf = require("gguf", "export")
    model_dir, out_path = Path(model_dir), Path(out_path)
    if dtype not in ("f32", "f16"):
        raise InputError(f"--dtype must be f32 or f16, got {dtype!r}")
    config = read_llama_config(model_dir)
    tensors = dict(_read_tensors(model_dir))  # before the writer opens: a bad folder leaves no file
    if "model.embed_tokens.weight" not in tensors:
        raise InputError(f"{model_dir}: no model.embed_tokens.weight; is this a LlamaForCausalLM checkpoint?")
    n_vocab = tensors["model.embed_tokens.weight"].shape[0]
    with atomic_path(out_path) as tmp:
        writer = gguf.GGUFWriter(tmp, LLAMA_ARCH)
        try:
            writer.add_name(model_dir.resolve().name)
            _add_hparams(writer, gguf, config, n_vocab, dtype)
            _add_tokenizer(writer, gguf, model_dir, n_vocab)
            _add_tensors(writer, gguf, config, tensors, dtype)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file(progress=False)
        finally:
            writer.close()
    logger.info("wrote %s (%s, %d tensors)", out_path, dtype, len(tensors))
    return out_path


def read_llama_config(model_dir: Path) -> dict[str, Any]:
    """Read ``config.json`` of a HF folder and check that it is a LLaMA-architecture causal LM.

    Raises:
        InputError: If ``config.json`` is missing or the model is another architecture.
    """
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise InputError(
            f"{model_dir}: no config.json; pass a HF model folder (the output of gloss-export merge)"
        )
    config = json.loads(path.read_text(encoding="utf-8"))
    archs = config.get("architectures") or []
    if config.get("model_type") != LLAMA_ARCH or (archs and "LlamaForCausalLM" not in archs):
        arch = ", ".join(archs) or config.get("model_type", "unknown")
        raise InputError(f"{model_dir} is a {arch} model; only LLaMA-architecture models can be exported")
    return config


def _read_tensors(model_dir: Path) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (HF name, float32 array) for every tensor of the folder's safetensors files."""
    safetensors = require("safetensors", "export")
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise InputError(f"{model_dir}: no *.safetensors weights; save the model with save_pretrained first")
    for file in files:
        with safetensors.safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name).float().numpy()


def _rope_settings(config: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """(rope theta, rope scaling dict) from transformers 4.x (``rope_theta``) or 5.x (``rope_parameters``)."""
    params = config.get("rope_parameters") or {}
    theta = float(config.get("rope_theta") or params.get("rope_theta") or 10000.0)
    scaling = config.get("rope_scaling") or params
    if (scaling.get("rope_type") or scaling.get("type") or "default") == "default":
        scaling = {}
    return theta, scaling


def _head_dim(config: dict[str, Any]) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def _add_hparams(writer: Any, gguf: Any, config: dict[str, Any], n_vocab: int, dtype: str) -> None:
    n_head = config["num_attention_heads"]
    head_dim = _head_dim(config)
    theta, scaling = _rope_settings(config)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(config.get("num_key_value_heads") or n_head)
    writer.add_rope_freq_base(theta)
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    writer.add_vocab_size(n_vocab)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config["hidden_size"] // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    kind = scaling.get("rope_type") or scaling.get("type")
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(scaling["factor"])
    elif kind not in (None, "llama3"):  # llama3 scaling is written as the rope_freqs tensor
        raise InputError(f"rope scaling {kind!r} is not supported; only default, linear and llama3 are")
    file_type = gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder Q/K rows from HF's rotate-half rope layout to llama.cpp's interleaved (GPT-J) layout."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _llama3_rope_factors(config: dict[str, Any], theta: float, scaling: dict[str, Any]) -> np.ndarray:
    """Per-frequency rope divisors of Llama-3.1+ scaling (what llama.cpp reads from ``rope_freqs``)."""
    dim = _head_dim(config)
    factor = scaling.get("factor", 8.0)
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old_context = scaling.get("original_max_position_embeddings", 8192)
    factors = []
    for freq in 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim):
        wavelen = 2 * math.pi / freq
        if wavelen < old_context / high:
            factors.append(1.0)
        elif wavelen > old_context / low:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def _add_tensors(
    writer: Any, gguf: Any, config: dict[str, Any], tensors: dict[str, np.ndarray], dtype: str
) -> None:
    n_head = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads") or n_head
    tied = bool(config.get("tie_word_embeddings", False))
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    theta, scaling = _rope_settings(config)
    if (scaling.get("rope_type") or scaling.get("type")) == "llama3":
        writer.add_tensor(
            gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight",
            _llama3_rope_factors(config, theta, scaling),
        )
    if not tied and "lm_head.weight" not in tensors:
        raise InputError(
            "the model has untied embeddings but no lm_head.weight; save it again with save_pretrained"
        )
    for name, data in tensors.items():
        if name.endswith("rotary_emb.inv_freq") or (tied and name == "lm_head.weight"):
            continue
        gguf_name = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise InputError(f"tensor {name!r} has no llama.cpp counterpart; is this a plain LLaMA model?")
        if name.endswith("q_proj.weight"):
            data = _permute(data, n_head)
        elif name.endswith("k_proj.weight"):
            data = _permute(data, n_kv)
        if dtype == "f16" and data.ndim == 2:  # norms stay float32, as llama.cpp's converter does
            data = data.astype(np.float16)
        writer.add_tensor(gguf_name, np.ascontiguousarray(data))


def _add_tokenizer(writer: Any, gguf: Any, model_dir: Path, n_vocab: int) -> None:
    """Write the byte-level BPE vocabulary, merges, special ids, BOS/EOS flags and chat template."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise InputError(f"{model_dir}: no tokenizer.json; save the (fast) tokenizer with the model")
    spec = json.loads(path.read_text(encoding="utf-8"))
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise InputError(
            f"{path}: a {model.get('type')} tokenizer; "
            "only byte-level BPE tokenizers (SmolLM2, Llama-3) are supported"
        )
    vocab: dict[str, int] = model["vocab"]
    added = {tok["id"]: tok for tok in spec.get("added_tokens", [])}
    by_id = {i: t for t, i in vocab.items()} | {i: tok["content"] for i, tok in added.items()}
    if max(by_id) >= n_vocab:
        raise InputError(f"{path}: token id {max(by_id)} >= the model's {n_vocab} embedding rows")
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer_name(spec, path))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    _add_special_tokens(writer, model_dir)


def _pre_tokenizer_name(spec: dict[str, Any], path: Path) -> str:
    """Name of the llama.cpp pre-tokenizer whose splitting equals this tokenizer.json's pre_tokenizer."""
    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [part.get("type") for part in parts]
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and all(
        m in json.dumps(parts[0].get("pattern")) for m in _LLAMA3_REGEX_MARKS
    ):
        return "llama-bpe"
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        # GPT-2 splitting. When no token joins a digit to anything, digits end up single tokens either way and
        # llama.cpp's "smollm" splits identically (transformers rebuilds SmolLM2's tokenizer from GGUF so).
        return "gpt-2" if any(map(_joins_number, spec["model"]["vocab"])) else "smollm"
    raise InputError(
        f"{path}: pre-tokenizer {json.dumps(pre)[:120]} has no known llama.cpp counterpart; "
        "supported: GPT-2/SmolLM2 byte-level and Llama-3 BPE tokenizers"
    )


def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's byte-to-unicode table used by byte-level BPE vocabularies."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    others = [b for b in range(256) if b not in printable]
    table = {chr(b): b for b in printable}
    table.update({chr(256 + i): b for i, b in enumerate(others)})
    return table


_BYTE_DECODER: dict[str, int] = {}


def _joins_number(token: str) -> bool:
    """True if a byte-level token's text has a numeric character next to any other character."""
    if not _BYTE_DECODER:
        _BYTE_DECODER.update(_byte_decoder())
    raw = bytes(_BYTE_DECODER[c] for c in token if c in _BYTE_DECODER)
    text = raw.decode("utf-8", errors="ignore")
    return len(text) > 1 and any(unicodedata.category(c).startswith("N") for c in text)


def _add_special_tokens(writer: Any, model_dir: Path) -> None:
    """Special ids and the add-BOS/EOS flags, read from how the HF tokenizer actually encodes text."""
    transformers = require("transformers", "export")
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    for token_id, add in (
        (tokenizer.bos_token_id, writer.add_bos_token_id),
        (tokenizer.eos_token_id, writer.add_eos_token_id),
        (tokenizer.unk_token_id, writer.add_unk_token_id),
        (tokenizer.pad_token_id, writer.add_pad_token_id),
    ):
        if token_id is not None:
            add(token_id)
    # Training tokenizes with this tokenizer, so llama.cpp must add BOS/EOS exactly when it does.
    ids = tokenizer("a").input_ids
    writer.add_add_bos_token(tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(
        tokenizer.eos_token_id is not None and len(ids) > 1 and ids[-1] == tokenizer.eos_token_id
    )
    if isinstance(tokenizer.chat_template, str):
        writer.add_chat_template(tokenizer.chat_template)

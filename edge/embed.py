"""Text embeddings on CPU with ONNX Runtime and a `tokenizers` tokenizer (no torch, no transformers)."""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from tqdm.auto import tqdm

from gloss.edge.errors import InputError, require
from gloss.edge.logs import progress_enabled

logger = logging.getLogger(__name__)

MODEL_NAME = "model.onnx"
TOKENIZER_NAME = "tokenizer.json"
CONFIG_NAME = "gloss_embedder.json"
EMBEDDER_FILES = (MODEL_NAME, TOKENIZER_NAME, CONFIG_NAME)
OUTPUT_NAME = "last_hidden_state"
CONFIG_KEYS = ("dim", "max_length", "pooling", "normalize", "source", "int8")
DEVICES = ("cpu", "auto", "cuda")
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
DEFAULT_BATCH_SIZE = 64
# Texts tokenised and length-sorted together by embed_stream. At least the 12-18k catalogues of the paper, so those
# are embedded in one chunk, i.e. exactly as one embed() call; 32k tokenised titles hold ~120 MB.
CHUNK_TEXTS = 1 << 15


@runtime_checkable
class Embedder(Protocol):
    """Anything that maps texts to L2-normalised float32 vectors of a fixed width."""

    @property
    def dim(self) -> int: ...

    def embed(
        self, texts: Sequence[str], batch_size: int = 64, show_progress: bool | None = None
    ) -> np.ndarray: ...


@dataclass(frozen=True)
class EmbedderConfig:
    """Contents of ``gloss_embedder.json``.

    Attributes:
        dim: Embedding width.
        max_length: Token limit; longer texts are truncated.
        pooling: Only ``"mean"`` (mean over the attention mask) is supported.
        normalize: L2-normalise the pooled vectors.
        source: The model the ONNX file was exported from (hub id or path).
        int8: Whether the weights were dynamically quantized to int8.
        pad_id: Token id used for padding.
    """

    dim: int
    max_length: int
    pooling: str = "mean"
    normalize: bool = True
    source: str = ""
    int8: bool = False
    pad_id: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.dim, int) or self.dim < 1:
            raise InputError(f"embedder config: dim must be a positive integer, got {self.dim!r}")
        if not isinstance(self.max_length, int) or self.max_length < 2:
            raise InputError(f"embedder config: max_length must be an integer >= 2, got {self.max_length!r}")
        if self.pooling != "mean":
            raise InputError(f"embedder config: pooling {self.pooling!r} is not supported, expected 'mean'")

    @classmethod
    def read(cls, path: Path) -> EmbedderConfig:
        """Parse ``gloss_embedder.json``.

        Raises:
            InputError: If the file is not JSON or lacks a required key.
        """
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: not a readable JSON embedder config ({exc})") from exc
        if not isinstance(data, dict):
            raise InputError(f"{path}: expected a JSON object")
        missing = [key for key in CONFIG_KEYS if key not in data]
        if missing:
            raise InputError(f"{path}: missing keys {missing}; re-export with gloss-export embedder")
        known = {key: data[key] for key in (*CONFIG_KEYS, "pad_id") if key in data}
        return cls(**known)


def _check_folder(model_dir: Path) -> None:
    if not model_dir.is_dir():
        raise InputError(f"{model_dir}: not a directory; export an embedder with gloss-export embedder")
    missing = [name for name in EMBEDDER_FILES if not (model_dir / name).is_file()]
    if missing:
        raise InputError(
            f"{model_dir}: not an embedder folder (missing {', '.join(missing)}); "
            "export one with gloss-export embedder"
        )


def _providers(ort: Any, device: str) -> list[str]:
    """Execution providers for ``device`` (see :meth:`OnnxEmbedder.load`)."""
    if device not in DEVICES:
        raise InputError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    has_cuda = CUDA_PROVIDER in ort.get_available_providers()
    if device == "cuda" and not has_cuda:
        raise InputError(f"--device cuda: onnxruntime has no {CUDA_PROVIDER} here (install onnxruntime-gpu on a "
                         "machine with an NVIDIA GPU), or use --device auto")
    return [CUDA_PROVIDER, CPU_PROVIDER] if device != "cpu" and has_cuda else [CPU_PROVIDER]


class OnnxEmbedder:
    """Sentence embeddings: tokenize, run the ONNX encoder, mean-pool over the mask, L2-normalise.

    Load with :meth:`OnnxEmbedder.load` from a folder written by ``gloss-export embedder``.
    """

    def __init__(self, session: Any, tokenizer: Any, config: EmbedderConfig, model_dir: Path) -> None:
        self._session = session
        self._tokenizer = tokenizer
        self.config = config
        self.model_dir = model_dir
        self._input_names = [node.name for node in session.get_inputs()]

    @classmethod
    def load(cls, model_dir: Path, num_threads: int | None = None, device: str = "cpu") -> OnnxEmbedder:
        """Open an embedder folder (``model.onnx``, ``tokenizer.json``, ``gloss_embedder.json``).

        Args:
            model_dir: Folder written by ``gloss-export embedder``.
            num_threads: ONNX Runtime intra-op threads; None lets it choose.
            device: ``cpu``; ``auto`` runs on ONNX Runtime's CUDA provider when it is installed and sees a GPU
                (onnxruntime-gpu), else on the CPU; ``cuda`` requires it.

        Raises:
            InputError: If the folder, a file or the config is missing or unreadable, or ``cuda`` is not available.
        """
        model_dir = Path(model_dir)
        _check_folder(model_dir)
        config = EmbedderConfig.read(model_dir / CONFIG_NAME)
        tokenizers = require("tokenizers", "edge")
        ort = require("onnxruntime", "edge")
        try:
            tokenizer = tokenizers.Tokenizer.from_file(str(model_dir / TOKENIZER_NAME))
        except Exception as exc:  # tokenizers raises a bare Exception for malformed JSON
            raise InputError(f"{model_dir / TOKENIZER_NAME}: not a valid tokenizer ({exc})") from exc
        tokenizer.no_padding()  # batches are padded here, after sorting by length
        tokenizer.enable_truncation(max_length=config.max_length)
        options = ort.SessionOptions()
        # No memory arena: it keeps the largest batch's buffers for the life of the process (a 64-title batch left
        # the int8 embedder 414 MB above start-up against 103 without it), and 5-title batches are as fast without
        # it (benchmarks/results/runtime_memory.md).
        options.enable_cpu_mem_arena = False
        if num_threads is not None:
            if num_threads < 1:
                raise InputError(f"num_threads must be >= 1, got {num_threads}")
            options.intra_op_num_threads = num_threads
            options.inter_op_num_threads = 1
        providers = _providers(ort, device)
        try:
            session = ort.InferenceSession(str(model_dir / MODEL_NAME), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
            raise InputError(f"{model_dir / MODEL_NAME}: cannot load the ONNX model ({exc})") from exc
        embedder = cls(session, tokenizer, config, model_dir)
        embedder._check_session()
        logger.debug("loaded embedder %s (dim %d, int8=%s) on %s", model_dir, config.dim, config.int8,
                     session.get_providers()[0])
        return embedder

    @property
    def provider(self) -> str:
        """The ONNX Runtime execution provider that runs the model (``CPUExecutionProvider``, ``CUDA...``)."""
        return str(self._session.get_providers()[0])

    def _check_session(self) -> None:
        names = [node.name for node in self._session.get_outputs()]
        if OUTPUT_NAME not in names:
            raise InputError(f"{self.model_dir / MODEL_NAME}: no {OUTPUT_NAME!r} output (has {names})")
        if "input_ids" not in self._input_names or "attention_mask" not in self._input_names:
            raise InputError(
                f"{self.model_dir / MODEL_NAME}: expected inputs input_ids and attention_mask, "
                f"got {self._input_names}"
            )
        unknown = sorted(set(self._input_names) - {"input_ids", "attention_mask", "token_type_ids"})
        if unknown:
            raise InputError(f"{self.model_dir / MODEL_NAME}: unsupported model inputs {unknown}")
        width = self._session.get_outputs()[names.index(OUTPUT_NAME)].shape[-1]
        if isinstance(width, int) and width != self.config.dim:
            raise InputError(
                f"{self.model_dir}: model output width {width} != dim {self.config.dim} in {CONFIG_NAME}"
            )

    @property
    def dim(self) -> int:
        """Embedding width."""
        return self.config.dim

    def embed(
        self, texts: Sequence[str], batch_size: int = DEFAULT_BATCH_SIZE, show_progress: bool | None = None
    ) -> np.ndarray:
        """Embed texts (all tokenised at once: for a whole catalogue use :meth:`embed_stream`).

        Texts are sorted by token length so that each batch pads little; rows come back in input order.

        Args:
            texts: Strings to embed.
            batch_size: Texts per ONNX run.
            show_progress: Progress bar; None means on when logging is at INFO.

        Returns:
            float32 array (len(texts), dim), rows L2-normalised if the config says so.

        Raises:
            InputError: If an item is not a string or ``batch_size < 1``.
        """
        if isinstance(texts, str):
            raise InputError("embed() takes a sequence of strings, got a single string")
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        texts = list(texts)
        for number, text in enumerate(texts):
            if not isinstance(text, str):
                raise InputError(f"text {number}: expected a string, got {type(text).__name__}")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encodings = self._tokenizer.encode_batch(texts)
        order = np.argsort([len(enc.ids) for enc in encodings], kind="stable")
        disable = not progress_enabled(show_progress, logger) or len(texts) <= batch_size
        for start in tqdm(range(0, len(texts), batch_size), desc="embed", unit="batch", disable=disable):
            rows = order[start : start + batch_size]
            out[rows] = self._embed_batch([encodings[i] for i in rows])
        return out

    def embed_stream(
        self, texts: Iterable[str], batch_size: int = DEFAULT_BATCH_SIZE, chunk_size: int = CHUNK_TEXTS,
        show_progress: bool | None = None, total: int | None = None,
    ) -> Iterator[np.ndarray]:
        """Embed texts a chunk at a time: at most ``chunk_size`` texts are tokenised and held at once.

        Each chunk is one :meth:`embed` call (sorted by length within the chunk), so up to ``chunk_size`` texts
        give exactly the vectors of one :meth:`embed` of them all.

        Args:
            texts: Strings to embed (any iterable; read lazily).
            batch_size: Texts per ONNX run.
            chunk_size: Texts per chunk.
            show_progress: Progress bar (texts, rate and ETA); None means on when logging is at INFO.
            total: Number of texts, for the bar's ETA.

        Yields:
            float32 arrays (chunk rows, dim), in input order.

        Raises:
            InputError: As :meth:`embed`, or if ``chunk_size < 1``.
        """
        if isinstance(texts, str):
            raise InputError("embed_stream() takes an iterable of strings, got a single string")
        if chunk_size < 1:
            raise InputError(f"chunk_size must be >= 1, got {chunk_size}")
        disable = not progress_enabled(show_progress, logger)
        iterator = iter(texts)
        with tqdm(total=total, desc="embed", unit="title", disable=disable, smoothing=0.05) as bar:
            while chunk := list(itertools.islice(iterator, chunk_size)):
                yield self.embed(chunk, batch_size=batch_size, show_progress=False)
                bar.update(len(chunk))

    def _embed_batch(self, encodings: Sequence[Any]) -> np.ndarray:
        width = max(len(enc.ids) for enc in encodings)
        ids = np.full((len(encodings), width), self.config.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.zeros((len(encodings), width), dtype=np.int64)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1
            types[row, : len(enc.ids)] = enc.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        hidden = self._session.run([OUTPUT_NAME], {name: feeds[name] for name in self._input_names})[0]
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        if self.config.normalize:
            pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return pooled.astype(np.float32)

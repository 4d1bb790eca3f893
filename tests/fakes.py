"""Test doubles and tiny real parts shared by the tests.

Fakes behind the edge Protocols (a deterministic embedder, a brute-force index, a scripted generator), a tiny
real ONNX embedder written in-test, and :func:`error_line` for CLI results.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gloss.edge.embed import CONFIG_NAME, MODEL_NAME, TOKENIZER_NAME
from gloss.edge.generation.generate import GeneratedQuery


class HashEmbedder:
    """Bag-of-words embedder: each word hashes to a random unit vector; texts sharing words are close."""

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim
        self.calls: list[int] = []

    def _word(self, word: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(word.lower().encode()).digest()[:8], "little")
        return np.random.default_rng(seed).standard_normal(self.dim)

    def embed(self, texts: Sequence[str], batch_size: int = 64, show_progress: bool | None = None) -> np.ndarray:
        self.calls.append(len(texts))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            vec = sum((self._word(w) for w in text.split()), np.zeros(self.dim))
            out[i] = vec / (np.linalg.norm(vec) or 1.0)
        return out


class BruteForceIndex:
    """Exact inner-product search with numpy: the reference every real index is checked against."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.matrix = np.asarray(vectors, dtype=np.float32)

    def vectors(self) -> np.ndarray:
        return self.matrix

    def __len__(self) -> int:
        return len(self.matrix)

    def search(self, queries: np.ndarray, k: int, exact: bool = True) -> tuple[np.ndarray, np.ndarray]:
        sims = queries @ self.matrix.T
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return order.astype(np.int64), np.take_along_axis(sims, order, axis=1).astype(np.float32)


class ScriptedGenerator:
    """Returns queued query titles in order (llm's MockModel.enqueue style)."""

    def __init__(self, *batches: Sequence[str]) -> None:
        self.batches = [list(b) for b in batches]
        self.histories: list[list[str]] = []

    def enqueue(self, titles: Sequence[str]) -> None:
        self.batches.append(list(titles))

    def generate(self, history: Sequence[str]) -> list[GeneratedQuery]:
        self.histories.append(list(history))
        titles = self.batches.pop(0)
        return [GeneratedQuery(title=t, score=-float(i), text=f"Title: {t}") for i, t in enumerate(titles)]


def error_line(result: Any) -> str:
    """The one ``Error:`` line of a CLI result (or of its output text); fails unless there is exactly one."""
    output = result if isinstance(result, str) else result.output
    lines = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, output
    return lines[0]


# --- a tiny real ONNX embedder: WordLevel tokenizer + tanh(E[input_ids]), mean-pooled by OnnxEmbedder ---

TINY_DIM = 16
TINY_MAX_LENGTH = 12
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
TEXTS = [
    "Title: Neutrogena T-Gel Shampoo",
    "Title: DHS Clear Shampoo 8 Fl Oz",
    "shampoo",
    "Title: Alpha Hydrox Foaming Face Wash -- 6 fl oz for dry and oily skin",
    "",
    "Title: an unknown zzyzx word",
]


def tiny_vocab(texts: Sequence[str]) -> dict[str, int]:
    """Special tokens, then every lower-cased whitespace word of ``texts``."""
    words = sorted({word.lower() for text in texts for word in text.split()})
    return {token: i for i, token in enumerate(SPECIALS + words)}


def write_tiny_embedder(
    out_dir: Path, texts: Sequence[str] = TEXTS, dim: int = TINY_DIM, seed: int = 0
) -> Path:
    """Write an embedder folder: a WordLevel tokenizer and an ONNX graph ``tanh(E[input_ids])``.

    Returns:
        ``out_dir`` (model.onnx, tokenizer.json, gloss_embedder.json).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = tiny_vocab(texts)
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    table = np.random.default_rng(seed).standard_normal((len(vocab), dim)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "input_ids"], ["gathered"], axis=0),
            helper.make_node("Tanh", ["gathered"], ["last_hidden_state"]),
        ],
        "tiny-encoder",
        inputs=[
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        outputs=[
            helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", dim])
        ],
        initializer=[numpy_helper.from_array(table, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_dir / MODEL_NAME))
    tokenizer.save(str(out_dir / TOKENIZER_NAME))
    config = {"dim": dim, "max_length": TINY_MAX_LENGTH, "pooling": "mean", "normalize": True,
              "source": "tiny-test-encoder", "int8": False, "pad_id": vocab["[PAD]"]}  # fmt: skip
    (out_dir / CONFIG_NAME).write_text(json.dumps(config), encoding="utf-8")
    return out_dir

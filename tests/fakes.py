"""Fakes behind the edge Protocols: a deterministic embedder, a brute-force index, a scripted generator."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from gloss.edge.generate import GeneratedQuery


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

"""Fusion re-ranking: generated queries + text similarity to recent history + co-purchase + popularity.

GLoSS ranks the items nearest to its generated titles. This module adds the signals the paper leaves
out and scores every candidate with one weighted sum of four features:

* ``query``: highest cosine similarity to a generated query (only when query vectors are given);
* ``text``: recency-weighted mean cosine similarity to the user's last ``history_len`` items;
* ``copurchase``: recency-weighted mean of P(next = item | history item), learned from other users'
  sequences (a :class:`CoPurchase` built by ``gloss.export.copurchase``);
* ``popularity``: ``log(1 + count) / log(1 + max count)``.

Candidates are the union of the nearest items to the recency-weighted history profile, to each query,
the strongest co-purchase successors of the recent items and the most popular items. Numpy only, so it
runs inside the edge runtime.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gloss.edge.errors import InputError
from gloss.edge.files import atomic_path
from gloss.edge.types import ScoredItem, SearchIndex

logger = logging.getLogger(__name__)

COPURCHASE_FORMAT = 1
FEATURES = ("query", "text", "copurchase", "popularity")
BUILD_HINT = "rebuild it with gloss.export.copurchase.build_copurchase"


@dataclass(frozen=True)
class CoPurchase:
    """Item -> next-item transition statistics in CSR form, plus item popularity.

    Row ``a`` lists the items bought after ``a`` (within the build window) with decayed counts,
    strongest first, so a row's first ``m`` entries are its top ``m`` successors.

    Attributes:
        indptr: (num_items + 1,) int64 row offsets.
        indices: Successor positions, int32.
        data: Decayed counts, float32, descending within each row.
        popularity: (num_items,) float32 purchase counts.
        window: Successors counted up to this many steps ahead.
        decay: Weight of a successor ``g`` steps ahead: ``decay ** (g - 1)``.
    """

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    popularity: np.ndarray
    window: int
    decay: float

    def __post_init__(self) -> None:
        num_items = len(self.popularity)
        if self.indptr.ndim != 1 or len(self.indptr) != num_items + 1:
            raise InputError(f"co-purchase: indptr has {len(self.indptr)} entries, expected {num_items + 1}; "
                             f"{BUILD_HINT}")
        if self.indptr[0] != 0 or np.any(np.diff(self.indptr) < 0) or self.indptr[-1] != len(self.indices):
            raise InputError(f"co-purchase: indptr is not a valid CSR row index; {BUILD_HINT}")
        if len(self.data) != len(self.indices):
            raise InputError(f"co-purchase: {len(self.indices)} indices but {len(self.data)} values; {BUILD_HINT}")
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= num_items):
            raise InputError(f"co-purchase: an index is outside 0..{num_items - 1}; {BUILD_HINT}")
        cumulative = np.concatenate([[0.0], np.cumsum(self.data, dtype=np.float64)])
        sums = cumulative[self.indptr[1:]] - cumulative[self.indptr[:-1]]
        object.__setattr__(self, "_row_sums", sums)

    @property
    def num_items(self) -> int:
        """Catalogue size."""
        return len(self.popularity)

    @property
    def nnz(self) -> int:
        """Number of stored (item, successor) pairs."""
        return len(self.data)

    def row(self, item: int, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Successors of ``item`` (strongest first) and their transition probabilities P(next | item)."""
        start, end = int(self.indptr[item]), int(self.indptr[item + 1])
        if limit is not None:
            end = min(end, start + limit)
        total = self._row_sums[item]  # type: ignore[attr-defined]
        probs = self.data[start:end] / total if total > 0 else self.data[start:end] * 0.0
        return self.indices[start:end], probs.astype(np.float64)

    def save(self, path: Path) -> None:
        """Write a compressed ``.npz`` atomically (temp file beside ``path``, then rename)."""
        path = Path(path)
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer, format_version=np.int64(COPURCHASE_FORMAT), indptr=self.indptr, indices=self.indices,
            data=self.data, popularity=self.popularity, window=np.int64(self.window), decay=np.float64(self.decay),
        )
        with atomic_path(path) as tmp:
            tmp.write_bytes(buffer.getvalue())
        logger.info("saved co-purchase %s (%d items, %d pairs)", path, self.num_items, self.nnz)

    @classmethod
    def load(cls, path: Path) -> CoPurchase:
        """Read a file written by :meth:`save`.

        Raises:
            InputError: If the file is missing, not an ``.npz`` of this format, or inconsistent.
        """
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such co-purchase file; {BUILD_HINT}")
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        except (OSError, ValueError, EOFError) as exc:
            raise InputError(f"{path}: not a co-purchase .npz ({exc}); {BUILD_HINT}") from exc
        version = arrays["format_version"].tolist() if "format_version" in arrays else None
        if version != COPURCHASE_FORMAT:
            raise InputError(f"{path}: co-purchase format {version!r}, expected {COPURCHASE_FORMAT}; {BUILD_HINT}")
        missing = [n for n in ("indptr", "indices", "data", "popularity", "window", "decay") if n not in arrays]
        if missing:
            raise InputError(f"{path}: co-purchase file lacks {missing}; {BUILD_HINT}")
        return cls(
            indptr=arrays["indptr"].astype(np.int64), indices=arrays["indices"].astype(np.int32),
            data=arrays["data"].astype(np.float32), popularity=arrays["popularity"].astype(np.float32),
            window=int(arrays["window"]), decay=float(arrays["decay"]),
        )


@dataclass(frozen=True)
class FusionConfig:
    """Weights and recency settings of the fused score.

    Attributes:
        query_weight: Weight of the best cosine similarity to a generated query.
        text_weight: Weight of the recency-weighted cosine similarity to recent history items.
        copurchase_weight: Weight of the recency-weighted transition probability from recent items.
        popularity_weight: Weight of log-popularity (scaled to [0, 1]).
        history_len: How many of the most recent history items the text and co-purchase features use.
        history_decay: The ``j``-th most recent item (0 = last) has weight ``history_decay ** j``.
        exclude_seen: Never recommend an item already in the history.
        num_neighbors: Candidates taken per similarity search (history profile, each query).
        num_successors: Candidates taken per recent item from its co-purchase row.
        num_popular: The most popular items are always candidates.
    """

    # Defaults: the recipe tuned on Beauty users outside the validation set (benchmarks/quality.py);
    # Toys chose the same except popularity_weight 0.05.
    query_weight: float = 1.0
    text_weight: float = 1.0
    copurchase_weight: float = 10.0
    popularity_weight: float = 0.2
    history_len: int = 5
    history_decay: float = 0.5
    exclude_seen: bool = True
    num_neighbors: int = 100
    num_successors: int = 100
    num_popular: int = 20

    def __post_init__(self) -> None:
        for name in ("query_weight", "text_weight", "copurchase_weight", "popularity_weight"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise InputError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
        if not 0 < self.history_decay <= 1:
            raise InputError(f"--history-decay must be in (0, 1], got {self.history_decay}")
        for name in ("history_len", "num_neighbors", "num_successors"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.num_popular < 0:
            raise InputError(f"--num-popular must be >= 0, got {self.num_popular}")

    def weights(self) -> np.ndarray:
        """Feature weights in :data:`FEATURES` order."""
        return np.array([self.query_weight, self.text_weight, self.copurchase_weight, self.popularity_weight])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


@dataclass(frozen=True)
class Candidates:
    """One user's candidate items and their feature matrix (columns in :data:`FEATURES` order)."""

    positions: np.ndarray
    features: np.ndarray


class FusionRanker:
    """Ranks catalogue items for a history (and optional query vectors) by the fused score.

    Args:
        num_items: Catalogue size (or the catalogue itself; its length is used).
        index: Catalogue index; its ``vectors()`` give the history items' embeddings.
        copurchase: Transition statistics over the same catalogue positions.
        config: Weights and recency settings.

    Raises:
        InputError: If the index, co-purchase statistics and catalogue disagree on the number of items.
    """

    def __init__(self, num_items: Any, index: SearchIndex, copurchase: CoPurchase, config: FusionConfig) -> None:
        size = num_items if isinstance(num_items, (int, np.integer)) else len(num_items)
        if len(index) != size or copurchase.num_items != size:
            raise InputError(
                f"catalogue has {size} items, index {len(index)}, co-purchase {copurchase.num_items}; "
                "build the co-purchase statistics and the index from the same catalogue"
            )
        self.num_items = int(size)
        self.index = index
        self.copurchase = copurchase
        self.config = config
        self.vectors = index.vectors()
        pop = np.log1p(copurchase.popularity.astype(np.float64))
        self.popularity = pop / pop.max() if pop.max() > 0 else pop
        self.popular = np.argsort(-copurchase.popularity, kind="stable")[: config.num_popular]

    def _recent(self, history: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """The last ``history_len`` items, most recent first, and their normalised recency weights."""
        recent = np.asarray(history[::-1][: self.config.history_len], dtype=np.int64)
        weights = self.config.history_decay ** np.arange(len(recent), dtype=np.float64)
        return recent, weights / weights.sum()

    def _check(self, history: Sequence[int], queries: np.ndarray | None) -> None:
        if len(history) == 0:
            raise InputError("empty history: give at least one item")
        bad = [p for p in history if not 0 <= int(p) < self.num_items]
        if bad:
            raise InputError(f"history position {bad[0]} is outside the catalogue (0..{self.num_items - 1})")
        if queries is not None and (queries.ndim != 2 or queries.shape[1] != self.vectors.shape[1]):
            raise InputError(
                f"query vectors have shape {queries.shape}, expected (num_queries, {self.vectors.shape[1]}); "
                "embed them with the bundle's embedder"
            )

    def candidates_batch(
        self, histories: Sequence[Sequence[int]], queries: Sequence[np.ndarray | None] | None = None
    ) -> list[Candidates]:
        """Candidates and features for several users, with one batched index search.

        Args:
            histories: Catalogue positions per user, oldest first.
            queries: Per user, (num_queries, dim) normalised query vectors or None.

        Returns:
            One :class:`Candidates` per user (seen items removed when ``exclude_seen``).

        Raises:
            InputError: On an empty history, a position outside the catalogue or query vectors of another dim.
        """
        if not histories:
            return []
        queries = list(queries) if queries is not None else [None] * len(histories)
        if len(queries) != len(histories):
            raise InputError(f"{len(histories)} histories but {len(queries)} query sets")
        cfg = self.config
        recents, rows, owners = [], [], []
        for user, (history, q) in enumerate(zip(histories, queries, strict=True)):
            q = None if q is None else np.asarray(q, dtype=np.float32)
            self._check(history, q)
            recent, weights = self._recent(history)
            recents.append((recent, weights, q))
            rows.append((weights[:, None] * self.vectors[recent]).sum(axis=0))
            owners.append(user)
            if q is not None:
                rows.extend(q)
                owners.extend([user] * len(q))
        max_seen = max(len(set(h)) for h in histories) if cfg.exclude_seen else 0
        depth = min(self.num_items, cfg.num_neighbors + max_seen)
        found, _ = self.index.search(np.vstack(rows).astype(np.float32), depth)
        per_user: list[list[np.ndarray]] = [[] for _ in histories]
        for owner, row in zip(owners, found, strict=True):
            per_user[owner].append(row[row >= 0])
        return [
            self._features(history, recent, weights, q, per_user[user])
            for user, (history, (recent, weights, q)) in enumerate(zip(histories, recents, strict=True))
        ]

    def _features(
        self, history: Sequence[int], recent: np.ndarray, weights: np.ndarray, queries: np.ndarray | None,
        neighbor_lists: list[np.ndarray],
    ) -> Candidates:
        """Candidate union for one user and its (num_candidates, 4) feature matrix."""
        cfg = self.config
        successor_lists, prob_lists = [], []
        for item in recent.tolist():
            succ, probs = self.copurchase.row(item, cfg.num_successors)
            successor_lists.append(succ)
            prob_lists.append(probs)
        seen = np.asarray(history, dtype=np.int64)
        if cfg.exclude_seen:  # the first num_neighbors unseen items, whatever the batch's search depth
            neighbor_lists = [n[~np.isin(n, seen)] for n in neighbor_lists]
        pool = np.concatenate([*[n[: cfg.num_neighbors] for n in neighbor_lists], *successor_lists,
                               self.popular]).astype(np.int64)
        cands = np.unique(pool)
        if cfg.exclude_seen:
            cands = cands[~np.isin(cands, seen)]
        feats = np.zeros((len(cands), len(FEATURES)), dtype=np.float64)
        if len(cands) == 0:
            return Candidates(cands, feats)
        cand_vecs = self.vectors[cands].astype(np.float64)
        if queries is not None and len(queries):
            feats[:, 0] = (cand_vecs @ queries.T.astype(np.float64)).max(axis=1)
        feats[:, 1] = cand_vecs @ (weights[:, None] * self.vectors[recent].astype(np.float64)).sum(axis=0)
        for w, succ, probs in zip(weights, successor_lists, prob_lists, strict=True):
            where = np.searchsorted(cands, succ)
            hit = (where < len(cands)) & (cands[np.minimum(where, len(cands) - 1)] == succ)
            np.add.at(feats[:, 2], where[hit], w * probs[hit])
        feats[:, 3] = self.popularity[cands]
        return Candidates(cands, feats)

    def score(self, candidates: Candidates) -> np.ndarray:
        """Fused score of each candidate."""
        return candidates.features @ self.config.weights()

    def top_k(self, candidates: Candidates, k: int) -> list[ScoredItem]:
        """Best ``k`` candidates by fused score (ties: lower catalogue position first)."""
        scores = self.score(candidates)
        order = np.lexsort((candidates.positions, -scores))[:k]
        return [ScoredItem(int(candidates.positions[i]), float(scores[i])) for i in order]

    def rank_batch(
        self, histories: Sequence[Sequence[int]], queries: Sequence[np.ndarray | None] | None = None, k: int = 10
    ) -> list[list[ScoredItem]]:
        """:meth:`rank` for several users with one batched index search."""
        if k < 1:
            raise InputError(f"--k must be >= 1, got {k}")
        return [self.top_k(c, k) for c in self.candidates_batch(histories, queries)]

    def rank(
        self, history_positions: Sequence[int], query_vectors: np.ndarray | None = None, k: int = 10
    ) -> list[ScoredItem]:
        """Rank items for one user.

        Args:
            history_positions: Catalogue positions of the history, oldest first.
            query_vectors: (num_queries, dim) normalised embeddings of generated titles, or None.
            k: Length of the returned list.

        Returns:
            Up to ``k`` items, best first, with their fused scores.

        Raises:
            InputError: On an empty history, a position outside the catalogue, query vectors of another
                dim, or ``k < 1``.
        """
        return self.rank_batch([list(history_positions)], [query_vectors], k)[0]


def load_fusion_config(path: Path) -> FusionConfig:
    """Read FusionConfig fields from a JSON or YAML file (an unknown key is an error).

    Raises:
        InputError: If the file is missing, unreadable, or has unknown keys or bad values.
    """
    import yaml  # JSON is YAML, so one parser reads both

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: not valid JSON/YAML ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of FusionConfig fields")
    known = set(FusionConfig.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(f"{path}: unknown key(s) {unknown}; valid keys: {sorted(known)}")
    return FusionConfig(**data)

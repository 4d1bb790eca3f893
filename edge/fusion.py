"""Fusion re-ranking: LLM beams + text similarity to recent history + co-purchase + popularity.

GLoSS ranks the items nearest to its generated titles. This module adds the signals the paper leaves
out and scores every candidate with one weighted sum of five features:

* ``query``: highest cosine similarity to a generated title (only when query vectors are given);
* ``text``: recency-weighted mean cosine similarity to the user's last ``history_len`` items;
* ``copurchase``: recency-weighted mean of P(next = item | history item), learned from other users'
  sequences (a :class:`CoPurchase` built by ``gloss.export.copurchase``);
* ``popularity``: ``log(1 + count) / log(1 + max count)``;
* ``beam``: the share of the LLM's beam probability that lands on the item: beam ``j`` has weight
  ``softmax(beam_scores / beam_temperature)_j`` (equal weights without scores) and lands on its catalogue
  item when the beam was constrained to the catalogue, else on its query's nearest (unseen) item;
* ``coldstart``: for an item without purchases in the statistics (``popularity == 0``: e.g. one added by
  ``gloss-export update``), its best text match to what the user is about to buy: ``max(0, cosine to the
  last history item, cosine to each generated title)``; 0 for every other item. A cold item has no
  co-purchase row and no popularity, so on text alone it could never beat warm items that are as similar;
  this prior stands in for the behavioural parts it lacks (the cold-start rule; its weight is tuned by
  ``benchmarks/coldstart.py``, which strips the statistics of a share of items and scores validation users).

Candidates are the union of the nearest items to the recency-weighted history profile, to each query,
the constrained beams' items, the strongest co-purchase successors of the recent items and the most
popular items. Numpy only, so it runs inside the edge runtime.
"""

from __future__ import annotations

import json
import logging
import numbers
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from gloss.edge.copurchase import COPURCHASE_FORMAT, CoPurchase
from gloss.edge.errors import InputError
from gloss.edge.types import ScoredItem, SearchIndex

__all__ = ["COPURCHASE_FORMAT", "FEATURES", "Candidates", "CoPurchase", "FusionConfig", "FusionRanker",
           "QuerySignals", "load_fusion_config"]

logger = logging.getLogger(__name__)

FEATURES = ("query", "text", "copurchase", "popularity", "beam", "coldstart")
WEIGHTS = tuple(f"{name}_weight" for name in FEATURES)
FLOAT_FIELDS = (*WEIGHTS, "beam_temperature", "history_decay")
INT_FIELDS = ("history_len", "num_neighbors", "num_successors", "num_popular")


@dataclass(frozen=True)
class FusionConfig:
    """Weights and recency settings of the fused score.

    Attributes:
        query_weight: Weight of the best cosine similarity to a generated query.
        text_weight: Weight of the recency-weighted cosine similarity to recent history items.
        copurchase_weight: Weight of the recency-weighted transition probability from recent items.
        popularity_weight: Weight of log-popularity (scaled to [0, 1]).
        beam_weight: Weight of the beams' probability share of an item (see the module docstring).
        beam_temperature: Softmax temperature over the beam scores (length-normalised log-probs).
        coldstart_weight: Weight of the cold-start prior of items without purchases (module docstring).
        history_len: How many of the most recent history items the text and co-purchase features use.
        history_decay: The ``j``-th most recent item (0 = last) has weight ``history_decay ** j``.
        exclude_seen: Never recommend an item already in the history.
        num_neighbors: Candidates taken per similarity search (history profile, each query).
        num_successors: Candidates taken per recent item from its co-purchase row.
        num_popular: The most popular items are always candidates.
    """

    # Defaults: text/co-purchase/popularity/history from Beauty users outside the validation set
    # (benchmarks/quality.py; Toys chose the same except popularity_weight 0.05); query/beam weights and
    # temperature from 500 Beauty validation users with the shipped adapter (benchmarks/llm_fusion.py):
    # its free beams scored best with both LLM weights at 0 (query weight 1 lowered Recall@5), so until a
    # better adapter ships the beams do not move the ranking. Set them in the fusion --config to use them.
    query_weight: float = 0.0
    text_weight: float = 1.0
    copurchase_weight: float = 10.0
    popularity_weight: float = 0.2
    beam_weight: float = 0.0
    beam_temperature: float = 1.0
    coldstart_weight: float = 0.2  # best Beauty NDCG@10 with 10% of items made cold (benchmarks/coldstart.py)
    history_len: int = 5
    history_decay: float = 0.5
    exclude_seen: bool = True
    num_neighbors: int = 100
    num_successors: int = 100
    num_popular: int = 20

    @property
    def uses_llm(self) -> bool:
        """True when a generated title or beam can move the ranking (a query or beam weight above 0).

        The cold-start prior also reads generated titles, but only as an alternative anchor to the last item.
        """
        return self.query_weight > 0 or self.beam_weight > 0

    @classmethod
    def from_dict(cls, data: Any, source: str) -> FusionConfig:
        """The config of a mapping read from a file: a ``--config`` YAML or a bundle manifest's ``fusion.config``.

        Args:
            data: The parsed mapping of field names to values.
            source: Where it was read, starting every error message.

        Raises:
            InputError: For a non-mapping, an unknown key, or a field of the wrong type or out of range.
        """
        if not isinstance(data, dict):
            raise InputError(f"{source}: expected a mapping of FusionConfig fields, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"{source}: unknown key(s) {unknown}; valid keys: {sorted(known)}")
        try:
            return cls(**data)
        except InputError as exc:
            raise InputError(f"{source}: {exc}") from None

    def _check_types(self) -> None:
        """Each field of its type, stored as a plain Python value (a YAML file or a manifest can hold anything;
        numpy scalars from a tuning script must stay JSON-ready)."""
        for name in (*FLOAT_FIELDS, *INT_FIELDS, "exclude_seen"):
            value = getattr(self, name)
            is_bool = isinstance(value, (bool, np.bool_))
            if name == "exclude_seen":
                ok, kind, plain = is_bool, "true or false", bool
            elif name in INT_FIELDS:
                ok, kind, plain = not is_bool and isinstance(value, numbers.Integral), "a whole number", int
            else:
                ok, kind, plain = not is_bool and isinstance(value, numbers.Real), "a number", _plain_float
            if not ok:
                raise InputError(f"--{name.replace('_', '-')} must be {kind}, got {_shown(value)}")
            object.__setattr__(self, name, plain(value))

    def __post_init__(self) -> None:
        self._check_types()
        for name in WEIGHTS:
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise InputError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
        if not np.isfinite(self.beam_temperature) or self.beam_temperature <= 0:
            raise InputError(f"--beam-temperature must be a finite number > 0, got {self.beam_temperature}")
        if not 0 < self.history_decay <= 1:
            raise InputError(f"--history-decay must be in (0, 1], got {self.history_decay}")
        for name in ("history_len", "num_neighbors", "num_successors"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.num_popular < 0:
            raise InputError(f"--num-popular must be >= 0, got {self.num_popular}")

    def weights(self) -> np.ndarray:
        """Feature weights in :data:`FEATURES` order."""
        return np.array([getattr(self, name) for name in WEIGHTS])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def _plain_float(value: Any) -> float:
    try:
        return float(value)
    except OverflowError:  # an integer of hundreds of digits: refused by the range checks as not finite
        return float("inf")


def _shown(value: Any) -> str:
    """A config value as its file had it (JSON), cut short."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


@dataclass(frozen=True)
class QuerySignals:
    """One user's LLM output as fusion reads it.

    Attributes:
        vectors: (num_beams, dim) normalised embeddings of the generated titles.
        scores: (num_beams,) beam scores (length-normalised log-probs), or None (equal beam weights).
        positions: (num_beams,) catalogue positions of constrained beams, -1 where a beam is no catalogue
            item, or None for free beams.
    """

    vectors: np.ndarray
    scores: np.ndarray | None = None
    positions: np.ndarray | None = None

    def beam_weights(self, temperature: float) -> np.ndarray:
        """Softmax of the beam scores over ``temperature`` (equal weights without scores)."""
        if self.scores is None:
            return np.full(len(self.vectors), 1.0 / max(len(self.vectors), 1))
        z = np.asarray(self.scores, dtype=np.float64) / temperature
        z = np.exp(z - z.max())
        return z / z.sum()


def as_signals(queries: QuerySignals | np.ndarray | None) -> QuerySignals | None:
    """Accept bare query vectors where signals are expected."""
    if queries is None or isinstance(queries, QuerySignals):
        return queries
    return QuerySignals(np.asarray(queries, dtype=np.float32))


@dataclass(frozen=True)
class Candidates:
    """One user's candidate items and their feature matrix (columns in :data:`FEATURES` order)."""

    positions: np.ndarray
    features: np.ndarray


class FusionRanker:
    """Ranks catalogue items for a history (and optional LLM signals) by the fused score.

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
        # O(num_items) once per statistics object (no full sort), shared by rankers made by with_config
        self.popularity = copurchase.scaled_popularity()
        self.popular = copurchase.most_popular(config.num_popular)
        self.cold = copurchase.cold()  # no purchases in the statistics: the cold-start prior applies

    def with_config(self, **changes: Any) -> FusionRanker:
        """The same ranker with some :class:`FusionConfig` fields changed (e.g. ``exclude_seen``)."""
        config = replace(self.config, **changes)
        return self if config == self.config else FusionRanker(self.num_items, self.index, self.copurchase, config)

    def _recent(self, history: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """The last ``history_len`` items, most recent first, and their normalised recency weights."""
        recent = np.asarray(history[::-1][: self.config.history_len], dtype=np.int64)
        weights = self.config.history_decay ** np.arange(len(recent), dtype=np.float64)
        return recent, weights / weights.sum()

    def _check(self, history: Sequence[int], signals: QuerySignals | None) -> None:
        if len(history) == 0:
            raise InputError("empty history: give at least one item")
        bad = [p for p in history if not 0 <= int(p) < self.num_items]
        if bad:
            raise InputError(f"history position {bad[0]} is outside the catalogue (0..{self.num_items - 1})")
        if signals is None:
            return
        vectors, n = signals.vectors, len(signals.vectors)
        if vectors.ndim != 2 or vectors.shape[1] != self.vectors.shape[1]:
            raise InputError(
                f"query vectors have shape {vectors.shape}, expected (num_queries, {self.vectors.shape[1]}); "
                "embed them with the bundle's embedder"
            )
        for name in ("scores", "positions"):
            values = getattr(signals, name)
            if values is not None and np.shape(values) != (n,):
                raise InputError(f"{n} query vectors but beam {name} of shape {np.shape(values)}")
        if signals.positions is not None and np.any(np.asarray(signals.positions) >= self.num_items):
            raise InputError(f"a constrained beam's position is outside the catalogue (0..{self.num_items - 1})")

    def candidates_batch(
        self, histories: Sequence[Sequence[int]], queries: Sequence[QuerySignals | np.ndarray | None] | None = None
    ) -> list[Candidates]:
        """Candidates and features for several users, with one batched index search.

        Args:
            histories: Catalogue positions per user, oldest first.
            queries: Per user, :class:`QuerySignals` (or bare (num_queries, dim) normalised query vectors)
                or None.

        Returns:
            One :class:`Candidates` per user (seen items removed when ``exclude_seen``).

        Raises:
            InputError: On an empty history, a position outside the catalogue or query signals that do not fit.
        """
        if not histories:
            return []
        signals = [as_signals(q) for q in queries] if queries is not None else [None] * len(histories)
        if len(signals) != len(histories):
            raise InputError(f"{len(histories)} histories but {len(signals)} query sets")
        cfg = self.config
        recents, rows, owners = [], [], []
        for user, (history, q) in enumerate(zip(histories, signals, strict=True)):
            self._check(history, q)
            recent, weights = self._recent(history)
            recents.append((recent, weights))
            rows.append((weights[:, None] * self.vectors[recent]).sum(axis=0))
            owners.append(user)
            if q is not None:
                rows.extend(q.vectors)
                owners.extend([user] * len(q.vectors))
        max_seen = max(len(set(h)) for h in histories) if cfg.exclude_seen else 0
        depth = min(self.num_items, cfg.num_neighbors + max_seen)
        found, _ = self.index.search(np.vstack(rows).astype(np.float32), depth)
        per_user: list[list[np.ndarray]] = [[] for _ in histories]
        for owner, row in zip(owners, found, strict=True):
            per_user[owner].append(row[row >= 0])
        return [
            self._features(history, recent, weights, q, per_user[user])
            for user, (history, (recent, weights), q) in enumerate(zip(histories, recents, signals, strict=True))
        ]

    def _beam_items(self, signals: QuerySignals, query_lists: list[np.ndarray]) -> np.ndarray:
        """Each beam's item: its constrained catalogue position, else its query's nearest listed item."""
        nearest = np.array([n[0] if len(n) else -1 for n in query_lists], dtype=np.int64)
        if signals.positions is None:
            return nearest
        positions = np.asarray(signals.positions, dtype=np.int64)
        return np.where(positions >= 0, positions, nearest)

    def _features(
        self, history: Sequence[int], recent: np.ndarray, weights: np.ndarray, signals: QuerySignals | None,
        neighbor_lists: list[np.ndarray],
    ) -> Candidates:
        """Candidate union for one user and its (num_candidates, len(FEATURES)) feature matrix."""
        cfg = self.config
        successor_lists, prob_lists = [], []
        for item in recent.tolist():
            succ, probs = self.copurchase.row(item, cfg.num_successors)
            successor_lists.append(succ)
            prob_lists.append(probs)
        seen = np.asarray(history, dtype=np.int64)
        if cfg.exclude_seen:  # the first num_neighbors unseen items, whatever the batch's search depth
            neighbor_lists = [n[~np.isin(n, seen)] for n in neighbor_lists]
        beam_items = self._beam_items(signals, neighbor_lists[1:]) if signals is not None else np.zeros(0, np.int64)
        pool = np.concatenate([*[n[: cfg.num_neighbors] for n in neighbor_lists], *successor_lists,
                               self.popular, beam_items[beam_items >= 0]]).astype(np.int64)
        cands = np.unique(pool)
        if cfg.exclude_seen:
            cands = cands[~np.isin(cands, seen)]
        feats = np.zeros((len(cands), len(FEATURES)), dtype=np.float64)
        if len(cands) == 0:
            return Candidates(cands, feats)
        cand_vecs = self.vectors[cands].astype(np.float64)
        if signals is not None and len(signals.vectors):
            feats[:, 0] = (cand_vecs @ signals.vectors.T.astype(np.float64)).max(axis=1)
            self._add_at(cands, feats[:, 4], beam_items, signals.beam_weights(cfg.beam_temperature))
        feats[:, 1] = cand_vecs @ (weights[:, None] * self.vectors[recent].astype(np.float64)).sum(axis=0)
        for w, succ, probs in zip(weights, successor_lists, prob_lists, strict=True):
            self._add_at(cands, feats[:, 2], succ, w * probs)
        feats[:, 3] = self.popularity[cands]
        anchor = cand_vecs @ self.vectors[recent[0]].astype(np.float64)
        if signals is not None and len(signals.vectors):
            anchor = np.maximum(anchor, feats[:, 0])
        feats[:, FEATURES.index("coldstart")] = np.where(self.cold[cands], np.maximum(anchor, 0.0), 0.0)
        return Candidates(cands, feats)

    @staticmethod
    def _add_at(cands: np.ndarray, column: np.ndarray, items: np.ndarray, values: np.ndarray) -> None:
        """``column[c] += value`` for every (item, value) whose item is candidate ``c`` (cands sorted)."""
        where = np.searchsorted(cands, items)
        hit = (where < len(cands)) & (cands[np.minimum(where, len(cands) - 1)] == items)
        np.add.at(column, where[hit], np.asarray(values)[hit])

    def score(self, candidates: Candidates) -> np.ndarray:
        """Fused score of each candidate."""
        return candidates.features @ self.config.weights()

    def feature_parts(self, candidates: Candidates) -> dict[str, np.ndarray]:
        """Each feature's weighted part of every candidate's score, by :data:`FEATURES` name; the parts of a
        candidate add up to its :meth:`score` (what ``gloss-edge recommend --explain`` shows)."""
        parts = candidates.features * self.config.weights()
        return {name: parts[:, j] for j, name in enumerate(FEATURES)}

    def top_k(self, candidates: Candidates, k: int) -> list[ScoredItem]:
        """Best ``k`` candidates by fused score (ties: lower catalogue position first)."""
        scores = self.score(candidates)
        order = np.lexsort((candidates.positions, -scores))[:k]
        return [ScoredItem(int(candidates.positions[i]), float(scores[i])) for i in order]

    def rank_batch(
        self, histories: Sequence[Sequence[int]], queries: Sequence[QuerySignals | np.ndarray | None] | None = None,
        k: int = 10,
    ) -> list[list[ScoredItem]]:
        """:meth:`rank` for several users with one batched index search."""
        if k < 1:
            raise InputError(f"--k must be >= 1, got {k}")
        return [self.top_k(c, k) for c in self.candidates_batch(histories, queries)]

    def rank(
        self, history_positions: Sequence[int], query_vectors: QuerySignals | np.ndarray | None = None, k: int = 10
    ) -> list[ScoredItem]:
        """Rank items for one user.

        Args:
            history_positions: Catalogue positions of the history, oldest first.
            query_vectors: The LLM's beams as :class:`QuerySignals`, or bare (num_queries, dim) normalised
                embeddings of generated titles, or None.
            k: Length of the returned list.

        Returns:
            Up to ``k`` items, best first, with their fused scores.

        Raises:
            InputError: On an empty history, a position outside the catalogue, query signals that do not
                fit, or ``k < 1``.
        """
        return self.rank_batch([list(history_positions)], [query_vectors], k)[0]


def load_fusion_config(path: Path) -> FusionConfig:
    """Read FusionConfig fields from a JSON or YAML file (an unknown key is an error).

    Raises:
        InputError: If the file is missing, unreadable, or has unknown keys or bad values.
    """
    from gloss.edge.files import read_yaml  # JSON is YAML, so one parser reads both

    path = Path(path)
    data = read_yaml(path, what="fusion config file")  # one-line errors naming line / byte offset
    return FusionConfig.from_dict({} if data is None else data, source=str(path))

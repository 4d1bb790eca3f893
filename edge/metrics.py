"""Ranking metrics with one relevant item, and the paper's user segments."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

KS = (5, 10)
MRR_K = 10  # MRR counts the target only within the top 10, everywhere (CLI, benchmarks, quality.json)
COLD_START_MAX = 5  # <= 5 interactions
# Power users have more than this many interactions (the paper: 14 on Beauty, 13 on Toys and Sports).
POWER_MIN_DEFAULT = 13
POWER_MIN = {"beauty": 14, "toys": 13, "sports": 13}


def rank_of(ranked: Sequence[str], target: str) -> int | None:
    """1-based rank of ``target`` in ``ranked``, or None."""
    try:
        return ranked.index(target) + 1
    except ValueError:
        return None


def recall_at_k(rank: int | None, k: int) -> float:
    """1 if the relevant item is in the top k."""
    return float(rank is not None and rank <= k)


def ndcg_at_k(rank: int | None, k: int) -> float:
    """NDCG@k with one relevant item: 1 / log2(rank + 1) inside the top k."""
    return 1.0 / math.log2(rank + 1) if rank is not None and rank <= k else 0.0


def reciprocal_rank(rank: int | None, k: int = MRR_K) -> float:
    """MRR@k's term: 1 / rank if the relevant item is in the top ``k``, else 0."""
    return 1.0 / rank if rank is not None and rank <= k else 0.0


def segment_of(num_interactions: int, power_min: int = POWER_MIN_DEFAULT) -> str:
    """The paper's user segment: ``cold`` (<= 5 interactions), ``power`` (> power_min), else ``regular``."""
    if num_interactions <= COLD_START_MAX:
        return "cold"
    if num_interactions > power_min:
        return "power"
    return "regular"


@dataclass
class MetricSums:
    """Running sums of per-user metrics; ``summary()`` gives the means."""

    ks: tuple[int, ...] = KS
    count: int = 0
    sums: dict[str, float] = field(default_factory=dict)

    def add(self, rank: int | None) -> None:
        """Add one user whose relevant item has ``rank`` (None: not retrieved)."""
        self.count += 1
        values = {"mrr": reciprocal_rank(rank)}
        for k in self.ks:
            values[f"recall@{k}"] = recall_at_k(rank, k)
            values[f"ndcg@{k}"] = ndcg_at_k(rank, k)
        for name, value in values.items():
            self.sums[name] = self.sums.get(name, 0.0) + value

    def names(self) -> list[str]:
        """Metric names in report order."""
        return [f"{m}@{k}" for m in ("recall", "ndcg") for k in self.ks] + ["mrr"]

    def summary(self) -> dict[str, float]:
        """Mean of every metric plus ``users`` (zeros for a segment without users)."""
        out: dict[str, float] = {"users": self.count}
        for name in self.names():
            out[name] = self.sums.get(name, 0.0) / self.count if self.count else 0.0
        return out


def summarize(
    ranks: Iterable[int | None], num_interactions: Iterable[int], power_min: int = POWER_MIN_DEFAULT,
    ks: tuple[int, ...] = KS,
) -> dict[str, dict[str, float]]:
    """Metrics overall and per segment.

    Returns:
        ``{"all": {...}, "cold": {...}, "regular": {...}, "power": {...}}``.
    """
    groups = {name: MetricSums(ks) for name in ("all", "cold", "regular", "power")}
    for rank, n in zip(ranks, num_interactions, strict=True):
        groups["all"].add(rank)
        groups[segment_of(n, power_min)].add(rank)
    return {name: sums.summary() for name, sums in groups.items()}

"""The numbers of an evaluation report: per-user ranks of a run, Recall@k curves, segments, rank distributions, and
two runs compared user by user with bootstrap intervals (numpy only; the plots and HTML are elsewhere).

A report needs each user's rank of the target, not only the means, so ``gloss-edge eval --report`` ranks
:data:`REPORT_K` items per user and keeps the ranks in its JSON (``extra.per_user``); ``--compare OTHER.json``
reads another run's ranks from there and pairs the two runs by user.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gloss.edge.errors import InputError, require
from gloss.edge.files import read_jsonl, read_text
from gloss.edge.metrics import POWER_MIN_DEFAULT, ndcg_at_k, recall_at_k, reciprocal_rank, segment_of, summarize

if TYPE_CHECKING:
    from gloss.edge.evaluate import EvalCase, EvalReport

logger = logging.getLogger(__name__)

REPORT_K = 50  # items ranked per user for a report: the Recall@k curve runs k = 1..50
SEGMENTS = ("all", "cold", "regular", "power")
# Per-user metrics compared between runs (paired by user).
PAIRED_METRICS = ("recall@1", "recall@5", "recall@10", "recall@20", "recall@50", "ndcg@5", "ndcg@10", "mrr")
NUM_RESAMPLES = 2000
LEVEL = 0.95
BOOTSTRAP_CHUNK = 100  # resamples drawn at once (a chunk holds chunk x users counts)


@dataclass(frozen=True)
class UserRanks:
    """Each user's rank of the target in one run.

    Attributes:
        users: User ids (unique).
        targets: Each user's target item id.
        ranks: 1-based rank of the target, 0 when it is not within the first ``depth`` items.
        interactions: Each user's number of interactions (history + target), for the paper's segments.
        depth: How many items were ranked per user.
    """

    users: tuple[str, ...]
    targets: tuple[str, ...]
    ranks: np.ndarray
    interactions: np.ndarray
    depth: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready columns (rank null: not within ``depth``)."""
        return {"depth": self.depth, "user": list(self.users), "target": list(self.targets),
                "rank": [int(r) if r else None for r in self.ranks.tolist()],
                "interactions": [int(n) for n in self.interactions.tolist()]}

    @classmethod
    def from_dict(cls, data: Any, name: str) -> UserRanks:
        """Read :meth:`to_dict`'s columns back, checking them.

        Raises:
            InputError: If a column is missing, the columns differ in length, or a value has the wrong type.
        """
        columns = ("user", "target", "rank", "interactions")
        if not isinstance(data, dict) or not all(isinstance(data.get(c), list) for c in columns):
            raise InputError(f"{name}: 'per_user' must hold the lists {', '.join(columns)}")
        lengths = {len(data[c]) for c in columns}
        depth = data.get("depth")
        if len(lengths) != 1 or not data["user"] or not isinstance(depth, int) or depth < 1:
            raise InputError(f"{name}: 'per_user' lists must be non-empty and of one length, with a depth >= 1")
        ranks = [0 if r is None else r for r in data["rank"]]
        if not all(isinstance(r, int) and 0 <= r <= depth for r in ranks):
            raise InputError(f"{name}: 'per_user' ranks must be null or integers in [1, {depth}]")
        if not all(isinstance(n, int) and n >= 1 for n in data["interactions"]):
            raise InputError(f"{name}: 'per_user' interactions must be integers >= 1")
        return cls(tuple(map(str, data["user"])), tuple(map(str, data["target"])), np.asarray(ranks, dtype=np.int64),
                   np.asarray(data["interactions"], dtype=np.int64), depth)


@dataclass(frozen=True)
class Run:
    """One evaluation as a report shows it: its settings, metrics and per-user ranks.

    Attributes:
        label: Name in tables and legends.
        source: Query source (queries, last-item, bundle).
        config: The rule in effect (``rule``, ``exclude_seen``, ties, fusion weights, ``power_min``...).
        metrics: The eval's own summary (segments x metrics).
        per_user: The ranks.
        seconds: Time the evaluation took.
    """

    label: str
    source: str
    config: dict[str, Any]
    metrics: dict[str, dict[str, float]]
    per_user: UserRanks
    seconds: float = 0.0

    @property
    def power_min(self) -> int:
        """Power users have more interactions than this."""
        return int(self.config.get("power_min", POWER_MIN_DEFAULT))


def run_from_dict(data: Any, label: str, name: str) -> Run:
    """A run from an eval JSON (``EvalReport.to_dict()``) that carries per-user ranks.

    Raises:
        InputError: If the JSON is not an eval report, or has no per-user ranks (naming how to write one).
    """
    if not isinstance(data, dict) or not {"metrics", "config", "source"} <= set(data):
        raise InputError(f"{name}: not a gloss-edge eval JSON (expected metrics, config, source)")
    per_user = (data.get("extra") or {}).get("per_user")
    if per_user is None:
        raise InputError(f"{name}: no per-user ranks (extra.per_user); write the JSON with "
                         "gloss-edge eval ... --report R.html --out OTHER.json, then --compare OTHER.json")
    return Run(label, str(data["source"]), dict(data["config"]), data["metrics"],
               UserRanks.from_dict(per_user, name), float(data.get("seconds", 0.0)))


def load_run(path: Path, label: str | None = None) -> Run:
    """Read an eval JSON written with ``--report --out PATH`` (see :func:`run_from_dict`)."""
    import json

    text = read_text(path, what="eval JSON")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    return run_from_dict(data, label or Path(path).name, str(path))


def prepare_report(report_path: Path | None, compare_path: Path | None) -> Run | None:
    """Checks before a long evaluation: matplotlib is there for a report, and the run to compare with is readable.

    Returns:
        The run to compare with (``--compare``), or None.

    Raises:
        InputError: If ``--compare`` comes without ``--report``, or its JSON has no per-user ranks.
        MissingDependencyError: If matplotlib is not installed (``pip install 'gloss[plot]'``).
    """
    if report_path is None:
        if compare_path is not None:
            raise InputError("--compare needs --report FILE (the comparison is part of the HTML report)")
        return None
    require("matplotlib", "plot")
    if compare_path is None:
        return None
    run = load_run(compare_path)
    return replace(run, label=f"{Path(compare_path).name} ({run.source}, {run.config.get('rule')})")


def evaluate_with_ranks(
    evaluate: Callable[[Iterable[EvalCase], Path], EvalReport], cases: Iterable[EvalCase],
    details_path: Path | None = None,
) -> EvalReport:
    """Run ``evaluate(cases, details_path)`` and add each user's rank to the report (``extra.per_user``).

    The ranks come from the details file ``evaluate`` writes (a temporary one unless ``details_path`` is given),
    each user's interactions from the cases as they stream by.

    Raises:
        InputError: If a user id repeats (runs are paired by user).
    """
    seen: list[tuple[str, int]] = []

    def watched() -> Iterator[EvalCase]:
        for case in cases:
            seen.append((case.user, len(case.history) + 1))
            yield case

    with tempfile.TemporaryDirectory(prefix="gloss-report-") as tmp:
        path = Path(details_path) if details_path is not None else Path(tmp) / "details.jsonl"
        report = evaluate(watched(), path)
        rows = list(read_jsonl(path))
    users = [user for user, _ in seen]
    if len(set(users)) != len(users):
        raise InputError("a user id repeats in the evaluated cases; a report pairs runs by user, so ids must be unique")
    depth = int(report.config.get("k", 0)) or max((len(row["ranked"]) for row in rows), default=1)
    report.extra["per_user"] = UserRanks(
        tuple(users), tuple(row["target"] for row in rows), np.asarray([row["rank"] or 0 for row in rows]),
        np.asarray([n for _, n in seen]), depth).to_dict()
    return report


def metric_values(ranks: np.ndarray, name: str) -> np.ndarray:
    """Each user's value of a metric (``recall@K``, ``ndcg@K``, ``mrr``) from ranks (0: not ranked), with the
    functions of :mod:`gloss.edge.metrics`."""
    as_rank = [int(r) if r else None for r in np.asarray(ranks).tolist()]
    if name == "mrr":
        return np.array([reciprocal_rank(r) for r in as_rank])
    kind, _, k = name.partition("@")
    function = {"recall": recall_at_k, "ndcg": ndcg_at_k}.get(kind)
    if function is None or not k.isdigit():
        raise InputError(f"unknown metric {name!r}: expected recall@K, ndcg@K or mrr")
    return np.array([function(r, int(k)) for r in as_rank])


def recall_curve(ranks: np.ndarray, depth: int = REPORT_K) -> np.ndarray:
    """Recall@k for k = 1..depth: the share of users whose target is within the first k."""
    ranks = np.asarray(ranks)
    hits = np.bincount(ranks[(ranks > 0) & (ranks <= depth)], minlength=depth + 1)[1:]
    return np.cumsum(hits) / max(len(ranks), 1)


def rank_counts(ranks: np.ndarray, depth: int) -> tuple[np.ndarray, int]:
    """Users per target rank 1..depth, and users whose target is not within ``depth``."""
    ranks = np.asarray(ranks)
    inside = (ranks > 0) & (ranks <= depth)
    return np.bincount(ranks[inside], minlength=depth + 1)[1:], int((~inside).sum())


def segments_of(per_user: UserRanks, power_min: int) -> np.ndarray:
    """The paper's segment of every user (``cold``, ``regular``, ``power``)."""
    return np.array([segment_of(int(n), power_min) for n in per_user.interactions.tolist()])


def segment_summary(per_user: UserRanks, power_min: int, ks: tuple[int, ...] = (1, 5, 10, 20, 50)) -> dict[str, dict]:
    """Metrics overall and per segment from the ranks (:func:`gloss.edge.metrics.summarize`), k capped at depth."""
    ks = tuple(k for k in ks if k <= per_user.depth)
    ranks = [int(r) if r else None for r in per_user.ranks.tolist()]
    return summarize(ranks, per_user.interactions.tolist(), power_min=power_min, ks=ks)


def bootstrap_mean(
    values: np.ndarray, num_resamples: int = NUM_RESAMPLES, level: float = LEVEL, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mean of each column and its percentile bootstrap interval (users resampled with replacement).

    Args:
        values: (users,) or (users, columns); one resample draws whole rows, so columns stay paired.
        num_resamples: Bootstrap resamples.
        level: Coverage of the interval (0.95: the 2.5th to the 97.5th percentile).
        seed: Seed of the resampling (reports are reproducible).

    Returns:
        ``(mean, low, high)``, each of shape (columns,) (a scalar array for 1-D ``values``).
    """
    values = np.asarray(values, dtype=np.float64)
    flat = values.ndim == 1
    matrix = values[:, None] if flat else values
    n = len(matrix)
    if n == 0:
        raise InputError("no users to resample")
    rng = np.random.default_rng(seed)
    means = np.empty((num_resamples, matrix.shape[1]))
    for start in range(0, num_resamples, BOOTSTRAP_CHUNK):
        rows = min(BOOTSTRAP_CHUNK, num_resamples - start)
        draws = rng.integers(0, n, size=(rows, n)) + n * np.arange(rows)[:, None]
        counts = np.bincount(draws.ravel(), minlength=rows * n).reshape(rows, n)  # how often each user is drawn
        means[start : start + rows] = counts @ matrix / n
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2], axis=0)
    mean = matrix.mean(axis=0)
    return (mean[0], low[0], high[0]) if flat else (mean, low, high)


@dataclass(frozen=True)
class Paired:
    """One metric of two runs on the same users: means, the difference (this - other) and its interval."""

    metric: str
    segment: str
    users: int
    this: float
    other: float
    diff: float
    low: float
    high: float


@dataclass(frozen=True)
class Comparison:
    """Two runs paired by user.

    Attributes:
        rows: Paired metrics, overall and per segment.
        curve: (depth, 3): Recall@k difference (this - other) for k = 1..depth with its interval.
        wins: Users whose target this run ranks higher (a miss counts as lowest), ``losses`` lower, ``ties`` same.
        shared: Users in both runs; ``only_this``/``only_other``: users in one run only (left out).
        depth: Ranks compared up to this depth (the smaller of the two).
    """

    rows: list[Paired]
    curve: np.ndarray
    wins: int
    losses: int
    ties: int
    shared: int
    only_this: int
    only_other: int
    depth: int


def _aligned(this: UserRanks, other: UserRanks) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the shared users in both runs (ordered as in ``this``)."""
    position = {user: i for i, user in enumerate(other.users)}
    mine = [i for i, user in enumerate(this.users) if user in position]
    if not mine:
        raise InputError("the two runs share no user: compare runs of the same split and users")
    theirs = [position[this.users[i]] for i in mine]
    for i, j in zip(mine, theirs, strict=True):
        if this.targets[i] != other.targets[j]:
            raise InputError(f"user {this.users[i]}: target {this.targets[i]} in this run but {other.targets[j]} "
                             "in the other; compare runs of the same split")
    return np.asarray(mine), np.asarray(theirs)


def _hits(ranks: np.ndarray, depth: int) -> np.ndarray:
    """(users, depth): 1 where the user's target is within the first k, for k = 1..depth."""
    ks = np.arange(1, depth + 1)
    return ((ranks[:, None] > 0) & (ranks[:, None] <= ks)).astype(np.float64)


def compare_runs(this: Run, other: Run, num_resamples: int = NUM_RESAMPLES, seed: int = 0) -> Comparison:
    """Pair two runs by user: per-metric differences (this - other) with bootstrap intervals, overall and per
    segment (segments from this run's interactions and ``power_min``).

    Raises:
        InputError: If the runs share no user, or disagree on a shared user's target.
    """
    mine, theirs = _aligned(this.per_user, other.per_user)
    depth = min(this.per_user.depth, other.per_user.depth)
    a = np.where(this.per_user.ranks[mine] <= depth, this.per_user.ranks[mine], 0)
    b = np.where(other.per_user.ranks[theirs] <= depth, other.per_user.ranks[theirs], 0)
    names = [m for m in PAIRED_METRICS if m == "mrr" or int(m.partition("@")[2]) <= depth]
    diffs = np.stack([metric_values(a, m) - metric_values(b, m) for m in names], axis=1)
    means_a = np.stack([metric_values(a, m) for m in names], axis=1)
    segment = segments_of(this.per_user, this.power_min)[mine]
    rows = []
    for name, mask in [("all", np.ones(len(a), dtype=bool))] + [(s, segment == s) for s in SEGMENTS[1:]]:
        if not mask.any():
            continue
        mean, low, high = bootstrap_mean(diffs[mask], num_resamples, seed=seed)
        for j, metric in enumerate(names):
            this_mean = float(means_a[mask, j].mean())
            rows.append(Paired(metric, name, int(mask.sum()), this_mean, this_mean - float(mean[j]), float(mean[j]),
                               float(low[j]), float(high[j])))
    curve = np.stack(bootstrap_mean(_hits(a, depth) - _hits(b, depth), num_resamples, seed=seed), axis=1)
    key_a, key_b = np.where(a > 0, a, depth + 1), np.where(b > 0, b, depth + 1)  # a miss ranks below everything
    return Comparison(rows, curve, int((key_a < key_b).sum()), int((key_a > key_b).sum()), int((key_a == key_b).sum()),
                      len(mine), len(this.per_user.users) - len(mine), len(other.per_user.users) - len(mine), depth)

"""Why an item was recommended: its score split into named parts, and the history items and titles behind them.

Fusion scores are one weighted sum over :data:`gloss.edge.fusion.FEATURES`, so an item's explanation is that
sum written out, part by part (``weight * feature``); the parts add up to the item's score. Each part names
its source where it has one:

* ``query`` / ``beam``: the generated title closest to the item;
* ``text``: the recent history item whose (recency-weighted) similarity contributes most;
* ``copurchase``: the recent history item whose (recency-weighted) co-purchase row contributes most;
* ``coldstart``: the generated title or last history item the cold item matches (see the fusion module);
* ``popularity``: no source (how often other users bought the item).

Under the paper's rule (no fusion) the score is the similarity to one query, so the explanation has one
part, ``query``, and names that query (a generated title, or the last item's title in last-item mode).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from gloss.edge.catalog import Catalog
from gloss.edge.prompt import parse_generated
from gloss.edge.types import ScoredItem

if TYPE_CHECKING:
    from gloss.edge.fusion import FusionRanker

logger = logging.getLogger(__name__)

SHOWN_CHARS = 48  # a source title is cut to this length in the one-line form
HISTORY_SOURCES = ("text", "copurchase")
QUERY_SOURCES = ("query", "beam")


@dataclass(frozen=True)
class Explanation:
    """The named parts of one item's score and where they come from.

    Attributes:
        parts: Part name -> its share of the score; the values add up to the score.
        sources: Part name -> the generated title or history item title behind it (parts without one absent).
        source_ids: Part name -> the history item id behind it (history-item sources only).
    """

    parts: dict[str, float]
    sources: dict[str, str] = field(default_factory=dict)
    source_ids: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> float:
        """Sum of the parts (the item's score)."""
        return float(sum(self.parts.values()))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"parts": {...}, "sources": {...}, "source_ids": {...}}``."""
        return {"parts": dict(self.parts), "sources": dict(self.sources), "source_ids": dict(self.source_ids)}

    def describe(self) -> str:
        """One readable line: the non-zero parts, largest first, each with its source."""
        shown = []
        for name, value in sorted(self.parts.items(), key=lambda kv: -abs(kv[1])):
            if value == 0:
                continue
            source = self.sources.get(name)
            label = _SOURCE_LABELS.get(name, "from")
            shown.append(f"{name} {value:.3f}" + (f" ({label} {_cut(source)!r})" if source else ""))
        return " + ".join(shown) if shown else "no signal"


_SOURCE_LABELS = {"query": "~", "beam": "~", "text": "like", "copurchase": "after", "coldstart": "new, ~"}


def _cut(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def explain_paper(
    ranked: Sequence[ScoredItem], positions: np.ndarray, similarities: np.ndarray, queries: Sequence[str]
) -> list[Explanation]:
    """Explanations under the paper's rule: each item's score is its similarity to one query.

    Args:
        ranked: The returned items.
        positions: (num_queries, depth) neighbour positions the ranking was made from.
        similarities: Matching similarities.
        queries: The query texts, one per row.
    """
    out = []
    for item in ranked:
        rows, cols = np.nonzero(positions == item.position)
        source = None
        if len(rows):
            best = int(np.argmin(np.abs(similarities[rows, cols].astype(np.float64) - item.score)))
            source = parse_generated(queries[int(rows[best])])
        out.append(Explanation({"query": float(item.score)}, {"query": source} if source else {}))
    return out


def _recent(ranker: FusionRanker, history: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The ranker's recent items (most recent first) and normalised recency weights."""
    cfg = ranker.config
    recent = np.asarray(list(history)[::-1][: cfg.history_len], dtype=np.int64)
    weights = cfg.history_decay ** np.arange(len(recent), dtype=np.float64)
    return recent, weights / weights.sum()


def explain_fusion(
    ranker: FusionRanker,
    history: Sequence[int],
    signals: Any,
    queries: Sequence[str],
    ranked: Sequence[ScoredItem],
    catalog: Catalog,
) -> list[Explanation]:
    """Explanations of fusion-ranked items: the weighted feature parts and their sources.

    Args:
        ranker: The ranker that produced ``ranked``.
        history: Catalogue positions of the history, oldest first.
        signals: The LLM signals (or query vectors, or None) given to the ranker.
        queries: Query texts in the order of the signals' vectors.
        ranked: The returned items.
        catalog: For the history items' titles and ids.
    """
    from gloss.edge.fusion import as_signals

    candidates = ranker.candidates_batch([list(history)], [signals])[0]
    parts = ranker.feature_parts(candidates)
    row_of = {int(p): i for i, p in enumerate(candidates.positions.tolist())}
    recent, weights = _recent(ranker, history)
    signals = as_signals(signals)
    query_vectors = None if signals is None or not len(signals.vectors) else signals.vectors.astype(np.float64)
    out = []
    for item in ranked:
        row = row_of.get(int(item.position))
        if row is None:  # not a candidate of this ranker: nothing to split (cannot happen for its own ranking)
            out.append(Explanation({"unexplained": float(item.score)}))
            continue
        values = {name: float(column[row]) for name, column in parts.items()}
        sources, ids = _fusion_sources(ranker, item.position, recent, weights, query_vectors, queries, catalog)
        out.append(Explanation(values, {k: v for k, v in sources.items() if values.get(k)},
                               {k: v for k, v in ids.items() if values.get(k)}))
    return out


def _fusion_sources(
    ranker: FusionRanker, position: int, recent: np.ndarray, weights: np.ndarray, query_vectors: np.ndarray | None,
    queries: Sequence[str], catalog: Catalog,
) -> tuple[dict[str, str], dict[str, str]]:
    """The generated title and history items behind one candidate's parts."""
    vector = ranker.vectors[position].astype(np.float64)
    sources: dict[str, str] = {}
    ids: dict[str, str] = {}
    query_sim = -np.inf
    if query_vectors is not None and len(queries) == len(query_vectors):
        sims = query_vectors @ vector
        best = int(np.argmax(sims))
        query_sim = float(sims[best])
        for name in QUERY_SOURCES:
            sources[name] = parse_generated(queries[best])
    text = weights * (ranker.vectors[recent].astype(np.float64) @ vector)
    copurchase = np.zeros(len(recent))
    for j, item in enumerate(recent.tolist()):
        successors, probs = ranker.copurchase.row(item, ranker.config.num_successors)
        hit = np.flatnonzero(successors == position)
        copurchase[j] = weights[j] * probs[hit[0]] if len(hit) else 0.0
    for name, contribution in (("text", text), ("copurchase", copurchase)):
        j = int(np.argmax(contribution))
        if contribution[j] > 0:
            ids[name] = catalog.asins[int(recent[j])]
            sources[name] = catalog.titles[int(recent[j])]
    last_sim = float(ranker.vectors[recent[0]].astype(np.float64) @ vector)
    if query_sim >= last_sim:
        sources["coldstart"] = sources["query"]
    else:
        ids["coldstart"] = catalog.asins[int(recent[0])]
        sources["coldstart"] = catalog.titles[int(recent[0])]
    return sources, ids

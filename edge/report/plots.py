"""The report's plots as SVG text (matplotlib's object API: no pyplot, no global state, no display needed)."""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from gloss.edge.errors import require
from gloss.edge.report.runs import Comparison, Run, rank_counts, recall_curve, segment_summary

logger = logging.getLogger(__name__)

COLORS = ("#2f5d8a", "#e07b39")  # this run, the other run
SEGMENT_NAMES = ("all", "cold", "regular", "power")
RANK_BINS = (1, 2, 3, 4, 5, 6, 11, 21, 31, 41, 51)  # rank histogram: 1..5 one by one, then tens


def _figure(width: float = 6.4, height: float = 3.6) -> Any:
    require("matplotlib", "plot")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _svg(figure: Any) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None})  # no date: the same run gives the same file
    return buffer.getvalue()


def _style(axes: Any) -> None:
    axes.spines[["top", "right"]].set_visible(False)
    axes.grid(axis="y", color="#dddddd", linewidth=0.7)
    axes.set_axisbelow(True)


def recall_curve_svg(runs: Sequence[Run]) -> str:
    """Recall@k for k = 1..depth, one line per run, the values at k = 5, 10, 50 marked."""
    figure = _figure()
    axes = figure.add_subplot()
    for run, color in zip(runs, COLORS, strict=False):
        curve = recall_curve(run.per_user.ranks, run.per_user.depth)
        ks = np.arange(1, len(curve) + 1)
        axes.plot(ks, curve, color=color, linewidth=2, label=run.label)
        for k in (5, 10, 50):
            if k <= len(curve):
                axes.plot(k, curve[k - 1], "o", color=color, markersize=4)
                axes.annotate(f"{curve[k - 1]:.3f}", (k, curve[k - 1]), textcoords="offset points", xytext=(3, -11),
                              fontsize=8, color=color)
    axes.set_xlabel("k (items recommended)")
    axes.set_ylabel("Recall@k")
    axes.set_xlim(0, max(r.per_user.depth for r in runs) + 1)
    axes.set_ylim(bottom=0)
    axes.legend(frameon=False, loc="lower right")
    _style(axes)
    return _svg(figure)


def segments_svg(runs: Sequence[Run]) -> str:
    """Recall@10 and NDCG@10 per user segment (the paper's cold / regular / power users), bars per run."""
    figure = _figure()
    summaries = [segment_summary(run.per_user, run.power_min, ks=(10,)) for run in runs]
    width = 0.8 / len(runs)
    for column, metric in enumerate(("recall@10", "ndcg@10")):
        axes = figure.add_subplot(1, 2, column + 1)
        x = np.arange(len(SEGMENT_NAMES))
        for i, (run, summary, color) in enumerate(zip(runs, summaries, COLORS, strict=False)):
            values = [summary[s].get(metric, 0.0) for s in SEGMENT_NAMES]
            bars = axes.bar(x + (i - (len(runs) - 1) / 2) * width, values, width, color=color, label=run.label)
            axes.bar_label(bars, fmt="%.3f", fontsize=6.5, padding=1)
        users = summaries[0]
        axes.set_xticks(x, [f"{s}\n({int(users[s]['users']):,})" for s in SEGMENT_NAMES], fontsize=8)
        axes.set_title(metric.replace("recall", "Recall").replace("ndcg", "NDCG"), fontsize=10)
        axes.margins(y=0.12)
        _style(axes)
    handles, labels = figure.axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside upper center", ncols=len(runs), frameon=False, fontsize=8)
    figure.supxlabel("user segment (users)", fontsize=8)
    return _svg(figure)


def rank_distribution_svg(runs: Sequence[Run]) -> str:
    """Share of users by the rank of their target (1..5 one by one, then in tens); the share whose target is not
    ranked at all is in the legend (it would dwarf the bars)."""
    figure = _figure()
    axes = figure.add_subplot()
    depth = min(run.per_user.depth for run in runs)
    edges = [b for b in RANK_BINS if b <= depth] + [depth + 1]
    labels = [str(lo) if hi - lo == 1 else f"{lo}-{hi - 1}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    width = 0.8 / len(runs)
    x = np.arange(len(labels))
    for i, (run, color) in enumerate(zip(runs, COLORS, strict=False)):
        counts, missing = rank_counts(run.per_user.ranks, depth)
        users = max(len(run.per_user.ranks), 1)
        shares = [100 * counts[lo - 1 : hi - 1].sum() / users for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
        label = f"{run.label}: {100 * missing / users:.1f}% not in the top {depth}"
        bars = axes.bar(x + (i - (len(runs) - 1) / 2) * width, shares, width, color=color, label=label)
        axes.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    axes.set_xticks(x, labels, fontsize=8)
    axes.set_xlabel("rank of the target item")
    axes.set_ylabel("% of users")
    axes.legend(frameon=False, fontsize=8)
    axes.margins(y=0.25)
    _style(axes)
    return _svg(figure)


def difference_curve_svg(comparison: Comparison, this: str, other: str) -> str:
    """Recall@k difference (this - other) for k = 1..depth with its bootstrap 95% band; 0 = no difference."""
    figure = _figure()
    axes = figure.add_subplot()
    ks = np.arange(1, comparison.depth + 1)
    mean, low, high = comparison.curve[:, 0], comparison.curve[:, 1], comparison.curve[:, 2]
    axes.fill_between(ks, low, high, color=COLORS[0], alpha=0.2, linewidth=0, label="95% bootstrap interval")
    axes.plot(ks, mean, color=COLORS[0], linewidth=2, label="difference")
    axes.axhline(0, color="#555555", linewidth=0.8)
    axes.set_xlabel("k (items recommended)")
    axes.set_ylabel("Recall@k difference")
    axes.set_title(f"{this}  minus  {other}", fontsize=9)
    axes.legend(frameon=False, fontsize=8)
    _style(axes)
    return _svg(figure)

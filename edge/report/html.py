"""``gloss-edge eval --report FILE``: one self-contained HTML file (plots embedded as SVG images, styles inline,
no script), every value escaped."""

from __future__ import annotations

import base64
import datetime as dt
import logging
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from gloss.edge.files import write_text_atomic
from gloss.edge.metrics import COLD_START_MAX, MRR_K
from gloss.edge.report import plots
from gloss.edge.report.runs import SEGMENTS, Comparison, Run, compare_runs, run_from_dict, segment_summary

logger = logging.getLogger(__name__)

TABLE_METRICS = ("recall@1", "recall@5", "recall@10", "recall@20", "recall@50", "ndcg@5", "ndcg@10", "mrr")
STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1d2733;
       margin: 0 auto; max-width: 1180px; padding: 1.2rem 1.5rem 3rem; background: #fff; }
h1 { font-size: 1.5rem; margin: 0 0 0.2rem; } h2 { font-size: 1.15rem; margin: 1.8rem 0 0.6rem;
  border-bottom: 2px solid #2f5d8a; padding-bottom: 0.2rem; }
h3 { font-size: 1rem; margin: 0.8rem 0 0.4rem; }
.muted { color: #5d6b7a; } .small { font-size: 0.85rem; }
.runs { display: flex; flex-wrap: wrap; gap: 1.2rem; } .runs > div { flex: 1 1 460px; min-width: 0; }
.swatch { display: inline-block; width: 0.8rem; height: 0.8rem; border-radius: 2px; margin-right: 0.35rem; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; font-size: 0.88rem; }
th, td { padding: 0.25rem 0.55rem; text-align: right; border-bottom: 1px solid #e3e8ed; }
th:first-child, td:first-child, .left { text-align: left; }
.ci { display: block; font-size: 0.78rem; color: #5d6b7a; font-weight: normal; }
thead th { border-bottom: 2px solid #c9d3dd; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 0.15rem 1rem; margin: 0.4rem 0; font-size: 0.88rem; }
dt { color: #5d6b7a; } dd { margin: 0; overflow-wrap: anywhere; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(460px, 1fr)); gap: 1rem; }
figure { margin: 0; }
figure img { width: 100%; height: auto; border: 1px solid #e3e8ed; border-radius: 6px; }
figcaption { font-size: 0.85rem; color: #5d6b7a; margin-top: 0.2rem; }
td.up { color: #2d6a25; font-weight: 600; } td.down { color: #9b2c2c; font-weight: 600; }
"""


def _number(value: float) -> str:
    return f"{value:.4f}"


def _signed(value: float) -> str:
    return f"{value:+.4f}"


def rule_facts(run: Run) -> list[tuple[str, str]]:
    """The rule and conventions a run was scored under, in words (what the metrics mean depends on them)."""
    config = run.config
    facts = [("query source", run.source)]
    if config.get("rule") == "fusion":
        fusion = config.get("fusion") or {}
        weights = {k.removesuffix("_weight"): v for k, v in fusion.items() if k.endswith("_weight")}
        facts.append(("ranking rule", "fusion re-ranking: " + ", ".join(f"{k} {v:g}" for k, v in weights.items())))
    else:
        ties = "raw similarity" if config.get("ties", "raw") == "raw" else "ties within 1e-5 kept in beam order"
        facts.append(("ranking rule", f"the paper's: items by similarity to the queries ({ties}), "
                                      f"{config.get('per_query', 1)} item(s) per query"))
    kept = "removed" if config.get("exclude_seen") else "kept (the paper's convention)"
    facts += [("items already in the history", kept),
              ("ranked per user", f"{run.per_user.depth} items; {len(run.per_user.users):,} users in "
                                  f"{run.seconds:.1f} s")]
    return facts


def _label(metric: str) -> str:
    return "MRR" if metric == "mrr" else metric.replace("recall", "R").replace("ndcg", "N")


def _metrics_table(runs: Sequence[Run]) -> str:
    """One table, both runs' rows under each segment (the runs side by side, row by row)."""
    summaries = [segment_summary(run.per_user, run.power_min) for run in runs]
    power = "/".join(sorted({str(run.power_min) for run in runs}))
    what = "the data set's power_min" if len(runs) == 1 or runs[0].power_min == runs[1].power_min else "per run"
    names = [m for m in TABLE_METRICS if all(m in summary["all"] for summary in summaries)]
    head = "".join(f"<th>{escape(_label(m))}</th>" for m in names)
    rows = []
    for segment in SEGMENTS:
        for run, summary, color in zip(runs, summaries, plots.COLORS, strict=False):
            values = summary[segment]
            cells = "".join(f"<td>{_number(values[m])}</td>" for m in names)
            rows.append(f'<tr><td>{segment}</td><td class="left"><span class="swatch" style="background:{color}">'
                        f"</span>{escape(run.label)}</td><td>{int(values['users']):,}</td>{cells}</tr>")
    return (f'<table><thead><tr><th>segment</th><th class="left">run</th><th>users</th>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>"
            f'<p class="muted small">R@k = Recall@k, N@k = NDCG@k (one relevant item: the user\'s next item); MRR = '
            f"mean of 1/rank of the target within the top {MRR_K} (0 if absent). The paper's segments: cold = at most "
            f"{COLD_START_MAX} interactions, power = more than {power} ({escape(what)}), regular = between.</p>")


def _facts(facts: Sequence[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in facts) + "</dl>"


def _image(svg: str, alt: str, caption: str) -> str:
    data = base64.b64encode(svg.encode("utf-8")).decode("ascii")
    return (f'<figure><img src="data:image/svg+xml;base64,{data}" alt="{escape(alt)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def _comparison(comparison: Comparison, this: Run, other: Run) -> str:
    """The paired differences as a metrics x segments table, each cell the difference and its interval."""
    lines = [f"<p>Paired by user: {comparison.shared:,} users in both runs"
             + (f" ({comparison.only_this:,} only in this run and {comparison.only_other:,} only in the other are "
                "left out)" if comparison.only_this or comparison.only_other else "")
             + f". This run ranks the target higher for {comparison.wins:,} users, lower for {comparison.losses:,}, "
               f"the same for {comparison.ties:,} (a miss counts as the lowest rank).</p>"]
    segments = list(dict.fromkeys(row.segment for row in comparison.rows))
    metrics = list(dict.fromkeys(row.metric for row in comparison.rows))
    cell = {(row.metric, row.segment): row for row in comparison.rows}
    users = {row.segment: row.users for row in comparison.rows}
    head = "".join(f"<th>{escape(s)}<span class=\"ci\">{users[s]:,} users</span></th>" for s in segments)
    rows = []
    for metric in metrics:
        cells = []
        for segment in segments:
            row = cell[(metric, segment)]
            mark = "up" if row.low > 0 else "down" if row.high < 0 else ""
            cells.append(f'<td class="{mark}">{_signed(row.diff)}'
                         f'<span class="ci">[{_signed(row.low)}, {_signed(row.high)}]</span></td>')
        rows.append(f"<tr><td>{escape(_label(metric))}</td>{''.join(cells)}</tr>")
    lines.append(f"<table><thead><tr><th>metric</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
    lines.append(f'<p class="muted small">Each cell: {escape(this.label)} minus {escape(other.label)}, the mean '
                 "over the paired users, and below it the 95% interval: the 2.5th to 97.5th percentile of 2,000 "
                 "bootstrap resamples of the users (seed 0). Green or red: the interval excludes 0.</p>")
    return "".join(lines)


def render_report(this: Run, other: Run | None = None, title: str = "", command: str = "") -> str:
    """The report as HTML text.

    Args:
        this: The run just evaluated.
        other: A run to compare with (paired by user), or None.
        title: What was evaluated (e.g. the bundle folder), for the heading.
        command: The command line that made the report, shown at the top.

    Raises:
        MissingDependencyError: If matplotlib is not installed (``pip install 'gloss[plot]'``).
        InputError: If the runs cannot be paired (no shared user, different targets).
    """
    runs = [this] if other is None else [this, other]
    depth = max(run.per_user.depth for run in runs)
    comparison = compare_runs(this, other) if other is not None else None
    made = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"<h1>GLoSS evaluation report{': ' + escape(title) if title else ''}</h1>",
             f'<p class="muted small">made {made}' + (f" by <code>{escape(command)}</code>" if command else "")
             + "</p>",
             "<h2>Metrics and the rule in effect</h2>", '<div class="runs">']
    for run, color in zip(runs, plots.COLORS, strict=False):
        parts.append(f'<div><h3><span class="swatch" style="background:{color}"></span>{escape(run.label)}</h3>'
                     f"{_facts(rule_facts(run))}</div>")
    parts += ["</div>", _metrics_table(runs)]
    if comparison is not None and other is not None:
        parts += ["<h2>Paired comparison</h2>", _comparison(comparison, this, other)]
    parts += ["<h2>Plots</h2>", '<div class="plots">',
              _image(plots.recall_curve_svg(runs), "Recall@k curve", f"Recall@k for k = 1 to {depth}: the share "
                     "of users whose next item is among the first k."),
              _image(plots.segments_svg(runs), "Metrics per user segment", "Recall@10 and NDCG@10 for the paper's "
                     "user segments (cold-start and power users)."),
              _image(plots.rank_distribution_svg(runs), "Rank distribution of the target",
                     "Where the target item lands: % of users per rank of the target (ranks 1 to 5 one by one, then "
                     "6-10 and tens); the legend gives the share not ranked at all."),
              *([] if comparison is None or other is None else [_image(
                  plots.difference_curve_svg(comparison, this.label, other.label), "Recall@k difference",
                  "Recall@k of this run minus the other's, per k, with its 95% bootstrap interval.")]),
              "</div>"]
    body = "\n".join(parts)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>GLoSS evaluation report'
            f"{' - ' + escape(title) if title else ''}</title>\n<style>{STYLE}</style></head>\n<body>\n{body}\n"
            "</body></html>\n")


def write_report(path: Path, this: Run, other: Run | None = None, title: str = "", command: str = "") -> Path:
    """Render the report (:func:`render_report`) and write it atomically to ``path``."""
    write_text_atomic(Path(path), render_report(this, other, title, command))
    logger.info("wrote report %s", path)
    return Path(path)


def write_eval_report(path: Path, report: dict[str, Any], other: Run | None = None, title: str = "",
                      command: str = "") -> Path:
    """Write the report of an eval JSON that carries per-user ranks (``evaluate_with_ranks``), beside ``other``."""
    this = run_from_dict(report, f"this run ({report['source']}, {report['config'].get('rule')})", "this run")
    return write_report(path, this, other, title, command)

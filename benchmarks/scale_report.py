"""Results of benchmarks/scale.py: the JSON, the Markdown table with fitted exponents and issue 16's goals, and
the log-log plot of every cost against the catalogue size."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

ROW_KEYS = ("items", "build_s", "build_peak_rss_mb", "embed_titles_per_s", "index_s", "copurchase_s", "bundle_mb",
            "cold_recommend_s", "cold_recommend_rss_mb", "serve_p50_ms", "serve_p95_ms", "serve_rss_mb",
            "update_1k_s", "ann_recall_at_10")  # the keys, in its order: other tools read them
SERIES = {  # cost -> plot panel (unit)
    "build_s": "s", "index_s": "s", "copurchase_s": "s", "cold_recommend_s": "s", "update_1k_s": "s",
    "build_peak_rss_mb": "MiB", "bundle_mb": "MiB", "cold_recommend_rss_mb": "MiB", "serve_rss_mb": "MiB",
    "serve_p50_ms": "ms", "serve_p95_ms": "ms",
}
GOAL_N = 1_000_000
GOAL_MARKS = {"build_peak_rss_mb": 4 * 1024, "cold_recommend_s": 1.5, "cold_recommend_rss_mb": 1024,
              "serve_p50_ms": 15.0, "serve_rss_mb": 1.2 * 1024, "update_1k_s": 10.0}  # plotted at 1M as x
BIG_N = 10_000_000
NOT_HERE = ("Goals this benchmark does not measure (no generator in these bundles): the LLM path's cost at 1M "
            "(trie build and size: `trie.md`), quality at 12k-18k (`quality.md`), refusing a corrupt or truncated "
            "file (the tests).")
MEMORY_ONLY_MARKS = {"items": " (memory only)", "build_s": " (extrapolated)", "embed_titles_per_s": " (real rate)"}
MEMORY_ONLY_TEXT = (
    "Memory-only rows were built with a stand-in embedder (the real tokenizer and width, one table lookup instead "
    "of the transformer, `benchmarks/scale_stub.py`): their memory is measured; `build_s` is extrapolated (the "
    "measured build minus its stand-in embedding stage plus the titles at the real embedder's mean rate over the "
    "timed rows; the measured build time is in the details); their query-time figures (cold recommend, serve, "
    "update) are measured but embed each query with the stand-in, so they lack the real embedder's few ms per "
    "query; `ann_recall_at_10` is not measured for them (meaningless vectors). A row built with a cheaper graph "
    "(`graph_config` in its details, e.g. expansion_add 16: the graph's memory depends on its rows and connectivity, "
    "not on the search effort while adding) has its `index_s` and `build_s` extrapolated with the default graph's "
    "fitted index_s exponent. The fits and goals use timed rows only, except the 10M memory goal.")
BIG_GOAL_MARKS = {"build_peak_rss_mb": 24 * 1024}  # plotted at 10M as x
GIB = 1024  # MiB: every "MB" here is 2**20 bytes, so the 4 GB is 4096
UPDATE_FLAT_EXPONENT = 0.2  # "grows with the items added, not with N": update time ~ N^b with b at most this


def fit(rows: list[dict[str, Any]], key: str) -> tuple[float, float] | None:
    """``(exponent, log intercept)`` of ``key ~ c * N^exponent`` over the timed rows, None below 2 points."""
    points = [(r["items"], r[key]) for r in rows if not r.get("memory_only") and (r.get(key) or 0) > 0]
    if len({n for n, _ in points}) < 2:
        return None
    slope, intercept = np.polyfit(np.log([n for n, _ in points]), np.log([v for _, v in points]), 1)
    return float(slope), float(intercept)


def predict(fitted: tuple[float, float] | None, n: int) -> float | None:
    """The fitted power law at ``n``."""
    return None if fitted is None else math.exp(fitted[1]) * n ** fitted[0]


def _at(rows: list[dict[str, Any]], n: int, key: str, timed: bool = True) -> float | None:
    for row in rows:
        if row["items"] == n and row.get(key) is not None and not (timed and row.get("memory_only")):
            return float(row[key])
    return None


def _goal(name: str, value: float | None, limit: float, how: str, higher_is_better: bool = False) -> dict[str, Any]:
    if value is None:
        return {"goal": name, "value": None, "limit": limit, "status": "not measured", "how": how}
    met = value >= limit if higher_is_better else value <= limit
    status = ("met" if met else "not met") + (" (extrapolated)" if how.startswith("extrapolated") else "")
    return {"goal": name, "value": round(value, 3), "limit": limit, "status": status, "how": how}


def _value_at_goal(rows: list[dict[str, Any]], key: str) -> tuple[float | None, str]:
    measured = _at(rows, GOAL_N, key)
    if measured is not None:
        return measured, "measured at 1M"
    fitted = fit(rows, key)
    if fitted is None:
        return None, "no 1M row, too few sizes to fit"
    return predict(fitted, GOAL_N), f"extrapolated to 1M from the fit N^{fitted[0]:.2f} (no 1M row)"


def goals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 16's goals at 1M items, each met / not met / not measured, computed from the rows."""
    out = []
    build, how = _value_at_goal(rows, "build_s")
    rate = _at(rows, GOAL_N, "embed_titles_per_s") or _mean([r.get("embed_titles_per_s") for r in rows
                                                              if not r.get("memory_only")])
    ratio = build * rate / GOAL_N if build is not None and rate else None
    out.append(_goal("build time / embedding the titles alone <= 1.25", ratio, 1.25, how))
    for key, limit, name in (("build_peak_rss_mb", 4 * GIB, "build peak RSS <= 4 GB"),
                             ("cold_recommend_s", 1.5, "cold recommend <= 1.5 s"),
                             ("cold_recommend_rss_mb", GIB, "cold recommend RSS <= 1 GB"),
                             ("serve_p50_ms", 15.0, "serve p50 <= 15 ms"),
                             ("serve_rss_mb", 1.2 * GIB, "serve RSS <= 1.2 GB"),
                             ("update_1k_s", 10.0, "update +1,000 items <= 10 s")):
        value, how = _value_at_goal(rows, key)
        out.append(_goal(name, value, limit, how))
    big = _at(rows, BIG_N, "build_peak_rss_mb", timed=False)
    out.append(_goal("10M items build within 24 GB (measured)", big, 24 * GIB,
                     "measured at 10M" if big is not None else "no 10M row (memory must be measured)"))
    recalls = [r["ann_recall_at_10"] for r in rows
               if r.get("ann_recall_at_10") is not None and not r.get("memory_only")]  # a stand-in's vectors: no
    if recalls:
        out.append(_goal("approximate search Recall@10 >= 0.99 (worst size)", min(recalls), 0.99,
                         "measured at every size with approximate search", higher_is_better=True))
    else:
        out.append({"goal": "approximate search Recall@10 >= 0.99", "value": None, "limit": 0.99,
                    "status": "n/a: exact search at every measured size", "how": "manifest"})
    slope = fit(rows, "update_1k_s")
    out.append(_goal(f"update cost grows with the items added, not with N (exponent <= {UPDATE_FLAT_EXPONENT})",
                     None if slope is None else slope[0], UPDATE_FLAT_EXPONENT, "fitted over the timed sizes"))
    return out


# Follow-up measurements after the rows (result stems under benchmarks/results): each replaces a 1M figure in a copy
# of the rows, and the goals are computed again from that copy ("later" in the goals table).
LATER_SOURCES = ("scale_update_1m", "scale_query_1m", "scale_recall_1m_add256", "graph_build_200k")


def later_rows(rows: list[dict[str, Any]], results: Path) -> tuple[list[dict[str, Any]], list[str]] | None:
    """The rows with their 1M (and 200k recall) figures replaced by the follow-up result files that exist, for
    the current default graph; None when there are none. Returns the rows and what was replaced, from where."""
    from gloss.edge.hnsw import HnswConfig

    defaults = HnswConfig()
    default_add = defaults.expansion_add
    later = [dict(r) for r in rows]
    big = next((r for r in later if r["items"] == GOAL_N and not r.get("memory_only")), None)
    if big is None:
        return None
    done = []
    data = {name: json.loads(f.read_text()) for name in LATER_SOURCES if (f := results / f"{name}.json").is_file()}
    if "scale_update_1m" in data:
        big["update_1k_s"] = data["scale_update_1m"]["summary"]["this tree"]["update_1k_s"]
        done.append("update_1k_s at 1M: scale_update_1m (this tree)")
    query = data.get("scale_query_1m", {})
    for name, graph in query.get("graphs", {}).items():
        if graph and graph.get("expansion_add") == default_add:
            big.update({k: query["summary"][name][k] for k in ("cold_recommend_s", "cold_recommend_rss_mb",
                                                               "serve_p50_ms", "serve_rss_mb")})
            done.append(f"cold recommend and serve at 1M: scale_query_1m ({name})")
    recall = data.get("scale_recall_1m_add256", {})
    if recall.get("built_with", {}).get("expansion_add") == default_add:
        built = recall["built_with"]
        big["ann_recall_at_10"] = next(r["recall_at_10"] for r in recall["settings"]
                                       if (r["expansion_search"], r["candidates"]) == (built["expansion_search"],
                                                                                        built["candidates"]))
        done.append("Recall@10 at 1M: scale_recall_1m_add256 (the default search settings)")
    graph_build = data.get("graph_build_200k", {})
    ratios = {r["config"]["expansion_add"]: r for r in graph_build.get("results", [])
              if r["config"]["connectivity"] == defaults.connectivity}
    if default_add in ratios and big.get("index_s") and big.get("build_s"):
        old_add = min(ratios)
        factor = ratios[default_add]["build_s_median"] / ratios[old_add]["build_s_median"]
        big["build_s"] = big["build_s"] + big["index_s"] * (factor - 1)
        big["index_s"] = big["index_s"] * factor
        mid = next((r for r in later if r["items"] == graph_build["rows"] and r.get("ann_recall_at_10")), None)
        if mid is not None:
            mid["ann_recall_at_10"] = ratios[default_add]["recall_at_10"]
        done.append(f"build_s at 1M estimated: the index stage x {factor:.2f} (graph_build_200k, expansion_add "
                    f"{default_add} vs {old_add}); Recall@10 at {graph_build['rows']:,}: graph_build_200k")
    return (later, done) if done else None


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v]
    return sum(present) / len(present) if present else None


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown."""
    rows, details = report["sizes"], report["details"]
    lines = ["# Scale: synthetic catalogues of 12k-10M items (issue 16)", "",
             f"Command (each run that measured a row): `{report['command']}`  ", f"Machine: {report['machine']}  ",
             "Default bundle without the LLM (`gloss-export bundle --catalog --sequences --out-dir`), the CLI's own "
             "processes; MB = MiB; peak RSS of the process tree polled every 50 ms (and the kernel's VmHWM); cold "
             "runs with a warm page cache (dropping it needs root); serve latency from one loopback client, one "
             "request at a time, after the server's warm-up. The machine is shared: see load averages below.", "",
             "| " + " | ".join(ROW_KEYS) + " |", "|" + "---|" * len(ROW_KEYS)]
    for row in rows:
        marks = MEMORY_ONLY_MARKS if details[str(row["items"])].get("memory_only") else {}
        lines.append("| " + " | ".join(_cell(row[k]) + marks.get(k, "") for k in ROW_KEYS) + " |")
    if any(d.get("memory_only") for d in details.values()):
        lines += ["", MEMORY_ONLY_TEXT]
        lines += [f"- {n:,} items: build measured with the stand-in {_cell(d.get('build_s_measured_with_stub'))} s, "
                  f"of which its embedding stage {_cell(d.get('build_stages_s', {}).get('embed_s'))} s (stand-in "
                  f"{_cell(d.get('stub_embed_titles_per_s'))} titles/s alone), index "
                  f"{_cell(d.get('build_stages_s', {}).get('index_s'))} s, co-purchase "
                  f"{_cell(d.get('build_stages_s', {}).get('copurchase_s'))} s"
                  + (f"; graph built with `{json.dumps(d['graph_config'])}`" if d.get("graph_config") else "")
                  for n, d in ((int(n), d) for n, d in details.items()) if d.get("memory_only")]
    if report.get("note"):
        lines += ["", f"Note: {report['note']}"]
    base = report.get("baseline")
    lines += ["", "## Goals of issue 16 (at 1M items unless said otherwise)", ""]
    lines += _goal_lines(report["goals"], base, report.get("later"))
    lines += ["", NOT_HERE]
    lines += ["", "## Fitted exponents (cost ~ N^b, least squares on log-log over the timed sizes)", ""]
    if base:
        lines += [f"| cost | b now | b before ({base['name']}) |", "|---|---|---|"]
        lines += [f"| {key} | {value:.2f} | {_cell(base['exponents'].get(key))} |"
                  for key, value in report["exponents"].items()]
    else:
        lines += ["| cost | b |", "|---|---|"]
        lines += [f"| {key} | {value:.2f} |" for key, value in report["exponents"].items()]
    if base:
        lines += ["", *_side_by_side(rows, details, base)]
    lines += ["", "## Details per size", "",
              "| items | users | interactions/item | build stages (s) | build CPU s | embed in build (titles/s) | "
              "build / embed alone | update CPU s | update peak RSS | serve p50 new conn. / app (ms) | "
              "serve peak RSS | index | load avg | code | measured |", "|" + "---|" * 15]
    for row in rows:
        d = details[str(row["items"])]
        synth = d.get("synthetic", {}).get("stats", {})
        stages = ", ".join(f"{k[:-2]} {_cell(v)}" for k, v in d.get("build_stages_s", {}).items())
        lines.append(f"| {row['items']:,} | {_cell(synth.get('users'))} | {_cell(synth.get('interactions_per_item'))}"
                     f" | {stages} | {_cell(d.get('build_cpu_s'))} | {_cell(d.get('embed_in_build_titles_per_s'))} | "
                     f"{_cell(d.get('build_over_embed_alone'))} | {_cell(d.get('update_cpu_s'))} | "
                     f"{_cell(d.get('update_peak_rss_mb'))} | {_cell(d.get('serve_fresh_conn_p50_ms'))} / "
                     f"{_cell(d.get('serve_app_p50_ms'))} | "
                     f"{_cell(d.get('serve_peak_rss_mb'))} | {d.get('index_search')} | {d.get('load_avg_at_build')} "
                     f"| {d.get('code')} | {d.get('measured_at')} |")
    lines += ["", "Stage times come from the build's stderr (stamped on arrival): embed = after the embedder export "
              "until the index bar starts (tokenising included), index = until the index is saved, copurchase = "
              "from there to the end of the build (reading sequences, counting, saving, the manifest's checksums). "
              "`embed_titles_per_s` is the bundle's embedder alone on 10,000 titles in a separate process; "
              "`build / embed alone` = build_s / (items / embed_titles_per_s). `serve_p50_ms` is measured on one "
              "kept-alive connection (as browsers and benchmarks/load.py do); the details add a new connection per "
              "request and the app's own time (its Server-Timing header): where the kept-alive latency is ~40 ms "
              "above the others, the server wrote headers and body as two TCP segments and the second waited for "
              "the client's delayed ACK (Nagle).", ""]
    return "\n".join(lines)


def _goal_lines(now: list[dict[str, Any]], base: dict[str, Any] | None, later: dict[str, Any] | None = None
                ) -> list[str]:
    before = base["goals"] if base else []
    head = ["goal", "rows", "status (rows)", "how (rows)"]
    if later:
        head += ["later", "status later"]
    if base:
        head += [f"before ({base['name']})", "status before"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for number, goal in enumerate(now):  # goals() lists the same goals in the same order for every row set
        cells = [goal["goal"], _cell(goal["value"]), goal["status"], goal["how"]]
        if later:
            newer = later["goals"][number]
            changed = newer["value"] != goal["value"]
            cells += [_cell(newer["value"]) if changed else "same", newer["status"] if changed else ""]
        if base:
            old = before[number] if number < len(before) else {"value": None, "status": "-"}
            cells += [_cell(old["value"]), old["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    if later:
        lines += ["", "Later: the goals computed again with follow-up measurements in place of the rows' (1M unless "
                  "said): " + "; ".join(later["replaced"]) + "."]
    return lines


def _side_by_side(rows: list[dict[str, Any]], details: dict[str, Any], base: dict[str, Any]) -> list[str]:
    """Every cost of the sizes measured now beside the baseline's (where it has the size)."""
    before = {row["items"]: row for row in base["sizes"]}
    columns = []
    for row in rows:
        label = f"{row['items']:,}" + (" (memory only)" if details[str(row["items"])].get("memory_only") else "")
        if row["items"] in before:
            columns += [(f"{label} before", before[row["items"]]), (f"{label} now", row)]
        else:
            columns.append((f"{label} now", row))
    lines = [f"## Before ({base['name']}: {base['code']}) and now, side by side", "",
             "| cost | " + " | ".join(name for name, _ in columns) + " |", "|---|" + "---|" * len(columns)]
    lines += [f"| {key} | " + " | ".join(_cell(row.get(key)) for _, row in columns) + " |" for key in ROW_KEYS[1:]]
    return lines


def load_baseline(path: Path) -> dict[str, Any] | None:
    """A committed result set (e.g. ``scale_before.json``) to set beside this one: its rows, exponents and its
    goals computed again by :func:`goals` (so both sides use the same definitions); None if it is missing."""
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    rows = [{**size, **report["details"][str(size["items"])]} for size in report["sizes"]]
    codes = sorted({row.get("code", "?") for row in rows})
    return {"name": path.stem, "sizes": report["sizes"], "exponents": report["exponents"], "goals": goals(rows),
            "code": ", ".join(codes)}


def plot(path: Path, rows: list[dict[str, Any]], exponents: dict[str, float]) -> None:
    """Log-log panels (seconds, MiB, ms) of every cost against N, the fitted exponent in each label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    units = ("s", "MiB", "ms")
    fig, axes = plt.subplots(1, len(units), figsize=(16, 5))
    for ax, unit in zip(axes, units, strict=True):
        for key, series_unit in SERIES.items():
            if series_unit != unit:
                continue
            points = [(r["items"], r[key], bool(r.get("memory_only"))) for r in rows if (r.get(key) or 0) > 0]
            if not points:
                continue
            label = key + (f"  (N^{exponents[key]:.2f})" if key in exponents else "")
            timed = [(n, v) for n, v, memory_only in points if not memory_only]
            line = ax.plot([n for n, _ in timed], [v for _, v in timed], marker="o", label=label)[0] if timed else None
            for goal_n, marks in ((GOAL_N, GOAL_MARKS), (BIG_N, BIG_GOAL_MARKS)):
                if key in marks:
                    ax.plot([goal_n], [marks[key]], marker="x", markersize=10, linestyle="none",
                            color=line.get_color() if line else None)
            extra = [(n, v) for n, v, memory_only in points if memory_only]
            if extra:
                ax.plot([n for n, _ in extra], [v for _, v in extra], marker="s", linestyle="none", fillstyle="none",
                        color=line.get_color() if line else None)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("catalogue items (N)")
        ax.set_ylabel(unit)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("GLoSS scale benchmark: cost vs catalogue size "
                 "(hollow squares: memory-only rows; x: the issue's goals at 1M and 10M)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _later(rows: list[dict[str, Any]], results: Path) -> dict[str, Any] | None:
    found = later_rows(rows, results)
    return None if found is None else {"goals": goals(found[0]), "replaced": found[1]}


def write_report(stem: Path, rows: list[dict[str, Any]], command: str, machine: str, plot_png: bool = True,
                 note: str | None = None, baseline: dict[str, Any] | None = None) -> dict:
    """Write ``stem``.json and .md (and .png) from the per-size rows; return the report. ``baseline``
    (:func:`load_baseline`) is set beside the rows in the Markdown and kept in the JSON."""
    exponents = {key: round(f[0], 3) for key in SERIES if (f := fit(rows, key)) is not None}
    report = {
        "command": command, "machine": machine, "note": note, "baseline": baseline,
        "sizes": [{key: row.get(key) for key in ROW_KEYS} for row in rows],
        "exponents": exponents, "goals": goals(rows), "later": _later(rows, stem.parent),
        "details": {str(row["items"]): {k: v for k, v in row.items() if k not in ROW_KEYS} for row in rows},
    }  # fmt: skip
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    if plot_png:
        plot(stem.with_suffix(".png"), rows, exponents)
    return report

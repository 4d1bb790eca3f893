"""Scale benchmark (issue 16): build, cold recommend, serve and update of synthetic catalogues of 12k-10M items.

Per size N (one size per invocation is the intended use; sizes already measured under ``--out-name`` are
skipped unless ``--force``):

1. ``benchmarks/synth_catalog.py`` writes a seeded synthetic catalogue of N items, ~16 interactions per item and
   1,000 new items (cached under ``benchmarks/.work/scale/data/``; its time and peak RSS are recorded).
2. ``gloss-export bundle --catalog ... --sequences ... --out-dir ...``: the default bundle without a generator
   (the CLI's own embedder export included), wall time and peak RSS of its process tree polled every 50 ms.
   Stage times come from its stderr, stamped on arrival (``STAGE_MARKS``); a stage the log does not show is
   timed through the library instead (``benchmarks/scale_stages.py``). ``embed_titles_per_s`` is always the
   bundle's embedder alone on 10,000 titles (the floor a build is compared with).
3. Cold ``gloss-edge recommend`` (default settings, one real-looking history, k=10): median wall time and peak
   RSS of 3 fresh processes. The page cache stays warm (dropping it needs root and would hit other jobs).
4. ``gloss-edge serve`` (default settings): one loopback client posts ``--serve-requests`` histories one after
   another; p50/p95 client latency and the server's RSS after the run.
5. ``ann_recall_at_10`` when the manifest says the index is searched approximately, else null.
6. ``gloss-export update BUNDLE --add`` the 1,000 new items (last: it changes the bundle).

``--embed-stub`` builds with a stand-in embedder (the real tokenizer and width, one embedding lookup instead of
the transformer): a memory-only row for 10M, its build time extrapolated with the real embedder's rate.

Usage (heavy: wrap in the shared lock):
    flock /tmp/gloss-heavy.lock python benchmarks/scale.py --sizes 12k [--out-name scale]
    python benchmarks/scale.py --report-only [--out-name scale]
Writes benchmarks/results/<out-name>.json, .md and (unless --no-plot) .png from every row measured so far.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from scale_measure import check, cold_recommend, dir_mb, load_avg, run_measured, serve_latency, tool
from scale_report import fit, load_baseline, write_report

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / ".work" / "scale"
RESULTS = ROOT / "benchmarks" / "results"
HERE = Path(__file__).resolve().parent
EMBED_SAMPLE = 10_000
# Stage boundaries in the build's stderr: (stage, regexes of the piece where it starts, the first one that occurs
# wins). A stage lasts until the next stage's start; "done" ends the last one. Embedding starts after the embedder
# export (after the catalogue load with --embedder-dir) and includes tokenising; the index stage includes saving
# the index; co-purchase runs from there to the end (counting, saving, the manifest's checksums), plus reading the
# sequences where a build reads them before embedding (from the catalogue line to the sequences line).
STAGE_MARKS = (
    ("embed", (r"exported embedder", r"gloss\.edge\.catalog: catalogue ")),
    ("index", (r"^index:", r"embedded \d+ titles in ")),
    ("copurchase", (r"saved index", r"gloss\.edge\.(?:splits|sequences): sequences ")),
    ("done", (r"gloss\.export\.bundle: bundle ",)),
)
# Figures a build logs itself take precedence over the marks: (stage, regex with the seconds as group 1).
STAGE_FIGURES = (
    ("embed", r"embedded \d+ titles in ([\d.]+) s"),
    ("index", r"saved index .*\(([\d.]+) s after embedding\)"),
)
SEQUENCES_READ = (r"gloss\.edge\.catalog: catalogue ", r"gloss\.edge\.(?:splits|sequences): sequences ")
AUTOGROUP = Path("/proc/self/autogroup")
APPROXIMATE = re.compile(r"hnsw|approx|ann\b", re.IGNORECASE)
logger = logging.getLogger("benchmarks.scale")


def parse_size(text: str) -> int:
    """``12k`` -> 12000, ``1M`` -> 1000000, ``50000`` -> 50000."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmM]?)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 12k, 200k, 1M)")
    return round(float(match.group(1)) * {"": 1, "k": 10**3, "m": 10**6}[match.group(2).lower()])


def machine() -> str:
    """The machine, as every result file records it."""
    from load import cpu_model  # benchmarks/load.py (this script's folder is on sys.path); imports gloss

    mem = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
    ram = f"{int(mem.group(1)) / 2**20:.1f} GiB RAM" if mem else "RAM unknown"
    return (f"VM {platform.machine()}, {os.cpu_count()} cores ({cpu_model()}), {ram}, "
            f"Python {platform.python_version()}")


def code_state() -> str:
    """The gloss code the CLIs run: HEAD's short hash (``+dirty`` when edge/ or export/ differ from it), or the
    commit of a source snapshot on PYTHONPATH (``--code-commit``)."""
    import gloss.edge

    root = Path(gloss.edge.__file__).resolve().parents[1]
    if (root / "COMMIT").is_file():
        return (root / "COMMIT").read_text().strip() + " (snapshot)"
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "edge", "export"],
                           cwd=root, capture_output=True, text=True)
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _first(timeline: list[tuple[float, str]], pattern: str) -> float | None:
    return next((seconds for seconds, text in timeline if re.search(pattern, text)), None)


def stage_times(timeline: list[tuple[float, str]]) -> dict[str, float]:
    """Seconds per build stage from the stamped stderr (a stage whose start or end is not seen is left out)."""
    starts: dict[str, float] = {}
    for stage, patterns in STAGE_MARKS:
        found = [t for t in (_first(timeline, p) for p in patterns) if t is not None]
        if found:
            starts[stage] = found[0]
    out = {}
    for number, (stage, _) in enumerate(STAGE_MARKS[:-1]):
        following = [starts[s] for s, _ in STAGE_MARKS[number + 1 :] if s in starts]
        if stage in starts and following and following[0] >= starts[stage]:
            out[f"{stage}_s"] = round(following[0] - starts[stage], 2)
    for stage, pattern in STAGE_FIGURES:
        figure = next((m for _, text in timeline if (m := re.search(pattern, text))), None)
        if figure:
            out[f"{stage}_s"] = float(figure.group(1))
    read_start, read_end = (_first(timeline, p) for p in SEQUENCES_READ)
    embed_start = starts.get("embed")
    if "copurchase_s" in out and None not in (read_start, read_end, embed_start) and read_end < embed_start:
        out["copurchase_s"] = round(out["copurchase_s"] + read_end - read_start, 2)
    return out


def save_log(path: Path, timeline: list[tuple[float, str]]) -> None:
    """The build's stderr with arrival times; of each progress bar only its first and last pieces."""
    lines, bars = [], {}
    for seconds, text in timeline:
        bar = re.match(r"^(\w+):\s+\d+%\|", text)
        if bar:
            bars.setdefault(bar.group(1), []).append(f"{seconds:9.2f}  {text}")
            continue
        lines.append(f"{seconds:9.2f}  {text}")
    for name, pieces in bars.items():
        lines += [f"[bar {name}] {pieces[0]}", f"[bar {name}] {pieces[-1]}"]
    path.write_text("\n".join(lines) + "\n")


def env() -> dict[str, str]:
    """The children's environment: offline (no hub look-ups), no tokenizer thread warnings."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def generate(num_items: int, seed: int) -> tuple[Path, dict[str, Any]]:
    """The synthetic data of size ``num_items`` (generated once, then reused)."""
    data = WORK / "data" / f"n{num_items}-seed{seed}"
    marker = data / "synth.json"
    run = None
    if not marker.is_file():
        run = check(run_measured([sys.executable, str(HERE / "synth_catalog.py"), "--num-items", str(num_items),
                                  "--out-dir", str(data), "--seed", str(seed)], env=env()))
    info = json.loads(marker.read_text())
    if run is not None:
        info = {**info, "generator_wall_s": round(run.wall_s, 1), "generator_peak_rss_mb": round(run.peak_rss_mb)}
        marker.write_text(json.dumps(info, indent=2))
    return data, info


def index_kind(manifest: dict[str, Any]) -> str:
    """``approximate`` if the manifest's index section names an approximate search, else ``exact``."""
    section = manifest.get("index", {})
    named = [str(v) for k, v in section.items() if k in ("search", "kind", "type", "method", "mode", "algorithm")]
    return "approximate" if any(APPROXIMATE.search(v) for v in named) else "exact"


def measure_size(num_items: int, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    """Every measurement of one size; the result row."""
    data, synth = generate(num_items, args.seed)
    histories = json.loads((data / "histories.json").read_text())
    bundle = out_dir / "bundle"
    shutil.rmtree(bundle, ignore_errors=True)
    build_cmd = [*tool("gloss-export"), "bundle", "--catalog", str(data / "items.jsonl.gz"),
                 "--sequences", str(data / "sequences.jsonl.gz"), "--out-dir", str(bundle)]
    if args.embedder_dir is not None:
        build_cmd += ["--embedder-dir", str(args.embedder_dir)]
    if args.graph_config is not None:
        build_cmd += ["--graph-config", str(args.graph_config)]
    logger.info("size %d: building", num_items)
    load_at_build = load_avg()
    build = check(run_measured(build_cmd, env=env()))
    save_log(out_dir / "build_log.txt", build.timeline)
    stages = stage_times(build.timeline)
    manifest = json.loads((bundle / "gloss_bundle.json").read_text())
    kind = index_kind(manifest)
    stage_cmd = [sys.executable, str(HERE / "scale_stages.py"), str(bundle), "--titles", str(data / "items.jsonl.gz"),
                 "--sample", str(min(EMBED_SAMPLE, num_items))]
    if kind == "approximate" and not args.embed_stub:  # a stand-in's vectors say nothing about recall
        stage_cmd += ["--queries", str(data / "histories.json")]
    if "index_s" not in stages:
        stage_cmd += ["--index"]
    if "copurchase_s" not in stages:
        stage_cmd += ["--copurchase", str(data / "sequences.jsonl.gz")]
    logger.info("size %d: stage timings %s", num_items, stages)
    library = json.loads(check(run_measured(stage_cmd, env=env())).stdout)
    logger.info("size %d: cold recommend", num_items)
    history = next(h[:-1] for h in histories if len(h) >= 6)
    recommend = cold_recommend(bundle, history)
    logger.info("size %d: serve", num_items)
    requests = [h[:-1] for h in histories[: args.serve_requests]]
    serve = serve_latency(bundle, requests, out_dir / "serve.log")
    bundle_mb = dir_mb(bundle)
    logger.info("size %d: update", num_items)
    update = check(run_measured([*tool("gloss-export"), "update", str(bundle), "--add",
                                 str(data / "new_items.jsonl.gz")], env=env()))
    row: dict[str, Any] = {
        "items": num_items,
        "build_s": round(build.wall_s, 2),
        "build_peak_rss_mb": round(build.peak_rss_mb, 1),
        "embed_titles_per_s": library["embed_titles_per_s"],
        "index_s": stages.get("index_s", library.get("index_s")),
        "copurchase_s": stages.get("copurchase_s", library.get("copurchase_s")),
        "bundle_mb": round(bundle_mb, 1),
        "cold_recommend_s": round(recommend.pop("cold_recommend_s"), 3),
        "cold_recommend_rss_mb": round(recommend.pop("cold_recommend_rss_mb"), 1),
        "serve_p50_ms": _round(serve.pop("serve_p50_ms")),
        "serve_p95_ms": _round(serve.pop("serve_p95_ms")),
        "serve_rss_mb": _round(serve.pop("serve_rss_mb")),
        "update_1k_s": round(update.wall_s, 2),
        "ann_recall_at_10": library.get("ann_recall_at_10") if kind == "approximate" else None,  # see the note
        # details
        "index_search": kind, "index_section": manifest.get("index"),
        "ann_recall_note": ("not measured: the stand-in embedder's vectors" if kind == "approximate" and args.embed_stub
                            else None),
        "stage_source": {s: "build log" if f"{s}_s" in stages else "library, separate process"
                         for s in ("index", "copurchase")},
        "build_stages_s": stages, "embed_in_build_titles_per_s": _rate(num_items, stages.get("embed_s")),
        "embed_alone_s": round(num_items / library["embed_titles_per_s"], 1),
        "embed_titles_per_cpu_s": library.get("embed_titles_per_cpu_s"),
        "build_over_embed_alone": round(build.wall_s * library["embed_titles_per_s"] / num_items, 2),
        "build_cpu_s": round(build.cpu_s, 1), "update_cpu_s": round(update.cpu_s, 2),
        "update_peak_rss_mb": round(update.peak_rss_mb, 1), **recommend, **serve,
        "embedder": "stub (memory only)" if args.embed_stub else str(args.embedder_dir or "CLI default export"),
        "memory_only": bool(args.embed_stub), "graph_config": graph_settings(args.graph_config),
        "synthetic": synth, "load_avg_at_build": load_at_build,
        "autogroup": args.autogroup,
        "command": _command(), "code": code_state(), "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }  # fmt: skip
    if not args.keep_bundle:
        shutil.rmtree(bundle, ignore_errors=True)
    return row


def extrapolate_build(row: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """A memory-only row's build time with the real embedder: its measured build minus the stand-in's embedding
    stage plus the titles at the real embedder's rate (the mean of the timed rows); None without timed rows."""
    rates = [r["embed_titles_per_s"] for r in rows if not r.get("memory_only") and r.get("embed_titles_per_s")]
    row["stub_embed_titles_per_s"], row["build_s_measured_with_stub"] = row["embed_titles_per_s"], row["build_s"]
    real = sum(rates) / len(rates) if rates else None
    stub_embed_s = row["build_stages_s"].get("embed_s", row["items"] / row["embed_titles_per_s"])
    row["embed_titles_per_s"] = round(real, 1) if real else None
    row["build_s"] = round(row["build_s"] - stub_embed_s + row["items"] / real, 1) if real else None
    row["build_s_extrapolated"] = True
    if row.get("graph_config") and row["build_s"] is not None and row.get("index_s"):
        # a cheaper graph (e.g. expansion_add 16) has the default's memory but not its time: the index stage is
        # replaced by the default graph's fitted cost at this size (index_s ~ N^b over the timed rows)
        fitted = fit(rows, "index_s")
        if fitted is None:
            row["build_s"] = None
            return
        default_index_s = math.exp(fitted[1]) * row["items"] ** fitted[0]
        row["index_s_measured"], row["index_s"] = row["index_s"], round(default_index_s, 1)
        row["build_s"] = round(row["build_s"] - row["index_s_measured"] + default_index_s, 1)


def graph_settings(path: Path | None) -> dict[str, Any] | None:
    """The build's --graph-config fields (None: the defaults)."""
    return None if path is None else json.loads(Path(path).read_text())


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def _rate(count: int, seconds: float | None) -> float | None:
    return round(count / seconds, 1) if seconds else None


def _command() -> str:
    return "flock /tmp/gloss-heavy.lock python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])


def stub_embedder(path: Path) -> Path:
    """A stand-in embedder at ``path``: the real export's tokenizer and config, an ONNX graph that looks each
    token up in a seeded random table of the real width (no transformer), for memory-only runs."""
    from scale_stub import write_stub_embedder  # lazy: onnx and the real export only for --embed-stub

    return write_stub_embedder(path, WORK / "embedder", env())


def use_snapshot(commit: str) -> None:
    """Run everything (this script too: it execs itself again) on the source of ``commit``: extracted once with
    ``git archive`` under .work and put first on PYTHONPATH, so other people's uncommitted edits in the working
    tree never reach a measurement."""
    full = subprocess.run(["git", "rev-parse", "--short", commit], cwd=ROOT, capture_output=True, text=True, check=True)
    root = WORK / "code" / full.stdout.strip()
    if not (root / "gloss" / "COMMIT").is_file():
        (root / "gloss").mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", "--format=tar", full.stdout.strip(), "edge", "export", "train"],
                                 cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(root / "gloss")], input=archive.stdout, check=True)
        (root / "gloss" / "COMMIT").write_text(full.stdout.strip() + "\n")
    if os.environ.get("PYTHONPATH") != str(root):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "PYTHONPATH": str(root)})


def claim_cpu(nice: int) -> str:
    """Set this session's autogroup nice (Linux ``sched_autogroup``): the scheduler first shares the CPU between
    sessions, so another session's ``nice -n 19`` job still gets its equal share against a measurement here; a
    negative autogroup nice gives the measured processes the machine, as the heavy lock intends. Only this
    script's own session (it and its children) changes. Returns what the kernel then reports."""
    try:
        AUTOGROUP.write_text(str(nice))
        return AUTOGROUP.read_text().strip()
    except OSError as exc:
        return f"unchanged ({exc.strerror})"


def rows_dir(out_name: str) -> Path:
    """Where the rows of one result set are cached."""
    return WORK / "runs" / out_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="12k", help="Comma-separated sizes to measure now (12k,50k,200k,1M).")
    parser.add_argument("--out-name", default="scale", help="Result stem; rows are cached per stem.")
    parser.add_argument("--force", action="store_true", help="Measure sizes that already have a row again.")
    parser.add_argument("--report-only", action="store_true", help="Only rewrite the results from cached rows.")
    parser.add_argument("--generate-only", action="store_true", help="Only write the sizes' synthetic data.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--serve-requests", type=int, default=300)
    parser.add_argument("--embedder-dir", type=Path, default=None, help="Pass --embedder-dir to the build.")
    parser.add_argument("--embed-stub", action="store_true", help="Memory-only run with a stand-in embedder.")
    parser.add_argument("--graph-config", type=Path, default=None, help="Pass --graph-config to the build (e.g. a "
                        "cheaper expansion_add for a memory-only row: the graph's memory does not depend on it).")
    parser.add_argument("--keep-bundle", action="store_true", help="Keep the built bundle under .work.")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--autogroup-nice", type=int, default=-20, help="This session's CPU weight against the "
                        "other sessions' (-20..19; see claim_cpu); 0 leaves it as it is.")
    parser.add_argument("--baseline-name", default="scale_before", help="A committed result stem set beside "
                        "the rows in the Markdown ('' for none).")
    parser.add_argument("--note", default=None, help="A remark under the table (kept for later reports).")
    parser.add_argument("--code-commit", default=None, help="Measure the code of this commit (a snapshot), not "
                        "the working tree.")
    args = parser.parse_args()
    if args.code_commit:
        use_snapshot(args.code_commit)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    before = AUTOGROUP.read_text().split()[-1] if AUTOGROUP.is_file() else None
    args.autogroup = claim_cpu(args.autogroup_nice) if args.autogroup_nice else "unchanged"
    logger.info("autogroup: %s", args.autogroup)
    try:
        measure_and_report(args)
    finally:
        if args.autogroup_nice and before is not None:
            claim_cpu(int(before))  # the session outlives this script: give its weight back


def measure_and_report(args: argparse.Namespace) -> None:
    """Measure the sizes asked for (or none with --report-only) and rewrite the results."""
    if args.embed_stub:
        args.embedder_dir = stub_embedder(WORK / "stub-embedder")
    runs = rows_dir(args.out_name)
    if args.generate_only:
        for size in [parse_size(s) for s in args.sizes.split(",")]:
            data, info = generate(size, args.seed)
            logger.info("size %d: %s %s", size, data, {k: v for k, v in info.items() if k != "settings"})
        return
    for size in [] if args.report_only else [parse_size(s) for s in args.sizes.split(",")]:
        out_dir = runs / f"n{size}"
        row_path = out_dir / "row.json"
        if row_path.is_file() and not args.force:
            logger.info("size %d: already measured (%s); --force measures it again", size, row_path)
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        row = measure_size(size, args, out_dir)
        if row["memory_only"]:
            extrapolate_build(row, [json.loads(p.read_text()) for p in runs.glob("n*/row.json")])
        row_path.write_text(json.dumps(row, indent=2))
        logger.info("size %d: %s", size, {k: row[k] for k in list(row)[:14]})
    rows = sorted((json.loads(p.read_text()) for p in runs.glob("n*/row.json")), key=lambda r: r["items"])
    if not rows:
        raise SystemExit(f"no rows under {runs}: measure a size first")
    note_path = runs / "note.txt"  # a note stays with its result set until another one replaces it
    if args.note is not None:
        note_path.write_text(args.note)
    note = note_path.read_text() if note_path.is_file() else None
    commands = list(dict.fromkeys(row["command"] for row in rows))  # the runs that measured the rows
    baseline = None
    if args.baseline_name and args.baseline_name != args.out_name:
        baseline = load_baseline(RESULTS / f"{args.baseline_name}.json")
    write_report(RESULTS / args.out_name, rows, command="; ".join(commands), machine=machine(),
                 plot_png=not args.no_plot, note=note, baseline=baseline)


if __name__ == "__main__":
    main()

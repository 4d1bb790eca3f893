"""`gloss-export update` (+1,000 items) on one large bundle: this tree's code against an earlier commit's, in turn.

The scale benchmark (benchmarks/scale.py) deletes its bundles; this measures the update stage again on a bundle it
kept (``--keep-bundle``, or a hard-link copy), after a change to the update path. Each run gets a fresh hard-link
copy of the bundle, loaded once first (as the scale run's cold start and server did, so the hash stamp vouches for
its files), then the timed ``gloss-export update COPY --add NEW_ITEMS``. Runs alternate between the codes so that
machine drift falls on both; the session claims the CPU like the scale benchmark (autogroup nice -20).

Usage:
    python benchmarks/scale_update.py BUNDLE NEW_ITEMS --baseline-commit REV [--rounds 2] [--out-name NAME]
Writes benchmarks/results/<out-name>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from scale import claim_cpu, machine  # benchmarks/scale.py
from scale_measure import check, run_measured

from gloss.edge.files import write_json_atomic, write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def snapshot(commit: str, root: Path) -> Path:
    """The package of ``commit`` as a folder to put on PYTHONPATH (``gloss/...``)."""
    (root / "gloss").mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(root / "gloss")], input=archive.stdout, check=True)
    return root


def one_run(bundle: Path, new_items: Path, work: Path, pythonpath: str | None) -> dict:
    """Copy, load once, then time the update; the copy is removed."""
    copy = work / "bundle"
    shutil.rmtree(copy, ignore_errors=True)
    subprocess.run(["cp", "-al", str(bundle), str(copy)], check=True)
    env = {**os.environ, **({"PYTHONPATH": pythonpath} if pythonpath else {})}
    code = "import sys; from gloss.edge.bundle import load_bundle; load_bundle(sys.argv[1])"
    check(run_measured([sys.executable, "-c", code, str(copy)], env=env))
    run = check(run_measured([sys.executable, "-m", "gloss.export.cli", "update", str(copy), "--add", str(new_items)],
                             env=env))
    shutil.rmtree(copy, ignore_errors=True)
    return {"wall_s": round(run.wall_s, 2), "cpu_s": round(run.cpu_s, 2), "peak_rss_mb": round(run.peak_rss_mb, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("new_items", type=Path)
    parser.add_argument("--baseline-commit", required=True)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out-name", default="scale_update")
    args = parser.parse_args()
    autogroup = claim_cpu(-20)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    runs: dict[str, list[dict]] = {"this tree": [], args.baseline_commit: []}
    with tempfile.TemporaryDirectory(dir=args.bundle.parent) as tmp:
        base_path = str(snapshot(args.baseline_commit, Path(tmp) / "snap"))
        for _ in range(args.rounds):
            runs["this tree"].append(one_run(args.bundle, args.new_items, Path(tmp), None))
            runs[args.baseline_commit].append(one_run(args.bundle, args.new_items, Path(tmp), base_path))
            print(json.dumps(runs), flush=True)
    items = json.loads((args.bundle / "gloss_bundle.json").read_text())["catalog"]["num_items"]
    summary = {name: {"update_1k_s": statistics.median(r["wall_s"] for r in rs),
                      "cpu_s": statistics.median(r["cpu_s"] for r in rs),
                      "peak_rss_mb": max(r["peak_rss_mb"] for r in rs)} for name, rs in runs.items()}
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    out = {"command": command, "machine": machine(), "autogroup": autogroup, "items": items, "code": head,
           "summary": summary, "runs": runs}
    write_json_atomic(RESULTS / f"{args.out_name}.json", out)
    lines = [f"# `gloss-export update` +1,000 items on a {items:,}-item bundle: this tree ({head}) vs "
             f"{args.baseline_commit}", "", f"Command: `{command}`  ", f"Machine: {machine()}", "",
             "Each run: a fresh hard-link copy of the bundle kept by benchmarks/scale.py, loaded once (hash stamp), "
             "then the timed update; codes in turn, medians of the rounds. Other jobs shared the machine; this "
             "session had autogroup nice -20.", "", "| code | update_1k_s | CPU s | peak RSS MB | runs (wall s) |",
             "|---|---|---|---|---|"]
    for name, s in summary.items():
        walls = ", ".join(str(r["wall_s"]) for r in runs[name])
        lines.append(f"| {name} | {s['update_1k_s']} | {s['cpu_s']} | {s['peak_rss_mb']} | {walls} |")
    write_text_atomic(RESULTS / f"{args.out_name}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

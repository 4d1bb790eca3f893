"""Query-time costs of kept scale bundles side by side: cold `recommend` and `serve`, in turn.

After a change that touches only the index of a large bundle (e.g. ``gloss-export regraph`` with other graph
settings), this measures what benchmarks/scale.py measures at query time (its ``cold_recommend_*`` and
``serve_*`` keys, with the same functions) on each named bundle, alternating the bundles for ``--rounds`` so that a
machine's drift falls on all of them; medians of the rounds. The session claims the CPU like the scale benchmark.

Usage:
    python benchmarks/scale_query.py NAME=BUNDLE [NAME=BUNDLE ...] --histories HISTORIES.json [--rounds 2]
        [--serve-requests 300] [--out-name NAME]
Writes benchmarks/results/<out-name>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

from scale import claim_cpu, machine  # benchmarks/scale.py
from scale_measure import cold_recommend, serve_latency

from gloss.edge.files import write_json_atomic, write_text_atomic

RESULTS = Path(__file__).resolve().parent / "results"
KEYS = ("cold_recommend_s", "cold_recommend_rss_mb", "serve_p50_ms", "serve_p95_ms", "serve_app_p50_ms",
        "serve_rss_mb")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", help="NAME=BUNDLE_DIR")
    parser.add_argument("--histories", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--serve-requests", type=int, default=300)
    parser.add_argument("--out-name", default="scale_query")
    parser.add_argument("--autogroup-nice", type=int, default=-20)
    args = parser.parse_args()
    bundles = dict(b.split("=", 1) for b in args.bundles)
    autogroup = claim_cpu(args.autogroup_nice)
    histories = json.loads(args.histories.read_text())
    history = next(h[:-1] for h in histories if len(h) >= 6)  # what scale.py's cold run asks
    requests = [h[:-1] for h in histories[: args.serve_requests]]
    runs: dict[str, list[dict]] = {name: [] for name in bundles}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for name, path in bundles.items():
                row = {**cold_recommend(Path(path), history), **serve_latency(Path(path), requests,
                                                                                 Path(tmp) / f"{name}.log")}
                runs[name].append({k: row[k] for k in KEYS})
                print(name, runs[name][-1], flush=True)
    summary = {name: {k: round(statistics.median(r[k] for r in rs), 3) for k in KEYS} for name, rs in runs.items()}
    graphs = {name: json.loads((Path(p) / "gloss_bundle.json").read_text())["index"].get("graph")
              for name, p in bundles.items()}
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    out = {"command": command, "machine": machine(), "autogroup": autogroup, "bundles": bundles, "graphs": graphs,
           "summary": summary, "runs": runs}
    write_json_atomic(RESULTS / f"{args.out_name}.json", out)
    lines = ["# Query-time costs of kept scale bundles, side by side", "", f"Command: `{command}`  ",
             f"Machine: {machine()}", "",
             f"Bundles in turn for {args.rounds} rounds (medians): cold `gloss-edge recommend` (3 fresh processes "
             f"each) and `gloss-edge serve` ({2 * len(requests)} requests from one loopback client), as "
             "benchmarks/scale.py measures them. Other jobs may have shared the machine; this session had "
             f"autogroup nice {args.autogroup_nice}.", "",
             "| bundle | graph | " + " | ".join(KEYS) + " |", "|---|---|" + "---|" * len(KEYS)]
    for name, s in summary.items():
        graph = graphs[name]
        label = "exact" if not graph else f"M={graph['connectivity']}, ef_add={graph['expansion_add']}, " \
                                          f"ef={graph['expansion_search']}"
        lines.append(f"| {name} | {label} | " + " | ".join(str(s[k]) for k in KEYS) + " |")
    write_text_atomic(RESULTS / f"{args.out_name}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""HNSW graph settings side by side: build time and Recall@10 against exact search on a bundle's own vectors.

The graph is built (in memory, every core) over the first ``--rows`` stored vectors of a bundle for each
``--graph-config`` in turn, ``--repeats`` rounds alternating the configs so that a machine's drift hits them alike;
queries are ``--queries`` stored rows drawn with a fixed seed (the last-item search queries with a row's own
vector), their exact top 10 from a scan of the same rows. Nothing in the bundle changes.

Usage:
    python benchmarks/graph_build.py BUNDLE --rows 200000 --graph-config '{"expansion_add": 128}' \
        --graph-config '{"expansion_add": 256}' [--repeats 2] [--out-name graph_build_200k]
Writes benchmarks/results/<out-name>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from scale import machine  # benchmarks/scale.py

from gloss.edge.bundle import load_bundle
from gloss.edge.files import write_json_atomic, write_text_atomic
from gloss.edge.hnsw import HnswConfig
from gloss.edge.index import ItemIndex

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--graph-config", type=json.loads, action="append", required=True)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--out-name", default="graph_build")
    args = parser.parse_args()
    store = load_bundle(args.bundle, verify=False).open_index().store
    rows = min(args.rows, len(store))
    vectors = np.asarray(store.stored_rows(np.arange(rows)))
    picked = np.random.default_rng(0).choice(rows, min(args.queries, rows), replace=False)
    queries = vectors[picked].astype(np.float32)
    configs = [HnswConfig.from_dict(c, where="--graph-config") for c in args.graph_config]
    exact_pos = None
    results: list[dict] = [{"config": c.to_dict(), "build_s": [], "recall_at_10": None} for c in configs]
    for _ in range(args.repeats):
        for given, config, result in zip(args.graph_config, configs, results, strict=True):
            started = time.perf_counter()
            index = ItemIndex.build(vectors, dtype=store.stored_dtype, kind="hnsw", hnsw=config)
            result["build_s"].append(round(time.perf_counter() - started, 1))
            if exact_pos is None:
                exact_pos, _ = index.search(queries, 10, exact=True)
            found, _ = index.search(queries, 10, exact=False)
            recall = float(np.mean([len(set(a) & set(e)) / 10 for a, e in zip(found.tolist(), exact_pos.tolist(),
                                                                              strict=True)]))
            result["recall_at_10"] = round(recall, 4)  # the last round's graph (builds vary with thread order)
            print({"config": given, "build_s": result["build_s"][-1],
                   "recall_at_10": result["recall_at_10"]}, flush=True)
    base = np.median(results[0]["build_s"])
    for result in results:
        result["build_s_median"] = float(np.median(result["build_s"]))
        result["build_vs_first"] = round(result["build_s_median"] / base, 2)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    out = {"command": command, "machine": machine(), "rows": rows, "queries": len(queries), "results": results}
    write_json_atomic(RESULTS / f"{args.out_name}.json", out)
    lines = [f"# HNSW graph settings side by side over {rows:,} stored vectors", "", f"Command: `{command}`  ",
             f"Machine: {machine()}", "",
             f"Graph builds alternate between the settings ({args.repeats} rounds); Recall@10 of {len(queries)} "
             "stored-row queries against exact search over the same rows.", "",
             "| settings | build s (each round) | median | vs first | Recall@10 |", "|---|---|---|---|---|"]
    lines += [f"| `{json.dumps(a)}` | {', '.join(map(str, r['build_s']))} | {r['build_s_median']:.1f} | "
              f"{r['build_vs_first']} | {r['recall_at_10']} |" for a, r in zip(args.graph_config, results, strict=True)]
    write_text_atomic(RESULTS / f"{args.out_name}.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""HNSW Recall@10 against exact search on a kept scale bundle, over the search settings (expansion, candidates).

The scale benchmark's ``ann_recall_at_10`` uses the bundle's own settings; this sweeps the search-time ones on
the same bundle and queries (the last item of each synthetic history, embedded as the last-item search embeds
it). With ``--graph-config`` (JSON fields of :class:`gloss.edge.hnsw.HnswConfig`, e.g. ``{"expansion_add": 256}``)
the graph is first rebuilt in memory with those settings (its build time recorded; the bundle is not changed).
Recall is reported three ways: ``strict`` (share of the exact top 10's positions found), and tie-tolerant (a found
item counts when its similarity is within 1e-6 or 1e-3 of the exact 10th: ann-benchmarks' rule), since
the recombined titles of a synthetic catalogue sit in dense clusters. Latency: one query at a time, p50 over 200.

Usage:
    python benchmarks/scale_recall.py BUNDLE HISTORIES.json [--queries 1000] [--out-name scale_recall_1m]
        [--graph-config '{"expansion_add": 256}'] [--expansions 256,512,1024] [--candidates 32,64,128]
Writes benchmarks/results/<out-name>.json and .md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from scale import machine  # benchmarks/scale.py

from gloss.edge.bundle import ITEM_TEXT, load_bundle
from gloss.edge.files import write_json_atomic, write_text_atomic
from gloss.edge.hnsw import HnswConfig

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("histories", type=Path)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--out-name", default="scale_recall")
    parser.add_argument("--graph-config", type=json.loads, default=None, help="Rebuild the graph with these settings.")
    parser.add_argument("--expansions", default="256,512,1024", help="expansion_search values to sweep.")
    parser.add_argument("--candidates", default="32,64,128", help="candidates values to sweep.")
    args = parser.parse_args()
    settings = [(int(ef), int(c)) for ef in args.expansions.split(",") for c in args.candidates.split(",")]
    bundle = load_bundle(args.bundle, verify=False)
    catalog = bundle.catalog
    texts = [ITEM_TEXT.format(title=catalog.titles[catalog.position(h[-1])])
             for h in json.loads(args.histories.read_text()) if h and h[-1] in catalog][: args.queries]
    queries = bundle.open_embedder().embed(texts, show_progress=False)
    index = bundle.open_index()
    exact_pos, exact_sim = index.search(queries, 10, exact=True)
    graph_build_s = None
    if args.graph_config:
        index.hnsw = HnswConfig.from_dict({**index.hnsw.to_dict(), **args.graph_config}, where="--graph-config")
        started = time.perf_counter()
        index._build_graph()  # in memory, every core; the bundle's own graph file stays as it is
        graph_build_s = round(time.perf_counter() - started, 1)
        print({"graph_build_s": graph_build_s, "graph": index.hnsw.to_dict()}, flush=True)
    graph, built = index._graph_or_build(), index.hnsw  # the benchmark changes the search settings in place
    rows = []
    for ef, candidates in settings:
        index.hnsw = dataclasses.replace(built, expansion_search=ef, candidates=candidates)
        graph.expansion_search = ef
        latency = []
        for i in range(min(200, len(queries))):
            start = time.perf_counter()
            index.search(queries[i : i + 1], 10, exact=False)
            latency.append(time.perf_counter() - start)
        pos, sim = index.search(queries, 10, exact=False)
        strict = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(pos.tolist(), exact_pos.tolist(), strict=True)])
        rows.append({"expansion_search": ef, "candidates": candidates, "recall_at_10": round(float(strict), 4),
                     "within_1e-6": round(float(np.mean((sim >= exact_sim[:, -1:] - 1e-6).sum(1) / 10)), 4),
                     "within_1e-3": round(float(np.mean((sim >= exact_sim[:, -1:] - 1e-3).sum(1) / 10)), 4),
                     "p50_ms": round(1000 * float(np.median(latency)), 2)})
        print(rows[-1], flush=True)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    graph_section = built.to_dict()
    out = {"graph_build_s": graph_build_s, "command": command, "machine": machine(), "items": len(catalog),
           "queries": len(queries),
           "built_with": {k: graph_section.get(k) for k in ("connectivity", "expansion_add", "expansion_search",
                                                              "candidates", "dtype")}, "settings": rows}
    write_json_atomic(RESULTS / f"{args.out_name}.json", out)
    lines = [f"# HNSW search settings on the {len(catalog):,}-item scale bundle: Recall@10 against exact search", "",
             f"Command: `{command}`  ", f"Machine: {machine()}", "",
             f"{len(queries)} last-item queries of the synthetic histories; graph built with "
             f"`{json.dumps(out['built_with'])}`"
             + (f" (rebuilt by this run in {graph_build_s} s)" if graph_build_s else " (the bundle's own)")
             + ". `within` columns count a found item whose similarity is within that distance of the exact 10th "
             "(ties and near-ties of the recombined titles). p50: one query at a time, the index's search alone (no "
             "embedding), on a machine other jobs shared.", "",
             "| expansion_search | candidates | Recall@10 | within 1e-6 | within 1e-3 | p50 ms |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['expansion_search']} | {r['candidates']} | {r['recall_at_10']} | {r['within_1e-6']} | "
              f"{r['within_1e-3']} | {r['p50_ms']} |" for r in rows]
    write_text_atomic(RESULTS / f"{args.out_name}.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""HNSW Recall@10 against exact search on a kept scale bundle, over the search settings (expansion, candidates).

The scale benchmark's ``ann_recall_at_10`` uses the bundle's own settings; this sweeps the search-time ones on
the same bundle and queries (the last item of each synthetic history, embedded as the last-item search embeds
it). Recall is reported three ways: ``strict`` (share of the exact top 10's positions found), and tie-tolerant
(a found item counts when its similarity is within 1e-6 or 1e-3 of the exact 10th: ann-benchmarks' rule), since
the recombined titles of a synthetic catalogue sit in dense clusters. Latency: one query at a time, p50 over 200.

Usage:
    python benchmarks/scale_recall.py BUNDLE HISTORIES.json [--queries 1000] [--out-name scale_recall_1m]
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

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = [(ef, c) for ef in (256, 512, 1024) for c in (32, 64, 128)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("histories", type=Path)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--out-name", default="scale_recall")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle, verify=False)
    catalog = bundle.catalog
    texts = [ITEM_TEXT.format(title=catalog.titles[catalog.position(h[-1])])
             for h in json.loads(args.histories.read_text()) if h and h[-1] in catalog][: args.queries]
    queries = bundle.open_embedder().embed(texts, show_progress=False)
    index = bundle.open_index()
    exact_pos, exact_sim = index.search(queries, 10, exact=True)
    graph, built = index._graph_or_build(), index.hnsw  # the benchmark changes the search settings in place
    rows = []
    for ef, candidates in SETTINGS:
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
    graph_section = bundle.manifest["index"].get("graph", {})
    out = {"command": command, "machine": machine(), "items": len(catalog), "queries": len(queries),
           "built_with": {k: graph_section.get(k) for k in ("connectivity", "expansion_add", "expansion_search",
                                                              "candidates", "dtype")}, "settings": rows}
    write_json_atomic(RESULTS / f"{args.out_name}.json", out)
    lines = [f"# HNSW search settings on the {len(catalog):,}-item scale bundle: Recall@10 against exact search", "",
             f"Command: `{command}`  ", f"Machine: {machine()}", "",
             f"{len(queries)} last-item queries of the synthetic histories; graph built with "
             f"`{json.dumps(out['built_with'])}`. `within` columns count a found item whose similarity is within that "
             "distance of the exact 10th (ties and near-ties of the recombined titles). p50: one query at a time, "
             "the index's search alone (no embedding), on a machine other jobs shared.", "",
             "| expansion_search | candidates | Recall@10 | within 1e-6 | within 1e-3 | p50 ms |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['expansion_search']} | {r['candidates']} | {r['recall_at_10']} | {r['within_1e-6']} | "
              f"{r['within_1e-3']} | {r['p50_ms']} |" for r in rows]
    write_text_atomic(RESULTS / f"{args.out_name}.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

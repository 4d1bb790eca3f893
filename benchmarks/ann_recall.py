"""Approximate search at catalogue scale: Recall@10 of the HNSW index against exact search on real queries, and
what the vector stages cost (embedding, graph build, open, query; exact against HNSW) at 200k and 1M items.

Real vectors: the titles of the Beauty, Toys and Sports catalogues (42,226 items) embedded as ``Title: <title>``
with the bundles' int8 all-MiniLM-L6-v2 (the default embedder of ``gloss-export bundle``). Real queries, for the
first ``--users`` validation users per category (shared/data/gloss_queries):

* ``llm``: the paper authors' fine-tuned Llama-3.2-1B generated titles (3 beams per user), embedded;
* ``last_item``: the user's last history item (its catalogue vector: the last-item query, and fusion's history
  query, are exactly such vectors).

A catalogue of N items is the real vectors followed by N - 42,226 synthetic ones, each
``normalize(w a + (1 - w) b + 0.02 noise)`` for a random real item ``a``, one of its 50 nearest real items ``b``
and ``w ~ U(0.3, 0.7)``: items that sit among the real ones the way recombined titles do, so the real queries'
neighbourhoods grow denser with N (the hard case for a graph). Vectors are stored as f16 like a bundle's.

Per size: exact search (the ground truth; block-wise over the memory-mapped f16 file) and the HNSW index as
``gloss-export bundle`` builds it (int8 graph, candidates re-ranked on the stored vectors), its build time with
2 threads, its file size, opening it and the first search, single-query latency (p50/p95 over queries one at a
time, as ``serve`` sends them), Recall@10 per query set, the time to extend the graph by 10,000 rows (what an
update does once its exactly searched tail is full), and the resident memory of a process that opened the index
and ran 1,000 queries. The search settings (expansion, candidates) are swept at every size, the graph's build
settings at ``--sweep-size``: that is where the defaults in gloss.edge.hnsw come from. The exact-search cost per
query at smaller sizes (in-memory float32 and block-wise f16) places the exact / HNSW threshold
(gloss.edge.index.HNSW_MIN_ITEMS).

Usage (about 30 minutes at the default sizes on 2 cores; the embedding of the real titles is cached):
    flock /tmp/gloss-heavy.lock python benchmarks/ann_recall.py --sizes 200000,1000000 --sweep-size 200000
Writes benchmarks/results/ann_recall.json and .md (``--out-name`` changes the stem).
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import platform
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from gloss.edge import index as index_module
from gloss.edge.embed import OnnxEmbedder
from gloss.edge.files import write_json_atomic, write_text_atomic
from gloss.edge.hnsw import HnswConfig
from gloss.edge.index import ItemIndex
from gloss.edge.logs import setup_logging
from gloss.edge.prompt import render_item
from gloss.edge.topk import top_k_blocked
from gloss.edge.vectors import VectorStore, open_vectors

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CATEGORIES = ("beauty", "toys", "sports")
THREADS = 2
NUM_LATENCY_QUERIES = 200
NUM_RSS_QUERIES = 1000
EXTEND_ROWS = 10_000
logger = logging.getLogger("benchmarks.ann_recall")


# --- data: real vectors and queries, synthetic padding ---


def real_data(work: Path, users: int) -> dict[str, Any]:
    """Embed (once, cached) the real catalogues' titles and the validation queries; find the last-item rows."""
    cache = work / "real.npz"
    titles, asin_row = [], {}
    for name in CATEGORIES:
        with gzip.open(DATA / "amazon2014" / name / "items.jsonl.gz", "rt", encoding="utf-8") as handle:
            for line in handle:
                row = json.loads(line)
                asin_row[(name, row["asin"])] = len(titles)
                titles.append(row["title"])
    llm_texts, last_rows = [], []
    for name in CATEGORIES:
        with gzip.open(DATA / "gloss_queries" / f"{name}_validation_llama-3.2-1b.jsonl.gz", "rt") as handle:
            rows = [json.loads(line) for line in handle][:users]
        for row in rows:
            llm_texts.extend(row["queries"][:3])
            last_rows.append(asin_row[(name, row["history"][-1])])
    if not cache.is_file():
        embedder = OnnxEmbedder.load(work / "embedder", num_threads=THREADS)
        started = time.perf_counter()
        chunks = embedder.embed_stream((render_item(t) for t in titles), total=len(titles), show_progress=False)
        items = np.vstack(list(chunks))
        seconds = time.perf_counter() - started
        np.savez(cache, items=items, llm=embedder.embed(llm_texts), seconds=seconds)
    data = np.load(cache)
    return {"items": data["items"], "queries": {"llm": data["llm"], "last_item": data["items"][last_rows]},
            "embed_s": float(data["seconds"]), "num_titles": len(titles)}


def padded(work: Path, real: np.ndarray, size: int, seed: int = 0) -> Path:
    """The f16 vectors file of a ``size``-item catalogue: the real vectors, then synthetic ones near them."""
    path = work / f"vectors_{size}.npy"
    if path.is_file():
        return path
    rng = np.random.default_rng(seed)
    near = np.empty((len(real), 50), dtype=np.int64)
    for start in range(0, len(real), 4096):
        sims = real[start : start + 4096] @ real.T
        near[start : start + 4096] = np.argpartition(-sims, 51, axis=1)[:, 1:51]
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(size, real.shape[1]))
    out[: len(real)] = real
    for start in range(len(real), size, 1 << 16):
        stop = min(start + (1 << 16), size)
        a = rng.integers(0, len(real), stop - start)
        b = near[a, rng.integers(0, 50, stop - start)]
        w = rng.uniform(0.3, 0.7, (stop - start, 1)).astype(np.float32)
        mixed = w * real[a] + (1 - w) * real[b] + rng.standard_normal(real[a].shape).astype(np.float32) * 0.02
        out[start:stop] = mixed / np.linalg.norm(mixed, axis=1, keepdims=True)
    out.flush()
    del out
    return path


# --- measurements ---


def recall_at_10(found: np.ndarray, expected: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found.tolist(), expected.tolist(), strict=True)]))


def latency_ms(index: ItemIndex, queries: np.ndarray, exact: bool | None = None, count: int = NUM_LATENCY_QUERIES
               ) -> dict[str, float]:
    """p50/p95 of one query at a time (as serve sends them)."""
    times = []
    for row in queries[:count]:
        started = time.perf_counter()
        index.search(row[None, :], 10, exact=exact)
        times.append((time.perf_counter() - started) * 1000)
    return {"p50": round(float(np.percentile(times, 50)), 3), "p95": round(float(np.percentile(times, 95)), 3)}


def exact_truth(store: VectorStore, queries: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: np.vstack([top_k_blocked(store, q[s : s + 256], 10)[0] for s in range(0, len(q), 256)])
            for name, q in queries.items()}


def measure_size(work: Path, data: dict[str, Any], size: int, config: HnswConfig) -> dict[str, Any]:
    path = padded(work, data["items"], size)
    store = VectorStore([open_vectors(path)])
    queries = data["queries"]
    started = time.perf_counter()
    truth = exact_truth(store, queries)
    out: dict[str, Any] = {"items": size, "vectors_mb": round(path.stat().st_size / 2**20, 1),
                           "exact_all_queries_s": round(time.perf_counter() - started, 2)}
    exact_index = ItemIndex(store, "exact")
    out["exact_query_ms"] = latency_ms(exact_index, queries["llm"], exact=True, count=30)
    started = time.perf_counter()
    index = ItemIndex.create(store, "hnsw", config, threads=THREADS, show_progress=False)
    out["hnsw_build_s"] = round(time.perf_counter() - started, 1)
    out["hnsw_build_items_per_s"] = round(size / out["hnsw_build_s"])
    index.files = {"segments": [path.name]}
    index.write_graph(work, f"graph_{size}.usearch")
    section = index.section()
    out["graph_mb"] = round((work / f"graph_{size}.usearch").stat().st_size / 2**20, 1)
    out["hnsw"] = section["graph"]
    started = time.perf_counter()
    opened = ItemIndex.open(work, section)
    opened.search(queries["llm"][:1], 10)
    out["open_and_first_search_s"] = round(time.perf_counter() - started, 3)
    out["hnsw_query_ms"] = latency_ms(opened, queries["llm"])
    out["ann_recall_at_10"] = {name: round(recall_at_10(opened.search(q, 10)[0], truth[name]), 4)
                               for name, q in queries.items()}
    out["rss_after_1000_queries_mb"] = serving_rss(work, section)
    out["extend_graph_10k_s"] = extend_cost(store, index)
    return {**out, "_truth": truth, "_index": opened}


def serving_rss(work: Path, section: dict[str, Any]) -> dict[str, float]:
    """VmRSS / VmHWM of a fresh process that opens the index and runs 1,000 single queries."""
    code = f"""
import json, re, sys, numpy as np
from pathlib import Path
from gloss.edge.index import ItemIndex
index = ItemIndex.open(Path({str(work)!r}), json.loads({json.dumps(json.dumps(section))}))
q = np.load({str(work / "real.npz")!r})["llm"]
for row in q[:{NUM_RSS_QUERIES}]:
    index.search(row[None, :], 10)
status = Path("/proc/self/status").read_text()
print(json.dumps({{k: int(re.search(k + r":\\s+(\\d+)", status).group(1)) / 1024 for k in ("VmRSS", "VmHWM")}}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {key: round(value, 1) for key, value in json.loads(result.stdout.strip().splitlines()[-1]).items()}


def extend_cost(store: VectorStore, index: ItemIndex) -> float:
    """Seconds to add EXTEND_ROWS rows to the built graph (a copy of it), as an update's graph extension does."""
    rng = np.random.default_rng(1)
    extra = store.stored_rows(rng.integers(0, store.num_physical, EXTEND_ROWS)).astype(np.float32)
    extra += rng.standard_normal(extra.shape).astype(np.float32) * 0.01
    extra /= np.linalg.norm(extra, axis=1, keepdims=True)
    grown = index.with_store(VectorStore([*store.segments, extra.astype(np.float16)]))
    started = time.perf_counter()
    grown.extend_graph(threads=THREADS)
    return round(time.perf_counter() - started, 2)


SEARCH_SWEEP = [(ef, candidates) for ef in (64, 128, 256, 384, 512) for candidates in (16, 64)]


def search_sweep(size_result: dict[str, Any], data: dict[str, Any]) -> list[dict[str, Any]]:
    """Recall and latency of the built graph under other search settings (no rebuild needed)."""
    index, truth, queries = size_result["_index"], size_result["_truth"], data["queries"]
    graph, default = index._graph_or_build(), index.hnsw
    rows = []
    for ef, candidates in SEARCH_SWEEP:
        index.hnsw = replace(default, expansion_search=ef, candidates=candidates)
        graph.expansion_search = ef
        row = {"expansion_search": ef, "candidates": candidates,
               "query_ms": latency_ms(index, queries["llm"], count=100)}
        row.update({f"recall_{n}": round(recall_at_10(index.search(q, 10)[0], truth[n]), 4)
                    for n, q in queries.items()})
        rows.append(row)
    index.hnsw, graph.expansion_search = default, default.expansion_search
    return rows


def build_sweep(size_result: dict[str, Any], data: dict[str, Any], configs: list[HnswConfig]) -> list[dict[str, Any]]:
    """Other graph build settings over the same vectors: build time, and recall at their search settings."""
    truth, queries, store = size_result["_truth"], data["queries"], size_result["_index"].store
    rows = []
    for config in configs:
        started = time.perf_counter()
        other = ItemIndex.create(store, "hnsw", config, threads=THREADS, show_progress=False)
        row = {**{k: v for k, v in config.to_dict().items() if k != "scale"},
               "build_s": round(time.perf_counter() - started, 1), "query_ms": latency_ms(other, queries["llm"])}
        row.update({f"recall_{n}": round(recall_at_10(other.search(q, 10)[0], truth[n]), 4)
                    for n, q in queries.items()})
        rows.append(row)
    return rows


def exact_curve(work: Path, data: dict[str, Any], sizes: list[int]) -> list[dict[str, Any]]:
    """Exact single-query latency: in-memory float32 (small catalogues) and block-wise over the f16 file."""
    rows = []
    source = open_vectors(padded(work, data["items"], max(*sizes, len(data["items"]))))
    for size in sizes:
        store = VectorStore([source[:size]])
        cached = ItemIndex(store, "exact")
        blocked = ItemIndex(store, "exact")
        limit = index_module.EXACT_CACHE_BYTES
        index_module.EXACT_CACHE_BYTES = 1 << 40
        cached.search(data["queries"]["llm"][:1], 10)  # fills the float32 matrix
        in_memory = latency_ms(cached, data["queries"]["llm"], exact=True, count=50)
        index_module.EXACT_CACHE_BYTES = 0
        block_wise = latency_ms(blocked, data["queries"]["llm"], exact=True, count=20)
        index_module.EXACT_CACHE_BYTES = limit
        rows.append({"items": size, "float32_in_memory_ms": in_memory, "f16_blockwise_ms": block_wise,
                     "float32_mb": round(size * store.dim * 4 / 2**20, 1)})
    return rows


def embed_throughput(work: Path, titles_sample: list[str]) -> list[dict[str, Any]]:
    """Titles per second of the int8 embedder with 2 threads, by batch size (real titles, streamed)."""
    embedder = OnnxEmbedder.load(work / "embedder", num_threads=THREADS)
    rows = []
    for batch_size in (32, 64, 128):
        started = time.perf_counter()
        for _ in embedder.embed_stream(titles_sample, batch_size=batch_size, show_progress=False):
            pass
        rows.append({"batch_size": batch_size,
                     "titles_per_s": round(len(titles_sample) / (time.perf_counter() - started), 1)})
    return rows


# --- report ---


def machine() -> dict[str, Any]:
    cpu = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    mem = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
    return {"machine": platform.machine(), "cpu": cpu.group(1) if cpu else "unknown",
            "cores": len(__import__("os").sched_getaffinity(0)),
            "ram_gb": round(int(mem.group(1)) / 2**20, 1) if mem else None}


def write_report(out: dict[str, Any], stem: Path) -> None:
    write_json_atomic(stem.with_suffix(".json"), out)
    lines = ["# Approximate search at catalogue scale: recall against exact search, and the vector stages' costs",
             "", f"Command: `{out['command']}`  ", f"Machine: {out['machine']}", "",
             "| items | exact query p50 (ms) | HNSW query p50 / p95 (ms) | Recall@10 llm | Recall@10 last item "
             "| graph build (s) | graph MB | vectors MB | open + first search (s) | RSS after 1000 queries (MB) "
             "| +10k rows to graph (s) |", "|" + "---|" * 11]
    for r in out["sizes"]:
        lines.append(f"| {r['items']:,} | {r['exact_query_ms']['p50']} | {r['hnsw_query_ms']['p50']} / "
                     f"{r['hnsw_query_ms']['p95']} | {r['ann_recall_at_10']['llm']} | "
                     f"{r['ann_recall_at_10']['last_item']} | {r['hnsw_build_s']} | {r['graph_mb']} | "
                     f"{r['vectors_mb']} | {r['open_and_first_search_s']} | {r['rss_after_1000_queries_mb']['VmRSS']} "
                     f"| {r['extend_graph_10k_s']} |")
    for r in out["sizes"]:
        lines += ["", f"Search settings at {r['items']:,} items (graph built with the defaults):", "",
                  "| expansion_search | candidates | p50 (ms) | Recall@10 llm | Recall@10 last item |",
                  "|---|---|---|---|---|"]
        lines += [f"| {x['expansion_search']} | {x['candidates']} | {x['query_ms']['p50']} | {x['recall_llm']} | "
                  f"{x['recall_last_item']} |" for x in r["search_sweep"]]
    if out.get("build_sweep"):
        lines += ["", f"Graph build settings at {out['build_sweep']['items']:,} items (searched with their settings):",
                  "", "| dtype | connectivity | expansion_add | expansion_search | build (s) | p50 (ms) "
                  "| Recall@10 llm | Recall@10 last item |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {x['dtype']} | {x['connectivity']} | {x['expansion_add']} | {x['expansion_search']} | "
                  f"{x['build_s']} | {x['query_ms']['p50']} | {x['recall_llm']} | {x['recall_last_item']} |"
                  for x in out["build_sweep"]["rows"]]
    lines += ["", "Exact search, one query (what places the exact / HNSW threshold):", "",
              "| items | float32 in memory p50 (ms) | its MB | f16 block-wise p50 (ms) |", "|---|---|---|---|"]
    lines += [f"| {r['items']:,} | {r['float32_in_memory_ms']['p50']} | {r['float32_mb']} | "
              f"{r['f16_blockwise_ms']['p50']} |" for r in out["exact_curve"]]
    lines += ["", "Embedding throughput (int8 all-MiniLM-L6-v2, 2 threads, real titles):", "",
              "| batch size | titles/s |", "|---|---|"]
    lines += [f"| {r['batch_size']} | {r['titles_per_s']} |" for r in out["embed_throughput"]]
    lines += ["", out["notes"]]
    write_text_atomic(stem.with_suffix(".md"), "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="200000,1000000")
    parser.add_argument("--sweep-size", type=int, default=200_000)
    parser.add_argument("--exact-sizes", default="25000,50000,100000,200000")
    parser.add_argument("--users", type=int, default=300, help="validation users per category")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "benchmarks" / ".work" / "ann")
    parser.add_argument("--out-name", default="ann_recall")
    args = parser.parse_args()
    setup_logging()
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "embedder").is_dir():
        from gloss.export.embedder import export_embedder

        export_embedder(work / "embedder", int8=True)
    data = real_data(work, args.users)
    config = HnswConfig()
    sizes = [int(s) for s in args.sizes.split(",")]
    results, build_rows = [], None
    for size in sizes:
        logger.info("size %d", size)
        result = measure_size(work, data, size, config)
        result["search_sweep"] = search_sweep(result, data)
        if size == args.sweep_size:
            others = [replace(config, dtype="f16"), replace(config, expansion_add=2 * config.expansion_add),
                      replace(config, connectivity=2 * config.connectivity)]
            build_rows = {"items": size, "rows": build_sweep(result, data, others)}
        results.append({k: v for k, v in result.items() if not k.startswith("_")})
    with gzip.open(DATA / "amazon2014" / "beauty" / "items.jsonl.gz", "rt") as handle:
        sample = [render_item(json.loads(line)["title"]) for _, line in zip(range(4000), handle, strict=False)]
    out = {
        "command": "flock /tmp/gloss-heavy.lock python benchmarks/ann_recall.py " + " ".join(sys.argv[1:]),
        "machine": machine(), "real_items": data["num_titles"],
        "queries": {name: len(q) for name, q in data["queries"].items()},
        "real_titles_embed_s": round(data["embed_s"], 1), "hnsw_defaults": config.to_dict(),
        "hnsw_min_items": index_module.HNSW_MIN_ITEMS, "sizes": results, "build_sweep": build_rows,
        "exact_curve": exact_curve(work, data, [int(s) for s in args.exact_sizes.split(",")]),
        "embed_throughput": embed_throughput(work, sample),
        "notes": "Recall@10: share of exact search's top 10 (over the same stored f16 vectors) that the HNSW index "
                 "returns, averaged over queries; both rank by inner product. Latencies are one query at a time "
                 "on a warm page cache, in the benchmark process. Synthetic items pad the real ones (see the "
                 "script's docstring); the queries and the first 42,226 items are real.",
    }
    write_report(out, ROOT / "benchmarks" / "results" / args.out_name)


if __name__ == "__main__":
    main()

"""Compare the device's transformers beam search with llama.cpp's on the exported GGUF(s), user by user.

For the first N users of a queries file (`run_generate.py` output), each GGUF generates 5 beams with the
edge runtime (`LlamaCppGenerator`, context = the run's max_seq_length, so both paths cut histories alike).
Prints per GGUF the share of users whose best query is identical and the mean share of the 5 queries both
paths produced; the retrieval metrics of both paths come from `gloss-edge eval`. ``--out`` writes JSON.

Usage::

    python benchmarks/gpu/compare_queries.py QUERIES.jsonl.gz --catalog ITEMS.jsonl.gz --n-ctx 512 \
        --gguf model-f16.gguf --gguf model-q8_0.gguf --max-users 5 [--out report.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from gloss.edge.catalog import load_catalog
from gloss.edge.files import read_jsonl, write_json_atomic
from gloss.edge.generation.generate import GenerationConfig, LlamaCppGenerator
from gloss.edge.recommend import query_text


def query_overlap(got: list[str], want: list[str]) -> tuple[bool, float]:
    """Whether two query lists start with the same title, and the share of ``want``'s distinct titles in ``got``."""
    got, want = [query_text(q) for q in got], [query_text(q) for q in want]
    return got[:1] == want[:1], len(set(got) & set(want)) / max(len(set(want)), 1)


def compare(queries_path: Path, catalog_path: Path, gguf: Path, n_ctx: int, max_users: int) -> dict:
    """Agreement of one GGUF's llama.cpp beams with the queries file's beams on its first users."""
    catalog = load_catalog(catalog_path)
    rows = [r for _, r in zip(range(max_users), read_jsonl(queries_path), strict=False)]
    generator = LlamaCppGenerator.load(gguf, GenerationConfig(n_ctx=n_ctx))
    same_top, shared, examples = 0, 0.0, []
    start = time.perf_counter()
    for row in rows:
        got = [query_text(g.title) for g in generator.generate(catalog.titles_of(row["history"]))]
        want = [query_text(q) for q in row["queries"]]
        same, share = query_overlap(got, want)
        same_top += same
        shared += share
        examples.append({"user": row["user"], "hf": want, "llama_cpp": got})
    return {"gguf": str(gguf), "users": len(rows), "same_best_query": same_top / len(rows),
            "mean_shared_queries": shared / len(rows), "seconds": round(time.perf_counter() - start, 1),
            "examples": examples[:3]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("queries", type=Path)
    parser.add_argument("--catalog", type=Path, required=True)
    parser.add_argument("--gguf", type=Path, action="append", required=True)
    parser.add_argument("--n-ctx", type=int, default=1024)
    parser.add_argument("--max-users", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    ns = parser.parse_args()
    reports = [compare(ns.queries, ns.catalog, g, ns.n_ctx, ns.max_users) for g in ns.gguf]
    for r in reports:
        print(f"{Path(r['gguf']).name}: {r['users']} users, best query identical {r['same_best_query']:.2f}, "
              f"shared queries {r['mean_shared_queries']:.2f} of 5, {r['seconds']} s")
    if ns.out is not None:
        write_json_atomic(ns.out, {"queries": str(ns.queries), "n_ctx": ns.n_ctx, "reports": reports})


if __name__ == "__main__":
    main()

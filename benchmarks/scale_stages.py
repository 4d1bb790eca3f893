"""Stage costs for benchmarks/scale.py that a build's log does not show, timed through the library in a
process of their own (so the harness's memory stays out of every measurement). Prints one JSON object.

Usage:
    python benchmarks/scale_stages.py BUNDLE_DIR --titles ITEMS.jsonl.gz [--sample 10000]
        [--queries HISTORIES.json] [--index] [--copurchase SEQUENCES.jsonl.gz]

* ``embed_titles_per_s``: the bundle's ONNX embedder alone on the first ``--sample`` titles (``Title: <title>``,
  as the build embeds them), after one warm-up batch: the floor of a build's time.
* ``ann_recall_at_10`` (with ``--queries``): for the last item of each history, its title embedded as the
  last-item search embeds it; the share of exact top-10 items that the approximate search also returns.
* ``index_s`` (with ``--index``), ``copurchase_s`` (with ``--copurchase``): the index rebuilt from the bundle's
  vectors, the co-purchase statistics rebuilt from the sequences (only when the build's log does not time them).
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
import time
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from gloss.edge.bundle import ITEM_TEXT, load_bundle


def first_titles(items_path: Path, count: int) -> dict[str, str]:
    """``asin -> title`` of the first ``count`` rows of an items JSONL.gz."""
    with gzip.open(items_path, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in islice(handle, count)]
    return {row["asin"]: row["title"] for row in rows}


def embed_rate(bundle: Any, titles: list[str]) -> tuple[float, float]:
    """Titles per second of the bundle's embedder (one warm-up batch first), and per CPU second."""
    embedder = bundle.open_embedder()
    texts = [ITEM_TEXT.format(title=t) for t in titles]
    embedder.embed(texts[:64], show_progress=False)
    start, cpu = time.perf_counter(), time.process_time()
    embedder.embed(texts, show_progress=False)
    return len(texts) / (time.perf_counter() - start), len(texts) / (time.process_time() - cpu)


def ann_recall(bundle: Any, histories: list[list[str]], k: int = 10) -> float:
    """Mean share of the exact top-``k`` found by the approximate search, over last-item queries."""
    titles = dict(zip(bundle.catalog.asins, bundle.catalog.titles, strict=True))
    texts = [ITEM_TEXT.format(title=titles[h[-1]]) for h in histories if h and h[-1] in titles]
    queries = bundle.open_embedder().embed(texts, show_progress=False)
    index = bundle.open_index()
    exact, _ = index.search(queries, k, exact=True)
    approx, _ = index.search(queries, k, exact=False)
    return float(np.mean([len(set(a) & set(e)) / k for a, e in zip(approx.tolist(), exact.tolist(), strict=True)]))


def index_seconds(bundle: Any) -> float:
    """Seconds to build (not save) the bundle's index again from its stored vectors."""
    from gloss.edge.index import ItemIndex

    index = bundle.open_index()
    vectors = np.array(index.vectors(), dtype=np.float32)
    start = time.perf_counter()
    ItemIndex.build(vectors, show_progress=False, dtype=index.dtype)
    return time.perf_counter() - start


def copurchase_seconds(bundle: Any, sequences_path: Path) -> float:
    """Seconds to count the co-purchase statistics of ``sequences_path`` and save them (holdout 0)."""
    from gloss.export.copurchase import build_copurchase_file

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        build_copurchase_file(sequences_path, bundle.catalog, Path(tmp) / "copurchase.npz", holdout=0)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bundle_dir", type=Path)
    parser.add_argument("--titles", type=Path, required=True, help="The catalogue's items JSONL.gz.")
    parser.add_argument("--sample", type=int, default=10_000)
    parser.add_argument("--queries", type=Path, default=None, help="histories.json: measure ANN recall.")
    parser.add_argument("--index", action="store_true", help="Time an index build.")
    parser.add_argument("--copurchase", type=Path, default=None, help="Sequences: time the co-purchase stage.")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle_dir, verify=False)
    titles = list(first_titles(args.titles, args.sample).values())
    rate, cpu_rate = embed_rate(bundle, titles)
    out: dict[str, Any] = {"embed_sample": len(titles), "embed_titles_per_s": round(rate, 1),
                           "embed_titles_per_cpu_s": round(cpu_rate, 1)}
    if args.queries is not None:
        out["ann_recall_at_10"] = round(ann_recall(bundle, json.loads(args.queries.read_text())), 4)
    if args.index:
        try:
            out["index_s"] = round(index_seconds(bundle), 2)
        except (AttributeError, TypeError) as exc:  # an index API this helper does not know: say so, keep the rest
            out["index_s"], out["index_s_error"] = None, f"{type(exc).__name__}: {exc}"
    if args.copurchase is not None:
        out["copurchase_s"] = round(copurchase_seconds(bundle, args.copurchase), 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

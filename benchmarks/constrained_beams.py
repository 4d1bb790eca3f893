"""Catalogue-constrained vs free beams of a bundle's LLM: share of beams that are exact catalogue titles, and the
time of one `recommend` per user (generation + ranking).

Usage:
    python benchmarks/constrained_beams.py BUNDLE_DIR SEQUENCES_PATH [--users 20] [--threads 2]
        [--out-dir benchmarks/results]

Users: the first N validation users (the seeded validation sample of SEQUENCES_PATH). The quality of either mode
is measured by benchmarks/llm_fusion.py on 500+ users; this script checks the constraint and its cost.
Writes constrained_beams.json and constrained_beams.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from gloss.edge.bundle import load_bundle
from gloss.edge.files import write_json_atomic, write_text_atomic
from gloss.edge.generation.generate import GeneratedQuery, GenerationConfig
from gloss.edge.recommend import Recommender
from gloss.edge.splits import Split, load_sequences, make_examples, validation_users

logger = logging.getLogger("benchmarks.constrained_beams")
RESULTS = Path(__file__).parent / "results"


def measure(bundle: Any, histories: list[list[str]], constrained: bool, threads: int) -> dict[str, Any]:
    """Recommend for every history; record each call's beams and time."""
    recommender = Recommender.from_bundle(bundle, generation=GenerationConfig(num_threads=threads),
                                          constrained=constrained)
    generator = recommender.generator
    if generator is None:
        raise SystemExit(f"{bundle.dir}: the bundle has no generator")
    beams: list[list[GeneratedQuery]] = []
    generate = generator.generate

    def recording(history: Any) -> list[GeneratedQuery]:
        out = generate(history)
        beams.append(out)
        return out

    generator.generate = recording  # type: ignore[method-assign]
    ms = []
    for history in histories:
        start = time.perf_counter()
        recommender.recommend(history, k=10)
        ms.append((time.perf_counter() - start) * 1000)
    generator.close()
    titles = set(bundle.catalog.titles)
    flat = [beam for user in beams for beam in user]
    named = [b for b in flat if b.items and all(bundle.catalog.titles[i] == b.title for i in b.items)]
    return {
        "users": len(histories),
        "beams": len(flat),
        "exact_title_share": sum(b.title in titles for b in flat) / len(flat),
        "beams_naming_their_items": len(named),
        "recommend_ms_p50": round(statistics.median(ms), 1),
        "recommend_ms_max": round(max(ms), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle_dir", type=Path)
    parser.add_argument("sequences_path", type=Path)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    bundle = load_bundle(args.bundle_dir)
    sequences = load_sequences(args.sequences_path)
    held_out = validation_users([s.user for s in sequences])
    examples = list(make_examples(sequences, Split.validation, held_out))[: args.users]
    histories = [list(ex.history) for ex in examples]
    results: dict[str, Any] = {
        "command": f"python benchmarks/constrained_beams.py {args.bundle_dir} {args.sequences_path} "
                   f"--users {args.users} --threads {args.threads}",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU",
        "load_average_at_start": round(os.getloadavg()[0], 1),
        "bundle": bundle.name,
        "modes": {mode: measure(bundle, histories, mode == "constrained", args.threads)
                  for mode in ("constrained", "free")},
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out_dir / "constrained_beams.json", results)
    lines = [
        "# Constrained vs free beams: exact catalogue titles and time per user", "",
        f"Command: `{results['command']}`",
        f"Machine: {results['machine']} (1-min load average {results['load_average_at_start']} at the start).", "",
        "| mode | users | beams | exact catalogue titles | beams naming their items | recommend ms p50 | max |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, r in results["modes"].items():
        lines.append(f"| {mode} | {r['users']} | {r['beams']} | {r['exact_title_share']:.1%} | "
                     f"{r['beams_naming_their_items']} | {r['recommend_ms_p50']:.0f} | {r['recommend_ms_max']:.0f} |")
    write_text_atomic(args.out_dir / "constrained_beams.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

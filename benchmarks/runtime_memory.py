"""Two runtime memory settings of the edge, measured against their alternatives (issue 10):

1. llama.cpp micro-batch (``n_ubatch``) 512 / 256 / 128: the compute buffer llama.cpp reserves (from its own log)
   and the time of one prompt decode for the median and the longest of the users' prompts (the three contexts
   take turns, so the machine's drift falls on all alike);
2. ONNX Runtime's CPU memory arena on / off for the bundle's embedder: RSS growth after loading + 5 titles and
   after one 64-title batch, and the median time of embedding 5 titles (each variant in a fresh process).

Usage:
    python benchmarks/runtime_memory.py BUNDLE_DIR DATA_DIR [--num-users 200]
        [--out benchmarks/results/runtime_memory.json]

Writes the JSON and a Markdown table next to it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from gloss.edge.files import write_json_atomic, write_text_atomic

RESULTS = Path(__file__).parent / "results" / "runtime_memory.json"
UBATCHES = (512, 256, 128)
REPEATS = 9
TITLES = [f"Shellac Remover Wraps {n} Count" for n in (15, 50, 100, 150, 200)]


def rss_mb() -> float:
    return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def ubatch_rows(bundle_dir: Path, data_dir: Path, num_users: int) -> list[dict[str, Any]]:
    """Compute buffer and prompt decode time per n_ubatch (the generator's own context otherwise)."""
    from edge_speed import load_histories  # benchmarks/edge_speed.py

    from gloss.edge.bundle import load_bundle
    from gloss.edge.generation import generate

    gguf = load_bundle(bundle_dir).paths.generator
    histories = load_histories(data_dir, num_users)
    default_params = generate.LlamaCppGenerator._context_params
    gens, rows = [], []
    for ubatch in UBATCHES:
        def params(lib: Any, config: Any, ubatch: int = ubatch) -> Any:
            return replace_ubatch(default_params(lib, config), ubatch)

        generate.LlamaCppGenerator._context_params = staticmethod(params)  # type: ignore[method-assign]
        log = io.StringIO()
        try:
            with contextlib.redirect_stderr(log):  # llama-cpp-python prints llama.cpp's log to sys.stderr
                gens.append(generate.LlamaCppGenerator.load(
                    gguf, replace(generate.GenerationConfig(), num_threads=2), verbose=True))
        finally:
            generate.LlamaCppGenerator._context_params = staticmethod(default_params)  # type: ignore[method-assign]
        buffer = re.search(r"CPU compute buffer size =\s+([\d.]+) MiB", log.getvalue())
        rows.append({"n_ubatch": ubatch, "compute_buffer_mib": float(buffer.group(1)) if buffer else None})
    prompts = sorted((gens[0].prompt_tokens(h) for h in histories), key=len)
    for label, prompt in (("median", prompts[len(prompts) // 2]), ("longest", prompts[-1])):
        n, times = len(prompt), [[] for _ in gens]
        for _ in range(REPEATS):
            for gen, row_times in zip(gens, times, strict=True):
                gen._lib.llama_memory_clear(gen._memory, True)
                start = time.perf_counter()
                gen._decode(prompt, range(n), [0] * n, 1)
                row_times.append((time.perf_counter() - start) * 1000)
        for row, row_times in zip(rows, times, strict=True):
            row[f"{label}_prompt_tokens"], row[f"{label}_prompt_ms"] = n, statistics.median(row_times)
    for gen in gens:
        gen.close()
    return rows


def replace_ubatch(params: Any, ubatch: int) -> Any:
    params.n_ubatch = min(ubatch, params.n_batch)
    return params


def arena_child(embedder_dir: Path, arena: bool) -> dict[str, Any]:
    """One process: the embedder with or without ONNX Runtime's arena (patched into its SessionOptions)."""
    import onnxruntime as ort

    from gloss.edge.embed import OnnxEmbedder

    base = rss_mb()
    options_cls = ort.SessionOptions

    class Options(options_cls):  # type: ignore[misc, valid-type]
        def __setattr__(self, name: str, value: Any) -> None:
            super().__setattr__(name, arena if name == "enable_cpu_mem_arena" else value)

    ort.SessionOptions = Options
    embedder = OnnxEmbedder.load(embedder_dir)
    embedder.embed(TITLES)
    loaded = rss_mb() - base
    times = []
    for i in range(40):
        start = time.perf_counter()
        embedder.embed([f"{t} {i}" for t in TITLES])
        times.append((time.perf_counter() - start) * 1000)
    embedder.embed(["x " * 200] * 64)
    return {"arena": arena, "rss_after_load_mb": loaded, "rss_after_64_titles_mb": rss_mb() - base,
            "embed_5_titles_ms": statistics.median(times)}


def arena_rows(bundle_dir: Path) -> list[dict[str, Any]]:
    out = []
    for arena in (True, False):
        cmd = [sys.executable, __file__, "--arena-child", str(bundle_dir / "embedder"), str(int(arena))]
        out.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Runtime memory settings", "", f"Command: `{result['command']}`  ", f"Machine: {result['machine']}", "",
             "| n_ubatch | compute buffer MiB | median prompt (tokens) ms | longest prompt (tokens) ms |",
             "|---|---|---|---|"]
    for r in result["ubatch"]:
        lines.append(f"| {r['n_ubatch']} | {r['compute_buffer_mib']} | {r['median_prompt_ms']:.0f} "
                     f"({r['median_prompt_tokens']}) | {r['longest_prompt_ms']:.0f} ({r['longest_prompt_tokens']}) |")
    lines += ["", "| ONNX Runtime arena | RSS after load + 5 titles MB | after a 64-title batch MB | 5 titles ms |",
              "|---|---|---|---|"]
    for r in result["arena"]:
        lines.append(f"| {'on' if r['arena'] else 'off'} | {r['rss_after_load_mb']:.0f} | "
                     f"{r['rss_after_64_titles_mb']:.0f} | {r['embed_5_titles_ms']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--arena-child":
        print(json.dumps(arena_child(Path(sys.argv[2]), sys.argv[3] == "1")))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle_dir", type=Path)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--num-users", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = {
        "command": " ".join(["python benchmarks/runtime_memory.py", *sys.argv[1:]]),
        "machine": f"{platform.machine()}, 2 cores ({platform.processor() or 'unknown CPU'})",
        "ubatch": ubatch_rows(args.bundle_dir, args.data_dir, args.num_users),
        "arena": arena_rows(args.bundle_dir),
    }
    write_json_atomic(args.out, result)
    write_text_atomic(args.out.with_suffix(".md"), markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()

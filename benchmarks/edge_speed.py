"""Query generation speed on CPU: llama.cpp 5 beams vs one greedy decode vs transformers' beam search, with and
without the prompt prefix cache, and batched users vs one at a time. All rows: one run, same users, same weights.

Usage:
    python benchmarks/edge_speed.py BUNDLE_DIR_OR_GGUF DATA_DIR [--num-users 30] [--num-threads 2]
        [--batch-users 4] [--no-transformers] [--out benchmarks/results/edge_speed.json]

DATA_DIR holds items.jsonl.gz and sequences.jsonl.gz (e.g. /work/shared/data/amazon2014/beauty). Users: the
test-split histories of the first users with >= 3 history items. Every path uses the edge's default stopping rule
(``early_stopping=True``, catalogue length cap); transformers gets the same rule and stop tokens. Each user runs
every row back to back (rows interleaved), so the machine's noise falls on all rows alike. Rows:

- ``beams``: one user at a time, prefix cache on (distinct users: the prompt header is reused);
- ``beams_no_cache``: the same, prefix cache off;
- ``beams_returning``: the user's history without its last item was searched just before (cache on);
- ``beams_old_rule``: today's previous rule (``early_stopping=False``), cache off;
- ``greedy``: one greedy decode of the same prompt (cache off);
- ``transformers``: ``generate(num_beams=5)`` on CPU, the GGUF's weights dequantized to fp32;
- ``batched`` / ``sequential``: users/s of ``beam_search_batch`` over all users vs the ``beams`` row.

Writes the JSON and a Markdown table next to it.
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import llama_cpp

from gloss.edge.catalog import load_catalog
from gloss.edge.files import write_json_atomic
from gloss.edge.generation.generate import GenerationConfig, LlamaCppGenerator, batched_config
from gloss.edge.generation.gguf_header import read_gguf_metadata
from gloss.edge.generation.kvcache import PrefixCache
from gloss.edge.splits import Split, load_sequences, make_examples

logger = logging.getLogger("benchmarks.edge_speed")
RESULTS = Path(__file__).parent / "results" / "edge_speed.json"


def load_histories(data_dir: Path, num_users: int) -> list[list[str]]:
    """Test-split histories (titles, oldest first) of the first users with >= 3 history items."""
    catalog = load_catalog(data_dir / "items.jsonl.gz")
    examples = make_examples(load_sequences(data_dir / "sequences.jsonl.gz"), Split.test, frozenset())
    return [catalog.titles_of(ex.history) for ex in examples if len(ex.history) >= 3][:num_users]


def timed(fn: Callable[[], Any]) -> float:
    """Milliseconds of one call."""
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def p95(values: Sequence[float]) -> float:
    """95th percentile (inclusive method)."""
    return statistics.quantiles(values, n=20, method="inclusive")[-1] if len(values) > 1 else values[0]


def transformers_beams(gguf_path: Path, gen: LlamaCppGenerator) -> Callable[[list[int]], Any]:
    """transformers (CPU, fp32 dequantized weights) beam search of a prompt: same stop tokens and stopping rule."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(gen.config.num_threads or torch.get_num_threads())
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    model.eval()
    cfg, settings = gen.config, gen.settings

    def search(prompt: list[int]) -> Any:
        ids = torch.tensor([prompt])
        with torch.no_grad():
            return model.generate(
                ids, attention_mask=torch.ones_like(ids), num_beams=cfg.num_beams,
                num_return_sequences=cfg.num_return_sequences, max_new_tokens=settings.max_new_tokens,
                do_sample=False, early_stopping=settings.early_stopping, length_penalty=cfg.length_penalty,
                eos_token_id=sorted(gen.stop_token_ids), pad_token_id=model.generation_config.pad_token_id,
            )

    return search


def bookkeeping_ms(gen: LlamaCppGenerator, repeats: int = 50) -> dict[str, float]:
    """Python cost of one 5-beam step on random logits of the model's vocabulary: the current bookkeeping
    (float32 log-softmax, per-beam argpartition) vs the previous one (float64 copies, one full-vocabulary
    argpartition), candidate selection only for the previous one."""
    import numpy as np

    from gloss.edge.generation.beam import Beams, beam_step, log_softmax

    rng = np.random.default_rng(0)
    beams_n = gen.config.num_beams
    logits = (3 * rng.standard_normal((beams_n, gen.n_vocab))).astype(np.float32)
    beams = Beams(tuple((i,) for i in range(beams_n)), tuple(-float(i) for i in range(beams_n)))
    k = max(2, 1 + len(gen.stop_token_ids)) * beams_n

    def previous() -> None:
        x = logits.astype(np.float64)
        x = x - x.max(axis=-1, keepdims=True)
        total = np.asarray(beams.scores)[:, None] + (x - np.log(np.exp(x).sum(axis=-1, keepdims=True)))
        flat = total.ravel()
        top = np.argpartition(-flat, k - 1)[:k]
        top[np.lexsort((top, -flat[top]))]

    out = {}
    for name, fn in (("current", lambda: beam_step(beams, log_softmax(logits), gen.settings)), ("previous", previous)):
        fn()
        out[name] = statistics.median(timed(fn) for _ in range(repeats))
    return out


def decode_ms_by_batch(gen: LlamaCppGenerator, prompt: list[int], sizes: Sequence[int] = (1, 2, 5, 10, 20),
                       repeats: int = 20) -> dict[int, float]:
    """Median ms of one ``llama_decode`` of n tokens after a prompt, each token in its own sequence with logits
    (a beam step of n beams): how the CPU kernels scale with the batch a step hands them."""
    lib, memory, n = gen._lib, gen._memory, len(prompt)
    out = {}
    for size in sizes:
        lib.llama_memory_clear(memory, True)
        gen._decode(prompt, range(n), [0] * n, 1)
        for seq in range(1, size):
            lib.llama_memory_seq_cp(memory, 0, seq, -1, -1)

        def step(size: int = size) -> None:
            gen._decode([prompt[-1]] * size, [n] * size, list(range(size)), [True] * size)
            for seq in range(size):
                lib.llama_memory_seq_rm(memory, seq, n, -1)

        step()
        out[size] = statistics.median(timed(step) for _ in range(repeats))
    return out


def resolve(path: Path) -> tuple[Path, list[str] | None]:
    """The GGUF of a bundle (and its catalogue titles for the length cap) or a GGUF path."""
    if path.is_dir():
        from gloss.edge.bundle import load_bundle

        bundle = load_bundle(path)
        return bundle.paths.generator, list(bundle.catalog.titles)
    return path, None


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure every row and return the result record."""
    gguf_path, titles = resolve(args.bundle_or_gguf)
    histories = load_histories(args.data_dir, args.num_users)
    titles = titles or list(load_catalog(args.data_dir / "items.jsonl.gz").titles)
    n, rows, steps = len(histories), {}, {}
    config = GenerationConfig(num_threads=args.num_threads, max_new_tokens=args.max_new_tokens)
    with LlamaCppGenerator.load(gguf_path, config) as gen:
        cap, kv_type = gen.cap_new_tokens(titles), gen.config.kv_type
        prompts = [gen.prompt_tokens(h) for h in histories]
        earlier = [gen.prompt_tokens(h[:-1]) for h in histories]
        early, old_rule = gen.settings, replace(gen.settings, early_stopping=False)
        shared, returning, off = gen.prefix_cache, PrefixCache(gen.prefix_cache.max_bytes), PrefixCache(0)
        hf_search = None if args.no_transformers else transformers_beams(gguf_path, gen)

        def beams(i: int, cache: PrefixCache[Any], settings: Any = early) -> None:
            gen.prefix_cache, gen.settings = cache, settings
            gen.beam_search(prompts[i])

        paths: dict[str, Callable[[int], Any]] = {
            "beams": lambda i: beams(i, shared),  # distinct users one after another: the header is reused
            "beams_returning": lambda i: beams(i, returning),  # after warm_prefix of the earlier history
            "beams_no_cache": lambda i: beams(i, off),
            "greedy": lambda i: gen.generate_greedy(histories[i]),  # no prefix cache
            "beams_old_rule": lambda i: beams(i, off, old_rule),
        }
        if hf_search is not None:
            paths["transformers"] = lambda i: hf_search(prompts[i])
        beams(0, off)  # warm-up
        # Interleaved: each user runs every path back to back, so machine noise hits all rows alike.
        for i in range(n):
            for name, path in paths.items():
                if name == "beams_returning":  # the user's previous visit left its prompt in the cache (untimed)
                    gen.prefix_cache = returning
                    gen.warm_prefix(earlier[i])
                rows.setdefault(name, []).append(timed(lambda path=path, i=i: path(i)))
                if name != "transformers":
                    steps.setdefault(name, []).append(gen.stats.num_steps)
        cache_hits = (shared.hits, shared.misses, shared.reused_tokens)
        gen.prefix_cache, gen.settings = shared, early
        bookkeeping = bookkeeping_ms(gen)
    with LlamaCppGenerator.load(gguf_path, batched_config(args.batch_users, config)) as batch_gen:
        batch_gen.cap_new_tokens(titles)
        batch_gen.beam_search(prompts[0])  # warm-up
        batch_gen.prefix_cache.clear()
        batched_ms = timed(lambda: batch_gen.beam_search_batch(prompts))
        by_batch = decode_ms_by_batch(batch_gen, prompts[0])  # its context holds 2 * 5 * batch-users sequences
    result = record(args, rows, steps, prompts, cap, batched_ms, cache_hits)
    result["bookkeeping_ms_per_step"] = bookkeeping
    result["decode_ms_by_batch"] = by_batch
    result["generator"] = {
        "gguf": str(gguf_path), "gguf_mb": gguf_path.stat().st_size / 2**20,
        "file_type": read_gguf_metadata(gguf_path).get("general.file_type"), "kv_type": kv_type,
        "llama_cpp": llama_cpp.__version__,
        "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode().strip(),
    }  # fmt: skip
    return result


def record(
    args: argparse.Namespace, rows: dict[str, list[float]], steps: dict[str, list[int]], prompts: list[list[int]],
    cap: int, batched_ms: float, cache_hits: tuple[int, int, int],
) -> dict[str, Any]:
    """The JSON record: per-row p50/p95 keys, ratios and the goals."""
    n = len(prompts)
    result: dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cores": _cores()},
        "num_users": n,
        "num_threads": args.num_threads,
        "batch_users": args.batch_users,
        "prompt_tokens_p50": statistics.median(len(p) for p in prompts),
        "length_cap": cap,
        "max_new_tokens": args.max_new_tokens,
        "prefix_cache_hits_misses_reused_tokens": list(cache_hits),
    }
    for name, values in rows.items():
        result[f"{name}_p50_ms"] = statistics.median(values)
        result[f"{name}_p95_ms"] = p95(values)
    for name, values in steps.items():
        result[f"{name}_steps_p50"] = statistics.median(values)
    result["sequential_users_per_s"] = n / (sum(rows["beams"]) / 1000)
    result["batched_users_per_s"] = n / (batched_ms / 1000)
    result["beams_vs_greedy"] = result["beams_p50_ms"] / result["greedy_p50_ms"]
    # Like for like: greedy decoding does not use the prefix cache, so the goal compares it with cache-off beams.
    result["beams_no_cache_vs_greedy"] = result["beams_no_cache_p50_ms"] / result["greedy_p50_ms"]
    result["batched_vs_sequential"] = result["batched_users_per_s"] / result["sequential_users_per_s"]
    goals = {
        "beams_le_1.3x_greedy": result["beams_no_cache_vs_greedy"] <= 1.3,
        "beams_p50_lt_1s": result["beams_p50_ms"] < 1000,
        "batched_ge_2x_sequential": result["batched_vs_sequential"] >= 2,
    }
    if "transformers" in rows:
        result["transformers_vs_beams"] = result["transformers_p50_ms"] / result["beams_p50_ms"]
        goals["ge_5x_faster_than_transformers"] = result["transformers_vs_beams"] >= 5
    result["goals_met"] = goals
    return result


def _cores() -> int:
    import os

    return os.cpu_count() or 0


def markdown(result: dict[str, Any]) -> str:
    """The record as a Markdown table."""
    labels = {
        "beams": "llama.cpp 5 beams, prefix cache on (header reused)",
        "beams_no_cache": "llama.cpp 5 beams, prefix cache off",
        "beams_returning": "llama.cpp 5 beams, returning user (earlier history cached)",
        "beams_old_rule": "llama.cpp 5 beams, previous rule (early_stopping=False), cache off",
        "greedy": "llama.cpp one greedy decode",
        "transformers": "transformers generate(num_beams=5), CPU fp32, same rule",
    }
    lines = [
        "# Edge generation speed",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']['platform']}, {result['machine']['cores']} cores, {result['num_threads']} "
        f"threads. Users: {result['num_users']} Beauty test users (prompt tokens p50 "
        f"{result['prompt_tokens_p50']:.0f}); stopping: early_stopping=True, cap {result['length_cap']} new tokens.",
        "",
        "| path | p50 ms | p95 ms | steps p50 |",
        "|---|---|---|---|",
    ]
    for name, label in labels.items():
        if f"{name}_p50_ms" in result:
            steps = result.get(f"{name}_steps_p50", "")
            lines.append(f"| {label} | {result[f'{name}_p50_ms']:.0f} | {result[f'{name}_p95_ms']:.0f} | {steps} |")
    lines += [
        "",
        f"Throughput: batched ({result['batch_users']} users in flight) {result['batched_users_per_s']:.2f} users/s "
        f"vs one at a time {result['sequential_users_per_s']:.2f} users/s ({result['batched_vs_sequential']:.2f}x).  ",
        f"Beam bookkeeping per step (Python, 5 beams): {result['bookkeeping_ms_per_step']['current']:.1f} ms now vs "
        f"{result['bookkeeping_ms_per_step']['previous']:.1f} ms for the previous float64 selection alone.  ",
        f"5 beams / greedy: {result['beams_no_cache_vs_greedy']:.2f}x with the prefix cache off for both (the goal's "
        f"ratio), {result['beams_vs_greedy']:.2f}x with it on for the beams."
        + (f" transformers / 5 beams: {result['transformers_vs_beams']:.2f}x." if "transformers_vs_beams" in result
           else ""),
        "",
        "One llama_decode of n tokens (n beams, one sequence and logits each) after the first user's prompt, ms: "
        + ", ".join(f"n={n} {ms:.1f}" for n, ms in result["decode_ms_by_batch"].items()) + ".",
        "",
        "Goals: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in result["goals_met"].items()) + ".",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle_or_gguf", type=Path, help="A bundle folder or a GGUF file.")
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--num-users", type=int, default=30)
    parser.add_argument("--max-new-tokens", type=int, default=50)
    parser.add_argument("--num-threads", type=int, default=2)
    parser.add_argument("--batch-users", type=int, default=4)
    parser.add_argument("--no-transformers", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = run(args)
    write_json_atomic(args.out, result)
    args.out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    logger.info("wrote %s", args.out)
    for key in ("beams_p50_ms", "greedy_p50_ms", "transformers_p50_ms", "batched_users_per_s",
                "sequential_users_per_s"):
        if key in result:
            logger.info("%s %.2f", key, result[key])


if __name__ == "__main__":
    main()

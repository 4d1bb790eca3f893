"""Query generation speed on CPU: llama.cpp 5-beam search vs one greedy decode vs transformers' beam search.

Usage:
    python benchmarks/edge_speed.py GGUF_PATH DATA_DIR [--num-prompts 10] [--max-new-tokens 50]
        [--no-transformers]

DATA_DIR holds items.jsonl.gz and sequences.jsonl.gz (e.g. /work/shared/data/amazon2014/beauty). Prompts are
the test-split histories of the first users with at least 4 items. Writes benchmarks/results/edge_speed.json.
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gloss.edge.catalog import load_catalog
from gloss.edge.files import write_json_atomic
from gloss.edge.generate import GenerationConfig, LlamaCppGenerator
from gloss.edge.splits import Split, load_sequences, make_examples

logger = logging.getLogger("benchmarks.edge_speed")
RESULTS = Path(__file__).parent / "results" / "edge_speed.json"


def load_histories(data_dir: Path, num_prompts: int) -> list[list[str]]:
    """Test-split histories (titles, oldest first) of the first users with >= 4 items."""
    catalog = load_catalog(data_dir / "items.jsonl.gz")
    examples = make_examples(load_sequences(data_dir / "sequences.jsonl.gz"), Split.test, frozenset())
    return [catalog.titles_of(ex.history) for ex in examples if len(ex.history) >= 3][:num_prompts]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Milliseconds of one call and its result."""
    start = time.perf_counter()
    result = fn()
    return (time.perf_counter() - start) * 1000, result


def summary(values: list[float]) -> dict[str, float]:
    """p50 / p95 / mean / min / max."""
    return {
        "p50": statistics.median(values),
        "p95": statistics.quantiles(values, n=20, method="inclusive")[-1] if len(values) > 1 else values[0],
        "mean": statistics.fmean(values),
        "min": min(values),
        "max": max(values),
    }


def transformers_beam_ms(gguf_path: Path, prompts: list[list[int]], gen: LlamaCppGenerator) -> list[float]:
    """transformers (CPU, fp32 dequantized weights) beam search on the same prompt tokens and stop tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    model.eval()
    cfg, out = gen.config, []
    for prompt in prompts:
        ids = torch.tensor([prompt])
        with torch.no_grad():
            ms, _ = timed(
                lambda ids=ids: model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    num_beams=cfg.num_beams,
                    num_return_sequences=cfg.num_return_sequences,
                    max_new_tokens=cfg.max_new_tokens,
                    do_sample=False,
                    early_stopping=False,
                    length_penalty=cfg.length_penalty,
                    eos_token_id=sorted(gen.stop_token_ids),
                    pad_token_id=model.generation_config.pad_token_id,
                )
            )
        out.append(ms)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure and return the result record."""
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, num_threads=args.num_threads)
    histories = load_histories(args.data_dir, args.num_prompts)
    with LlamaCppGenerator.load(args.gguf_path, config, add_bos=args.add_bos) as gen:
        prompts = [gen.prompt_tokens(h) for h in histories]
        gen.beam_search(prompts[0])  # warm-up
        beam_ms, beam_steps, greedy_ms, greedy_tokens = [], [], [], []
        for prompt in prompts:
            ms, _ = timed(lambda p=prompt: gen.beam_search(p))
            beam_ms.append(ms)
            beam_steps.append(gen.stats.num_steps)
        for history in histories:
            ms, _ = timed(lambda h=history: gen.generate_greedy(h))
            greedy_ms.append(ms)
            greedy_tokens.append(gen.stats.num_steps)
        hf_ms = [] if args.no_transformers else transformers_beam_ms(args.gguf_path, prompts, gen)
    result: dict[str, Any] = {
        "gguf": args.gguf_path.name,
        "data_dir": str(args.data_dir),
        "num_prompts": len(prompts),
        "prompt_tokens": summary([float(len(p)) for p in prompts]),
        "config": {
            "num_beams": config.num_beams,
            "max_new_tokens": config.max_new_tokens,
            "num_threads": config.num_threads,
        },
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "llama_cpp_beam_ms": summary(beam_ms),
        "llama_cpp_beam_steps": summary([float(s) for s in beam_steps]),
        "llama_cpp_greedy_ms": summary(greedy_ms),
        "llama_cpp_greedy_tokens": summary([float(t) for t in greedy_tokens]),
    }
    if hf_ms:
        result["transformers_beam_ms"] = summary(hf_ms)
        result["speedup_p50"] = result["transformers_beam_ms"]["p50"] / result["llama_cpp_beam_ms"]["p50"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("gguf_path", type=Path)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--num-prompts", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=50)
    parser.add_argument("--num-threads", type=int, default=None)
    parser.add_argument("--add-bos", action=argparse.BooleanOptionalAction, default=None,
                        help="Force BOS on/off (default: the GGUF's own rule, as the edge runtime does).")
    parser.add_argument("--no-transformers", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = run(args)
    write_json_atomic(args.out, result)
    logger.info("wrote %s", args.out)
    for key in ("llama_cpp_beam_ms", "llama_cpp_greedy_ms", "transformers_beam_ms"):
        if key in result:
            logger.info("%s p50 %.0f", key, result[key]["p50"])


if __name__ == "__main__":
    main()

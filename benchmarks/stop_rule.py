"""Beam stopping rule on validation: today's rule (early_stopping=False) vs stopping at num_beams finished titles.

Usage:
    python benchmarks/stop_rule.py BUNDLE_DIR SEQUENCES_PATH [--num-users 100] [--num-threads 2]

One batched 5-beam search per user under today's rule (the edge's batched search, the catalogue length cap
applied) gives both rules' queries: the two rules make the same steps until ``num_beams`` titles are finished,
where early stopping ends (tests/edge/test_beam_stopping.py checks it), so the finished titles at that step
are the early-stopping result. Both are saved as queries files and scored with the paper's rule
(`gloss-edge eval --source queries` reads the same files). Reports Recall/NDCG, the paired difference of
Recall@5 per user with its standard error, query agreement, beam steps per user and generation time.
Writes benchmarks/results/stop_rule.{json,md}.
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from gloss.edge.bundle import load_bundle
from gloss.edge.evaluate import EvalCase, evaluate
from gloss.edge.files import read_jsonl, write_json_atomic, write_jsonl_atomic
from gloss.edge.generation.beam import Beams
from gloss.edge.generation.generate import GenerationConfig, LlamaCppGenerator, batched_config
from gloss.edge.recommend import RetrievalConfig, query_text
from gloss.edge.splits import Split, load_sequences, make_examples, validation_users

logger = logging.getLogger("benchmarks.stop_rule")
RESULTS = Path(__file__).parent / "results"
RULES = {"early_stopping_false": False, "early_stopping_true": True}


def generate(bundle: Any, examples: list[Any], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Queries of every example under both rules, with steps and the (shared) generation time."""
    base = GenerationConfig(early_stopping=False, num_threads=args.num_threads)
    early: dict[int, tuple[list[tuple[list[int], float]], int]] = {}
    final_steps: dict[int, int] = {}

    def observe(slot: int, beams: Beams, steps: int) -> None:
        """Keep the finished titles at the step where early stopping would end the search."""
        if beams.done:
            final_steps[slot] = steps
        full = len(beams.finished) >= base.num_beams or beams.done
        if full and slot not in early:
            early[slot] = ([(list(seq), score) for score, seq in beams.finished[: base.num_return_sequences]], steps)

    with LlamaCppGenerator.load(bundle.paths.generator, batched_config(args.batch_users, base)) as gen:
        cap = gen.cap_new_tokens(bundle.catalog.titles)
        prompts = [gen.prompt_tokens(bundle.catalog.titles_of(ex.history)) for ex in examples]
        start = time.perf_counter()
        results = gen.beam_search_batch(prompts, observe=observe)
        seconds = time.perf_counter() - start
        slow = {"outputs": [gen._queries(r) for r in results], "steps": [final_steps[i] for i in range(len(prompts))]}
        fast = {"outputs": [gen._queries(early[i][0]) for i in range(len(prompts))],
                "steps": [early[i][1] for i in range(len(prompts))]}
    for row in (slow, fast):
        row.update(seconds=seconds, cap=cap)
    return {"early_stopping_false": slow, "early_stopping_true": fast}


def per_user_hits(details_path: Path, k: int) -> dict[str, int]:
    """1 if the target is in the top k, per user."""
    return {row["user"]: int(row["rank"] is not None and row["rank"] <= k) for row in read_jsonl(details_path)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Generate, save and score both rules; return the record."""
    bundle = load_bundle(args.bundle_dir)
    sequences = load_sequences(args.sequences_path)
    held_out = validation_users([s.user for s in sequences])
    examples = list(make_examples(sequences, Split.validation, held_out))[: args.num_users]
    embedder, index = bundle.open_embedder(), bundle.open_index()
    retrieval = RetrievalConfig(k=args.k)
    rows: dict[str, Any] = {}
    hits: dict[str, dict[str, int]] = {}
    queries: dict[str, list[tuple[str, ...]]] = {}
    generated = generate(bundle, examples, args)
    for name, rule in RULES.items():
        got = generated[name]
        cases = [EvalCase(ex.user, ex.history, ex.target, tuple(query_text(g.title) for g in out))
                 for ex, out in zip(examples, got["outputs"], strict=True)]
        queries_path = args.work_dir / f"stop_rule_{name}.jsonl"
        details_path = args.work_dir / f"stop_rule_{name}_details.jsonl"
        write_jsonl_atomic(queries_path, [{"user": c.user, "history": list(c.history), "target": c.target,
                                           "queries": list(c.queries)} for c in cases])
        report = evaluate(cases, bundle.catalog, embedder, index, retrieval, name, details_path=details_path)
        hits[name] = per_user_hits(details_path, 5)
        queries[name] = [c.queries for c in cases]
        rows[name] = {
            "early_stopping": rule,
            "metrics": report.metrics["all"],
            "generate_seconds_both_rules": got["seconds"],
            "steps_per_user_mean": statistics.fmean(got["steps"]),
            "steps_per_user_p50": statistics.median(got["steps"]),
            "steps_at_cap": sum(s >= got["cap"] for s in got["steps"]),
            "length_cap": got["cap"],
            "queries_path": str(queries_path),
        }
        logger.info("%s: %s", name, rows[name])
    old, new = (hits[name] for name in RULES)
    diffs = [new[u] - old[u] for u in old]
    old_q, new_q = (queries[name] for name in RULES)
    return {
        "command": " ".join(sys.argv),
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "bundle": str(args.bundle_dir),
        "split": "validation",
        "num_users": len(examples),
        "rules": rows,
        "recall5_diff_true_minus_false": statistics.fmean(diffs),
        "recall5_diff_stderr": statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else 0.0,
        "users_with_different_recall5": sum(d != 0 for d in diffs),
        "same_queries_fraction": statistics.fmean(a == b for a, b in zip(old_q, new_q, strict=True)),
        "same_top_query_fraction": statistics.fmean(a[:1] == b[:1] for a, b in zip(old_q, new_q, strict=True)),
    }


def markdown(result: dict[str, Any]) -> str:
    """The result as a Markdown table."""
    lines = [
        "# Beam stopping rule on Beauty validation",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']['platform']} (2-core x86_64 VM, no GPU, shared with other jobs: times are "
        "indicative, beam steps are exact). Users: the first "
        f"{result['num_users']} validation users; 5 beams; queries scored with the paper's rule.",
        "",
        "| rule | Recall@5 | NDCG@5 | Recall@10 | NDCG@10 | beam steps/user mean (p50) | searches at the cap "
        "|",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in result["rules"].items():
        m = row["metrics"]
        lines.append(
            f"| {name} | {m.get('recall@5', float('nan')):.4f} | {m.get('ndcg@5', float('nan')):.4f} | "
            f"{m.get('recall@10', float('nan')):.4f} | {m.get('ndcg@10', float('nan')):.4f} | "
            f"{row['steps_per_user_mean']:.1f} ({row['steps_per_user_p50']:.0f}) | {row['steps_at_cap']} |"
        )
    lines += [
        "",
        f"Recall@5 difference (true - false), paired per user: {result['recall5_diff_true_minus_false']:+.4f} "
        f"± {result['recall5_diff_stderr']:.4f} (standard error); users whose hit changed: "
        f"{result['users_with_different_recall5']}. Same 5 queries: {result['same_queries_fraction']:.0%}; "
        f"same top query: {result['same_top_query_fraction']:.0%}. Length cap from the catalogue: "
        f"{next(iter(result['rules'].values()))['length_cap']} new tokens. Time per user follows the beam steps "
        "(each step is one llama_decode of the running beams); benchmarks/edge_speed.py times both rules.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle_dir", type=Path)
    parser.add_argument("sequences_path", type=Path)
    parser.add_argument("--num-users", type=int, default=100)
    parser.add_argument("--num-threads", type=int, default=2)
    parser.add_argument("--batch-users", type=int, default=4)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--work-dir", type=Path, default=Path("."), help="Where the saved queries files go.")
    parser.add_argument("--out", type=Path, default=RESULTS / "stop_rule.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    result = run(args)
    write_json_atomic(args.out, result)
    args.out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()

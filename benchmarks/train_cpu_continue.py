"""Continue the shipped Beauty adapter on this CPU for a bounded time; score it before and after (issue 15, part 3).

Stages (each one command; the heavy ones under ``flock /tmp/gloss-heavy.lock``, training niced instead):

  dtype     fp32 LoRA vs bf16 (bf16 weights + autocast, what ``TrainConfig.bf16`` gives) on this CPU: the same
            seeded batches of the chosen objective's texts, steps alternating between the two models after one
            warm-up step each; writes WORK/dtype.json.
  fit       ``gloss.train.loop.train`` from the shipped adapter (``init_adapter``), LoRA on the dense objective,
            the faster dtype, ``max_minutes`` time box (load + training + its evaluation); WORK/run.
  eval      for one adapter (a shipped name or a run folder): a bundle built by ``gloss-export bundle --adapter``
            (merge -> GGUF -> Q8_0, the default embedder and index, co-purchase statistics without the validation
            items), 5 free beams per user through the edge llama.cpp path (``benchmarks/llm_fusion.py generate``)
            for its 500 seeded validation users, scored with llm_fusion's retriever and the paper's rule, seen
            items removed (and kept); plus the target's token-mean loss on the first ``--loss-users`` of them.
  report    WORK/*.json -> benchmarks/results/train_cpu_continue.{json,md}.

Usage::

    flock /tmp/gloss-heavy.lock python benchmarks/train_cpu_continue.py dtype
    nice -n 19 python benchmarks/train_cpu_continue.py fit --minutes 60 &
    flock /tmp/gloss-heavy.lock python benchmarks/train_cpu_continue.py eval --adapter smollm2-135m-beauty \
        --label before
    flock /tmp/gloss-heavy.lock python benchmarks/train_cpu_continue.py eval --adapter WORK/run --label after
    python benchmarks/train_cpu_continue.py report
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from llm_fusion import DATA, Setup, paper_ranks, read_beams, sample_examples  # benchmarks/llm_fusion.py
from train_objectives import load_lora_model, machine, take_batch, train_step, training_texts

from gloss.edge.files import write_json_atomic, write_text_atomic
from gloss.edge.logs import setup_logging
from gloss.edge.metrics import POWER_MIN
from gloss.edge.splits import Split

logger = logging.getLogger("benchmarks.train_cpu_continue")
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BEAUTY = DATA / "amazon2014" / "beauty"
SHIPPED = "smollm2-135m-beauty"


def command() -> str:
    """This invocation, for the record."""
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


# --- dtype ---


def measure_dtype(ns: argparse.Namespace) -> None:
    """Tokens/s of fp32 and bf16 LoRA training steps on the same batches, alternating."""
    import torch

    from gloss.train.packing import PackingCollator

    models = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        torch.manual_seed(0)
        models[name] = load_lora_model(ns.data_dir, ns.work_dir / f"dtype-{name}", bf16, SHIPPED, ns.max_seq_length)
    _, tokenizer, policy, _ = models["fp32"]
    texts = training_texts(ns.data_dir, ns.objective, tokenizer, policy, ns.max_seq_length, 200, 0)
    collate = PackingCollator(policy.pad_token_id, ns.max_seq_length)
    optimizers = {n: torch.optim.AdamW([p for p in m[0].parameters() if p.requires_grad], lr=1e-5)
                  for n, m in models.items()}
    rng = random.Random(0)
    timed: dict[str, list[tuple[float, int]]] = {n: [] for n in models}
    for step in range(ns.steps + 1):
        batch = take_batch(texts, rng, ns.step_tokens)
        for name, (model, *_) in models.items():
            seconds = train_step(model, optimizers[name], collate, batch, name == "bf16")
            tokens = sum(len(t["input_ids"]) for t in batch)
            logger.info("step %d %s: %d tokens in %.1f s", step, name, tokens, seconds)
            if step:
                timed[name].append((seconds, tokens))
    out = {name: {"tokens_per_s": round(sum(t for _, t in rows) / sum(s for s, _ in rows), 2),
                  "steps": len(rows), "seconds": round(sum(s for s, _ in rows), 1)} for name, rows in timed.items()}
    out["faster"] = max(("fp32", "bf16"), key=lambda n: out[n]["tokens_per_s"])
    out.update(command=command(), objective=ns.objective, step_tokens=ns.step_tokens)
    write_json_atomic(ns.work_dir / "dtype.json", out)
    print(json.dumps(out, indent=2))


# --- fit ---


def fit(ns: argparse.Namespace) -> None:
    """Continue the shipped adapter with ``gloss.train`` for at most ``ns.minutes`` (the whole call)."""
    from gloss.train.config import TrainConfig
    from gloss.train.loop import train

    dtype = json.loads((ns.work_dir / "dtype.json").read_text())
    config = TrainConfig(
        data_dir=ns.data_dir, out_dir=ns.work_dir / "run", init_adapter=SHIPPED, quant="none",
        bf16=dtype["faster"] == "bf16", objective=ns.objective, max_seq_length=ns.max_seq_length,
        learning_rate=ns.learning_rate, per_device_batch_size=ns.batch_size, grad_accum=ns.grad_accum,
        warmup_steps=ns.warmup_steps, epochs=1, max_minutes=ns.minutes, eval_max_users=ns.eval_users,
        logging_steps=5, resume=ns.resume,
    )
    clock = StepClock()
    started = time.time()
    train(config, callbacks=[clock.callback()])
    write_json_atomic(ns.work_dir / "fit.json", {
        "command": command(), "dtype": dtype["faster"], "wall_minutes": round((time.time() - started) / 60, 2),
        "train_seconds": round(clock.seconds, 1), "tokens_seen": clock.tokens,
        "tokens_per_s": round(clock.tokens / clock.seconds, 1) if clock.seconds else None})


class StepClock:
    """Wall time from the first training step to the last one, and the tokens trained in it."""

    def __init__(self) -> None:
        self.begin: float | None = None
        self.seconds = 0.0
        self.tokens = 0

    def callback(self) -> Any:
        """A TrainerCallback that updates this clock."""
        import transformers

        clock = self

        class Callback(transformers.TrainerCallback):
            def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                clock.begin = time.perf_counter()

            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                clock.seconds = time.perf_counter() - (clock.begin or time.perf_counter())
                clock.tokens = state.num_input_tokens_seen

        return Callback()


# --- eval ---


def build_bundle(adapter: str, out_dir: Path) -> None:
    """``gloss-export bundle --adapter``: the edge path (merge -> GGUF -> Q8_0), statistics without validation."""
    if (out_dir / "gloss_bundle.json").is_file():
        return
    subprocess.run(["gloss-export", "bundle", "--catalog", str(BEAUTY / "items.jsonl.gz"), "--adapter", adapter,
                    "--sequences", str(BEAUTY / "sequences.jsonl.gz"), "--holdout", "2", "--out-dir", str(out_dir),
                    "--name", "beauty"], check=True)


def beams(bundle: Path, out: Path, users: int) -> None:
    """llm_fusion's generate stage: 5 free beams per seeded validation user (resumable)."""
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "llm_fusion.py"), "generate", "--bundle", str(bundle),
                    "--split", "validation", "--mode", "free", "--users", str(users), "--threads", "2",
                    "--batch-users", "4", "--out", str(out)], check=True)


def paper_scores(bundle: Path, beams_path: Path) -> dict[str, Any]:
    """Recall@5 / NDCG@5 of the beams by the paper's rule, seen items removed and kept (llm_fusion's retriever)."""
    from gloss.edge.bundle import load_bundle
    from gloss.edge.recommend import item_texts

    catalog = load_bundle(bundle, verify=False).catalog
    ms: dict = {}
    cases = read_beams(beams_path, catalog, "free", ms)
    setup = Setup(bundle, cases, POWER_MIN["beauty"])
    signals = setup.signals(cases)
    out = {}
    for name, exclude in (("seen_removed", True), ("seen_kept", False)):
        metrics = setup.metrics(paper_ranks(setup, signals, exclude))
        out[name] = {"recall@5": metrics["recall@5"], "ndcg@5": metrics["ndcg@5"], "users": int(metrics["users"])}
    out["p50_ms_per_user"] = float(np.median(list(ms.values())))
    known = item_texts(catalog)  # queries are "Title: <title>" texts, like the index's items
    out["exact_title_share"] = float(np.mean([q in known for c in cases for q in c.queries]))
    return out


def target_loss(adapter: str, data_dir: Path, work: Path, users: int) -> dict[str, Any]:
    """Token-mean loss of the target completion (the `last` labels) for the first ``users`` sampled validation
    users, fp32, full logits: one number comparable before and after."""
    import torch

    from gloss.train.examples import encode_example

    model, tokenizer, policy, _ = load_lora_model(data_dir, work / "loss", False, adapter, 1024)
    model.eval()
    total, count = 0.0, 0
    catalog_titles = _titles(data_dir)
    for ex in sample_examples("beauty", Split.validation, 500)[:users]:
        enc = encode_example(tokenizer, policy, [catalog_titles[a] for a in ex.history], catalog_titles[ex.target],
                             1024)
        labels = torch.tensor([enc["labels"]])
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([enc["input_ids"]]), labels=labels).loss
        n = int((labels != -100).sum())
        total, count = total + float(loss) * n, count + n
    return {"loss": round(total / count, 4), "users": users, "tokens": count}


def _titles(data_dir: Path) -> dict[str, str]:
    from gloss.edge.catalog import load_catalog

    catalog = load_catalog(data_dir / "items.jsonl.gz")
    return dict(zip(catalog.asins, catalog.titles, strict=True))


def evaluate(ns: argparse.Namespace) -> None:
    """Bundle, beams, scores and target loss of one adapter -> WORK/eval-LABEL.json."""
    adapter = ns.adapter if ns.adapter == SHIPPED else str(Path(ns.adapter).resolve())
    bundle = ns.work_dir / f"bundle-{ns.label}"
    started = time.time()
    build_bundle(adapter, bundle)
    beams_path = ns.beams or ns.work_dir / f"{ns.label}_validation_free.jsonl"
    if ns.beams is None:
        beams(bundle, beams_path, ns.users)
    out = {"adapter": ns.adapter, "bundle": str(bundle), "beams": str(beams_path), **paper_scores(bundle, beams_path)}
    out["target_loss"] = target_loss(adapter, ns.data_dir, ns.work_dir, ns.loss_users)
    out.update(command=command(), minutes=round((time.time() - started) / 60, 1))
    write_json_atomic(ns.work_dir / f"eval-{ns.label}.json", out)
    print(json.dumps(out, indent=2))


# --- report ---


def train_record(run_dir: Path, fit_json: dict[str, Any]) -> dict[str, Any]:
    """What the continued run did: steps, epochs, eval losses; minutes and tokens/s from the step clock."""
    manifest = json.loads((run_dir / "gloss_manifest.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"steps": manifest["result"]["global_step"], "epochs": round(manifest["result"]["epoch"], 4),
            "train_targets_per_epoch": manifest["data"].get("train_targets"),
            "train_texts_per_epoch": manifest["data"]["train_examples"], "tokens_seen": fit_json["tokens_seen"],
            "train_seconds": fit_json["train_seconds"], "tokens_per_s": fit_json["tokens_per_s"],
            "eval_loss": [{"step": r["step"], "eval_loss": r["eval_loss"]} for r in rows if "eval_loss" in r],
            "plan": manifest.get("plan"), "whole_call_seconds": manifest["result"]["seconds"],
            "config": manifest["config"]}


def report(ns: argparse.Namespace) -> None:
    """Write benchmarks/results/train_cpu_continue.{json,md}."""
    dtype = json.loads((ns.work_dir / "dtype.json").read_text())
    before = json.loads((ns.work_dir / "eval-before.json").read_text())
    after_path = ns.work_dir / "eval-after.json"
    after = json.loads(after_path.read_text()) if after_path.is_file() else None
    fit_json = json.loads((ns.work_dir / "fit.json").read_text())
    run = train_record(ns.work_dir / "run", fit_json)
    better = after is not None and _better(after["seen_removed"], before["seen_removed"])
    result = {
        "before": before["seen_removed"], "after": after["seen_removed"] if after else None,
        "minutes": round(run["train_seconds"] / 60, 1) if run["train_seconds"] else None,
        "tokens_per_s": run["tokens_per_s"], "objective": run["config"]["objective"],
        "dtype": dtype["faster"], "dtype_tokens_per_s": {k: dtype[k]["tokens_per_s"] for k in ("fp32", "bf16")},
        "epochs": run["epochs"], "steps": run["steps"], "tokens_seen": run["tokens_seen"],
        "seen_kept": {"before": before["seen_kept"], "after": after["seen_kept"] if after else None},
        "target_loss": {"before": before["target_loss"], "after": after["target_loss"] if after else None},
        "eval_loss_during_fit": run["eval_loss"], "shipped": better,
        "commands": {"dtype": dtype["command"], "fit": fit_json["command"],
                     "eval_before": before["command"], "eval_after": after["command"] if after else None,
                     "report": command()},
        "command": command(), "machine": machine() + " (shared with other agents; training niced to 19)",
        "train_config": {k: run["config"][k] for k in ("learning_rate", "per_device_batch_size", "grad_accum",
                                                       "warmup_steps", "max_seq_length", "max_minutes",
                                                       "eval_max_users", "init_adapter", "quant", "bf16")},
    }
    write_json_atomic(ns.results_dir / "train_cpu_continue.json", result)
    write_text_atomic(ns.results_dir / "train_cpu_continue.md", to_markdown(result, run, before, after))
    print(to_markdown(result, run, before, after))


def _better(after: dict, before: dict) -> bool:
    """Better on the 500 users: higher Recall@5 *and* higher NDCG@5 (seen items removed)."""
    return after["recall@5"] > before["recall@5"] and after["ndcg@5"] > before["ndcg@5"]


def to_markdown(result: dict, run: dict, before: dict, after: dict | None) -> str:
    """The report."""
    def row(name: str, scores: dict | None, loss: dict | None, extra: dict | None) -> str:
        if scores is None:
            return f"| {name} | not run | | | | | |"
        return (f"| {name} | {scores['users']} | {scores['recall@5']:.4f} | {scores['ndcg@5']:.4f} | "
                f"{loss['loss']:.4f} | {extra['exact_title_share']:.2f} | {extra['p50_ms_per_user']:.0f} |")

    d = result["dtype_tokens_per_s"]
    lines = [
        "# Continuing the shipped Beauty adapter on CPU (issue 15, part 3)", "",
        f"Machine: {result['machine']}", "",
        "No GPU in this session: the GPU slot of issue 15 (part 2) is blocked; nothing GPU-side is met here.", "",
        f"Training: `{result['commands']['fit']}`: `gloss-train` from `{SHIPPED}` (`init_adapter`), objective "
        f"`{result['objective']}`, LoRA r 16 on {result['dtype']} weights (`--quant none`), "
        f"{result['minutes']} min of training ({run['whole_call_seconds'] / 60:.1f} min for the whole call with "
        f"loading, tokenising and the final evaluation), {result['steps']} optimizer steps, "
        f"{result['epochs']:.3f} epochs, {result['tokens_seen']} tokens, **{result['tokens_per_s']} tokens/s** "
        "(niced to 19 while other agents ran timed benchmarks on the same 2 cores). Settings: "
        f"`{json.dumps(result['train_config'])}`.", "",
        f"dtype (`{result['commands']['dtype']}`, the same batches alternating): fp32 LoRA {d['fp32']} tokens/s, "
        f"bf16 {d['bf16']} tokens/s -> {result['dtype']}.", "",
        "Scores: 500 seeded Beauty validation users (llm_fusion's sample, seed 0: the adapter never saw their "
        "validation targets), 5 free beams each through the edge llama.cpp path (merge -> GGUF -> Q8_0 bundle), "
        "each beam's nearest item by the bundle's embedder and index, ranked by similarity (the paper's rule). "
        "Target loss = token-mean loss of the true next title (fp32 transformers, the `last` labels) on the first "
        f"{before['target_loss']['users']} of those users.", "",
        "Seen items removed:", "",
        "| adapter | users | Recall@5 | NDCG@5 | target loss | exact titles | p50 ms/user |",
        "|---|---|---|---|---|---|---|",
        row("before (shipped)", result["before"], before["target_loss"], before),
        row("after (continued)", result["after"], after["target_loss"] if after else None, after), "",
        "Seen items kept (the paper's convention):", "",
        "| adapter | users | Recall@5 | NDCG@5 |", "|---|---|---|---|"]
    for name, scores in (("before", result["seen_kept"]["before"]), ("after", result["seen_kept"]["after"])):
        if scores:
            lines.append(f"| {name} | {scores['users']} | {scores['recall@5']:.4f} | {scores['ndcg@5']:.4f} |")
    verdict = ("better on these users: shipped as export/adapters/smollm2-135m-beauty" if result["shipped"] else
               "not better on these users: the shipped adapter stays")
    lines += ["", f"Verdict: {verdict}.", "", f"Eval commands: `{result['commands']['eval_before']}`; "
              f"`{result['commands']['eval_after']}`.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=ROOT / "benchmarks" / ".work" / "cpu-continue")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "benchmarks" / ".work" / "beauty-data")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    sub = parser.add_subparsers(dest="stage", required=True)
    dt = sub.add_parser("dtype")
    dt.add_argument("--steps", type=int, default=3)
    dt.add_argument("--step-tokens", type=int, default=2048)
    for p in (dt, sub.add_parser("fit")):
        p.add_argument("--objective", default="dense")
        p.add_argument("--max-seq-length", type=int, default=512)
    ft = sub.choices["fit"]
    ft.add_argument("--minutes", type=float, default=60)
    ft.add_argument("--learning-rate", type=float, default=2e-4)
    ft.add_argument("--batch-size", type=int, default=8)
    ft.add_argument("--grad-accum", type=int, default=2)
    ft.add_argument("--warmup-steps", type=int, default=10)
    ft.add_argument("--eval-users", type=int, default=200)
    ft.add_argument("--resume", action="store_true")
    ev = sub.add_parser("eval")
    ev.add_argument("--adapter", required=True)
    ev.add_argument("--label", required=True)
    ev.add_argument("--users", type=int, default=500)
    ev.add_argument("--loss-users", type=int, default=200)
    ev.add_argument("--beams", type=Path, default=None, help="score these saved beams instead of generating")
    sub.add_parser("report")
    ns = parser.parse_args()
    setup_logging()
    logging.getLogger("benchmarks").setLevel(logging.INFO)
    ns.work_dir.mkdir(parents=True, exist_ok=True)
    {"dtype": measure_dtype, "fit": fit, "eval": evaluate, "report": report}[ns.stage](ns)


if __name__ == "__main__":
    main()

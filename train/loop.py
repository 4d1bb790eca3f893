"""LoRA/QLoRA fine-tuning with transformers ``Trainer``: completion-only loss, packing, a time box.

The default path computes logits only at label positions (:mod:`gloss.train.loss`), packs each batch without
padding (:mod:`gloss.train.packing`) and, with ``--max-minutes``, plans its steps from measured throughput
(:mod:`gloss.train.schedule`). ``--no-chunked-loss --no-packing`` is the earlier path (full logits, padded).

Multi-GPU: run the same command under ``accelerate launch -m gloss.train.cli fit ...`` or
``torchrun --nproc-per-node N $(which gloss-train) fit ...``; ``Trainer`` does data-parallel training (gloo on
CPU, tested with two processes), the 4-bit model is placed on each process's ``LOCAL_RANK`` device, and only the
main process writes the adapter, the manifest and ``metrics.jsonl``. The effective batch is
``per_device_batch_size * grad_accum * N``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gloss.edge.errors import InputError, require
from gloss.edge.files import make_parent_dir, sha256_file, write_json_atomic
from gloss.edge.outdir import atomic_dir
from gloss.edge.splits import Split
from gloss.train.config import TrainConfig
from gloss.train.data import MANIFEST_NAME, gloss_version, read_manifest
from gloss.train.examples import (  # noqa: F401  (re-exported: tests and evaluate import them from here)
    IGNORE_INDEX,
    CompletionCollator,
    encode_dense,
    encode_example,
    encode_texts,
    expand_histories,
    load_split_titles,
)
from gloss.train.loss import install_completion_loss
from gloss.train.model import (
    add_lora,
    load_base_model,
    resolve_base_model,
    resolve_init_adapter,
    token_policy,
    use_bf16,
)
from gloss.train.packing import PackingCollator, check_pack_length
from gloss.train.schedule import (
    ADAPTER_MARKER,
    BestAdapterCallback,
    StepPlan,
    TimeBudgetCallback,
    load_plan,
    measure_seconds,
    plan_steps,
    save_plan,
    slowest,
)

logger = logging.getLogger(__name__)

transformers = require("transformers", "train")


class MetricsLogger(transformers.TrainerCallback):
    """Logs one line per logging step (step, loss, lr, tokens/s) and appends it to ``metrics.jsonl``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._last: tuple[float, int] | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Start the tokens/s clock."""
        self._last = (time.perf_counter(), state.num_input_tokens_seen)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any
    ) -> None:
        """Write a train or eval record."""
        if not state.is_world_process_zero or not logs:
            return
        record: dict[str, Any] = {"step": state.global_step, "epoch": logs.get("epoch", state.epoch)}
        if "loss" in logs:
            now, tokens = time.perf_counter(), state.num_input_tokens_seen
            start, start_tokens = self._last or (now, tokens)
            self._last = (now, tokens)
            rate = (tokens - start_tokens) / (now - start) if now > start else 0.0
            record.update(loss=logs["loss"], lr=logs.get("learning_rate"), tokens_per_s=round(rate, 1),
                          tokens_seen=tokens)
            logger.info("step %d loss %.4f lr %.2e tokens/s %.0f", state.global_step, logs["loss"],
                        logs.get("learning_rate") or 0.0, rate)
        elif "eval_loss" in logs:
            record.update(eval_loss=logs["eval_loss"])
            logger.info("step %d eval_loss %.4f", state.global_step, logs["eval_loss"])
        else:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def _checkpoints(folder: Path) -> list[Path]:
    return sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))


def _resume_arg(config: TrainConfig, checkpoint_dir: Path) -> str | None:
    """Checkpoint to resume from; refuses to silently overwrite an earlier run's checkpoints."""
    found = _checkpoints(checkpoint_dir)
    if config.resume is False:
        if found:
            raise InputError(f"{checkpoint_dir} holds checkpoints of an earlier run; pass --resume to "
                             "continue it or choose another --out-dir")
        return None
    if config.resume is True:
        if not found:
            raise InputError(f"--resume: no checkpoint in {checkpoint_dir}; run without --resume")
        return str(found[-1])
    if not Path(config.resume).is_dir():
        raise InputError(f"--resume {config.resume}: no such checkpoint folder")
    return str(config.resume)


def training_arguments(config: TrainConfig, checkpoint_dir: Path, plan: StepPlan | None = None) -> Any:
    """TrainingArguments: linear schedule; evaluate + save each epoch, every ``eval_steps``, or at the end."""
    import torch

    max_steps, warmup, every = config.max_steps, config.warmup_steps, config.eval_steps
    if plan is not None:
        max_steps, warmup, every = plan.max_steps, plan.warmup_steps, config.eval_steps or plan.eval_steps
    elif every is None and max_steps is not None:
        every = max_steps
    strategy = "epoch" if every is None else "steps"
    return transformers.TrainingArguments(
        output_dir=str(checkpoint_dir),
        per_device_train_batch_size=config.per_device_batch_size,
        per_device_eval_batch_size=config.per_device_batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=warmup,
        weight_decay=config.weight_decay,
        num_train_epochs=config.epochs,
        max_steps=max_steps or -1,
        eval_strategy=strategy,
        save_strategy=strategy,
        eval_steps=every,
        save_steps=every,
        save_total_limit=2,  # with load_best_model_at_end the best checkpoint is always kept
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        prediction_loss_only=True,  # never gather validation logits
        logging_steps=config.logging_steps,
        include_num_input_tokens_seen="non_padding",
        bf16=use_bf16(config),
        seed=config.seed,
        data_seed=config.seed,
        remove_unused_columns=False,
        label_names=["labels"],
        report_to=[],
        ddp_find_unused_parameters=False,
        # CPU data parallel (torchrun on CPU, tests): gloo; a single process must not name a backend at all.
        ddp_backend="gloo" if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
    )


def encode_splits(config: TrainConfig, tokenizer: Any, policy: Any) -> tuple[list[dict], list[dict]]:
    """Encoded training texts (``config.objective``) and validation examples (always the ``last`` text).

    Raises:
        InputError: If a split is empty, no text of a split fits ``--max-seq-length``, or ``dense`` has no
            history title to supervise.
    """
    train_rows = load_split_titles(config.data_dir, Split.train)
    if config.objective == "all":
        train_rows = expand_histories(train_rows)
    eval_rows = load_split_titles(config.data_dir, Split.validation, config.eval_max_users)
    if not train_rows or not eval_rows:
        raise InputError(f"{config.data_dir}: empty train or validation split; prepare more users")
    train_set = encode_texts(train_rows, config.objective, tokenizer, policy, config.max_seq_length)
    eval_set = encode_texts(eval_rows, "last", tokenizer, policy, config.max_seq_length, "validation")
    logger.info("%d training texts (objective %s, %d next-item targets) and %d validation examples",
                len(train_set), config.objective, sum(e["num_targets"] for e in train_set), len(eval_set))
    return train_set, eval_set


def make_collator(config: TrainConfig, pad_token_id: int, *example_sets: Sequence[dict[str, list[int]]]) -> Any:
    """The packing collator (checked against the longest example) or the padded one.

    Raises:
        InputError: If ``--pack-length`` is shorter than an example.
    """
    if not config.packing:
        return CompletionCollator(pad_token_id)
    check_pack_length([len(e["input_ids"]) for s in example_sets for e in s], config.resolved_pack_length)
    return PackingCollator(pad_token_id, config.resolved_pack_length)


def plan_run(
    config: TrainConfig, model: Any, collator: Any, train_set: Sequence[dict], eval_set: Sequence[dict],
    started: float, resuming: bool,
) -> StepPlan:
    """Measure throughput and plan the steps of a ``--max-minutes`` run (a resumed run keeps its plan)."""
    plan = load_plan(config.out_dir) if resuming else None
    if plan is not None:
        logger.info("resuming the planned run: %d steps", plan.max_steps)
        return plan
    args = training_arguments(config, config.out_dir / "checkpoints")
    if not getattr(model, "is_loaded_in_4bit", False):
        model.to(args.device)
    micro_s, eval_example_s = measure_seconds(model, collator, train_set, eval_set, config.per_device_batch_size,
                                              args.device, args.bf16, config.seed)
    world = max(args.world_size, 1)
    step_s = slowest(micro_s * config.grad_accum)
    eval_s = slowest(eval_example_s * math.ceil(len(eval_set) / world))
    per_epoch = max(math.ceil(len(train_set) / (config.per_device_batch_size * config.grad_accum * world)), 1)
    budget = config.max_minutes * 60 - (time.monotonic() - started)  # type: ignore[operator]
    plan = plan_steps(budget, step_s, eval_s, per_epoch, config.epochs, config.max_steps, config.warmup_steps)
    logger.info("time box: %.1f s per step, %.1f s per evaluation -> %d steps (%.2f epochs) in %.0f s",
                step_s, eval_s, plan.max_steps, plan.epochs, budget)
    if args.process_index == 0:
        save_plan(plan, config.out_dir)
    return plan


def train(config: TrainConfig, callbacks: Sequence[Any] = ()) -> Path:
    """Fine-tune the base model with LoRA on a prepared data folder; keep the best adapter by eval loss.

    Args:
        config: The resolved training settings.
        callbacks: Extra ``TrainerCallback`` objects (benchmarks, tests).

    Returns:
        ``config.out_dir``, holding ``adapter/`` (best adapter + tokenizer, updated at every new best),
        ``checkpoints/``, ``metrics.jsonl``, ``plan.json`` (time-boxed runs) and ``gloss_manifest.json``
        (written last).

    Raises:
        InputError: For a data folder that is not prepared, a bad base model or checkpoint folder, a pack
            length shorter than an example, or a time box too short for one step.
    """
    import torch

    started = time.monotonic()
    data_manifest = read_manifest(config.data_dir)
    out_dir, checkpoint_dir = config.out_dir, config.out_dir / "checkpoints"
    resume_from = _resume_arg(config, checkpoint_dir)
    make_parent_dir(out_dir / MANIFEST_NAME)  # creates out_dir, or one Error line (a file in the way), before the load
    base = resolve_base_model(config.base_model)
    init_adapter_dir = resolve_init_adapter(config, base)
    logger.info("train config: %s", json.dumps({**config.to_dict(), "base_model": base}))
    transformers.set_seed(config.seed)
    model, tokenizer = load_base_model(config, base)
    policy = token_policy(tokenizer, config.add_bos_token)
    train_set, eval_set = encode_splits(config, tokenizer, policy)
    collator = make_collator(config, policy.pad_token_id, train_set, eval_set)
    model = add_lora(model, config, init_adapter_dir)
    if config.chunked_loss:
        install_completion_loss(model, config.loss_chunk_size)
    if config.packing:
        model.config.use_cache = False  # transformers only reads packed position_ids when there is no cache
    plan, budget = None, TimeBudgetCallback()
    if config.max_minutes is not None:
        plan = plan_run(config, model, collator, train_set, eval_set, started, resume_from is not None)
        budget = TimeBudgetCallback(started + config.max_minutes * 60, plan.eval_seconds)
    trainer = transformers.Trainer(
        model=model,
        args=training_arguments(config, checkpoint_dir, plan),
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[transformers.EarlyStoppingCallback(config.early_stopping_patience),
                   MetricsLogger(out_dir / "metrics.jsonl"), budget, BestAdapterCallback(out_dir / "adapter"),
                   *callbacks],
    )
    result = trainer.train(resume_from_checkpoint=resume_from)
    if trainer.is_world_process_zero():
        _save_adapter(trainer.model, tokenizer, out_dir / "adapter")
        state = trainer.state
        write_json_atomic(out_dir / MANIFEST_NAME, {
            "stage": "train",
            "gloss_version": gloss_version(),
            "config": {**config.to_dict(), "base_model": base},
            "tokenizer": {**vars(policy)},
            "versions": _versions(),
            "data": {"dir": str(config.data_dir),
                     "manifest_sha256": sha256_file(config.data_dir / MANIFEST_NAME),
                     "counts": data_manifest.get("counts"), "train_examples": len(train_set),
                     "train_targets": sum(e["num_targets"] for e in train_set),
                     "eval_examples": len(eval_set)},
            "plan": None if plan is None else {**plan.__dict__, "epochs": plan.epochs},
            "result": {"global_step": state.global_step, "epoch": state.epoch,
                       "train_loss": result.training_loss,
                       "best_eval_loss": state.best_metric, "best_checkpoint": state.best_model_checkpoint,
                       "resumed_from": resume_from, "device": "cuda" if torch.cuda.is_available() else "cpu",
                       "world_size": trainer.args.world_size,
                       "seconds": round(time.monotonic() - started, 1)},
            "files": sorted(["adapter", "checkpoints", "metrics.jsonl", MANIFEST_NAME]
                            + ([] if plan is None else ["plan.json"])),
        })
        logger.info("best eval loss %s; adapter in %s", state.best_metric, out_dir / "adapter")
    return out_dir


def _save_adapter(model: Any, tokenizer: Any, adapter_dir: Path) -> None:
    """Save the adapter and tokenizer into a work folder beside ``adapter_dir``, then swap it in."""
    with atomic_dir(adapter_dir, marker=ADAPTER_MARKER) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for package in ("torch", "transformers", "peft", "accelerate", "bitsandbytes"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out

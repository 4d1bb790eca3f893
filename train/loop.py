"""QLoRA fine-tuning with transformers ``Trainer`` and a completion-only loss.

Multi-GPU: run the same command under ``accelerate launch -m gloss.train.cli fit ...`` or
``torchrun --nproc-per-node N $(which gloss-train) fit ...``; ``Trainer`` does data-parallel training, the
4-bit model is placed on each process's ``LOCAL_RANK`` device, and only the main process writes the adapter,
the manifest and ``metrics.jsonl``. The effective batch is ``per_device_batch_size * grad_accum * N``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gloss.edge.catalog import load_catalog
from gloss.edge.errors import InputError, require
from gloss.edge.files import read_jsonl, sha256_file, write_json_atomic
from gloss.edge.prompt import build_prompt, fit_history, render_item
from gloss.edge.splits import Split
from gloss.train.config import TrainConfig
from gloss.train.data import MANIFEST_NAME, SPLIT_FILES, gloss_version, read_manifest
from gloss.train.model import (
    TokenPolicy,
    add_lora,
    load_base_model,
    resolve_base_model,
    token_policy,
    use_bf16,
)

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
transformers = require("transformers", "train")


def load_split_titles(
    data_dir: Path, split: Split, max_users: int | None = None
) -> list[tuple[dict[str, Any], list[str], str]]:
    """Rows of a prepared split with their history and target titles: ``(row, history_titles, target_title)``.

    Raises:
        InputError: If the data folder is not a finished ``gloss-train prepare`` output.
    """
    read_manifest(data_dir)
    catalog = load_catalog(Path(data_dir) / "items.jsonl.gz")
    out = []
    for row in read_jsonl(Path(data_dir) / SPLIT_FILES[split]):
        if max_users is not None and len(out) >= max_users:
            break
        out.append((row, catalog.titles_of(row["history"]), catalog.title(row["target"])))
    return out


def encode_example(
    tokenizer: Any, policy: TokenPolicy, history: Sequence[str], target: str, max_seq_length: int
) -> dict[str, list[int]]:
    """Token ids and labels of one training text; labels are -100 on every prompt token.

    Prompt and completion (``Title: <target>`` + EOS) are tokenised separately so that the boundary is exact
    and the prompt ids equal those generation uses; the oldest history items are dropped to fit.
    """
    completion = policy.encode_completion(tokenizer, render_item(target))
    fitted = fit_history(
        history, lambda text: len(policy.encode_prompt(tokenizer, text)), max_seq_length - len(completion)
    )
    prompt = policy.encode_prompt(tokenizer, build_prompt(fitted))
    return {"input_ids": prompt + completion, "labels": [IGNORE_INDEX] * len(prompt) + completion}


class CompletionCollator:
    """Right-pads ``input_ids``/``labels`` of encoded examples into tensors (labels padded with -100)."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, Any]:
        """Batch encoded examples."""
        import torch

        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n] = torch.tensor(f["input_ids"])
            labels[i, :n] = torch.tensor(f["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


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


def training_arguments(config: TrainConfig, checkpoint_dir: Path) -> Any:
    """TrainingArguments for the recipe: linear schedule, eval + save each epoch (or at ``max_steps``)."""
    import torch

    every = "epoch" if config.max_steps is None else "steps"
    return transformers.TrainingArguments(
        output_dir=str(checkpoint_dir),
        per_device_train_batch_size=config.per_device_batch_size,
        per_device_eval_batch_size=config.per_device_batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        eval_strategy=every,
        save_strategy=every,
        eval_steps=config.max_steps,
        save_steps=config.max_steps,
        save_total_limit=2,  # with load_best_model_at_end the best checkpoint is always kept
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=config.logging_steps,
        include_num_input_tokens_seen="non_padding",
        bf16=use_bf16(config),
        seed=config.seed,
        data_seed=config.seed,
        remove_unused_columns=False,
        label_names=["labels"],
        report_to=[],
        ddp_find_unused_parameters=False,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
    )


def train(config: TrainConfig) -> Path:
    """Fine-tune the base model with LoRA on a prepared data folder; keep the best adapter by eval loss.

    Args:
        config: The resolved training settings.

    Returns:
        ``config.out_dir``, holding ``adapter/`` (best adapter + tokenizer), ``checkpoints/``,
        ``metrics.jsonl`` and ``gloss_manifest.json`` (written last).

    Raises:
        InputError: For a data folder that is not prepared, a bad base model or checkpoint folder.
    """
    import torch

    data_manifest = read_manifest(config.data_dir)
    out_dir, checkpoint_dir = config.out_dir, config.out_dir / "checkpoints"
    resume_from = _resume_arg(config, checkpoint_dir)
    base = resolve_base_model(config.base_model)
    logger.info("train config: %s", json.dumps({**config.to_dict(), "base_model": base}))
    transformers.set_seed(config.seed)
    model, tokenizer = load_base_model(config, base)
    policy = token_policy(tokenizer, config.add_bos_token)

    def encode(rows: list[tuple[dict[str, Any], list[str], str]]) -> list[dict[str, list[int]]]:
        return [encode_example(tokenizer, policy, h, t, config.max_seq_length) for _, h, t in rows]

    train_set = encode(load_split_titles(config.data_dir, Split.train))
    eval_set = encode(load_split_titles(config.data_dir, Split.validation, config.eval_max_users))
    if not train_set or not eval_set:
        raise InputError(f"{config.data_dir}: empty train or validation split; prepare more users")
    logger.info("%d training and %d validation examples", len(train_set), len(eval_set))
    model = add_lora(model, config)
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer = transformers.Trainer(
        model=model,
        args=training_arguments(config, checkpoint_dir),
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=CompletionCollator(policy.pad_token_id),
        processing_class=tokenizer,
        callbacks=[transformers.EarlyStoppingCallback(config.early_stopping_patience),
                   MetricsLogger(out_dir / "metrics.jsonl")],
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
                     "eval_examples": len(eval_set)},
            "result": {"global_step": state.global_step, "epoch": state.epoch,
                       "train_loss": result.training_loss,
                       "best_eval_loss": state.best_metric, "best_checkpoint": state.best_model_checkpoint,
                       "resumed_from": resume_from, "device": "cuda" if torch.cuda.is_available() else "cpu"},
            "files": sorted(["adapter", "checkpoints", "metrics.jsonl", MANIFEST_NAME]),
        })
        logger.info("best eval loss %s; adapter in %s", state.best_metric, out_dir / "adapter")
    return out_dir


def _save_adapter(model: Any, tokenizer: Any, adapter_dir: Path) -> None:
    """Save the adapter and tokenizer into a temp folder beside ``adapter_dir``, then swap it in."""
    tmp = Path(tempfile.mkdtemp(prefix=".adapter.", dir=adapter_dir.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if adapter_dir.exists():
            shutil.rmtree(adapter_dir)
        os.replace(tmp, adapter_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for package in ("torch", "transformers", "peft", "accelerate", "bitsandbytes"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out

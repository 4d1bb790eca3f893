"""Time-boxed training: measure throughput after a short warm-up, plan the steps that fit, keep the best adapter.

``--max-minutes M`` is the budget of the whole ``train()`` call. After the model is loaded and the data
encoded, a few training micro-batches (forward + backward, no optimizer step) and one evaluation batch are
timed; the plan is then the largest number of optimizer steps whose training time plus one evaluation per
epoch (and one at the end) fits the rest of the budget less a safety margin. The linear schedule decays the
learning rate to zero at the planned last step, so the run ends with a finished schedule rather than one cut
mid-way. If throughput drops later, :class:`TimeBudgetCallback` stops early (evaluating and saving first).
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gloss.edge.errors import InputError, require
from gloss.edge.outdir import atomic_dir

logger = logging.getLogger(__name__)

transformers = require("transformers", "train")

PLAN_NAME = "plan.json"
ADAPTER_MARKER = "adapter_config.json"  # what makes a folder an adapter that may be replaced
# Share of the remaining budget kept free for checkpoint saves, the final adapter copy and timing jitter.
SAFETY_MARGIN = 0.1
WARMUP_SHARE = 0.1  # a planned run warms the learning rate up for at most this share of its steps
PROBE_STEPS = 3  # timed micro-batches after one untimed one (kernel selection, allocator warm-up)
# Files of a checkpoint that belong to the resumable trainer state, not to the adapter.
_STATE_FILES = ("optimizer.pt", "scheduler.pt", "trainer_state.json", "training_args.bin")


@dataclass(frozen=True)
class StepPlan:
    """The planned run, saved as ``plan.json`` so that ``--resume`` keeps the same schedule.

    Attributes:
        max_steps: Optimizer steps of the whole run.
        eval_steps: Evaluate + save every N steps (one epoch, or the whole run if shorter).
        warmup_steps: Linear learning-rate warm-up.
        steps_per_epoch: Optimizer steps per pass over the training set.
        seconds_per_step: Measured (all processes: the slowest).
        eval_seconds: Estimated time of one evaluation.
        budget_s: Seconds the plan had to fit into.
    """

    max_steps: int
    eval_steps: int
    warmup_steps: int
    steps_per_epoch: int
    seconds_per_step: float
    eval_seconds: float
    budget_s: float

    @property
    def epochs(self) -> float:
        """Planned passes over the training set."""
        return self.max_steps / self.steps_per_epoch


def plan_steps(
    budget_s: float, seconds_per_step: float, eval_seconds: float, steps_per_epoch: int, max_epochs: int,
    max_steps: int | None = None, warmup_steps: int = 0,
) -> StepPlan:
    """The largest step count whose training and evaluations fit ``budget_s`` less the safety margin.

    Args:
        budget_s: Seconds left for training and its evaluations.
        seconds_per_step: Time of one optimizer step.
        eval_seconds: Time of one evaluation on the validation users.
        steps_per_epoch: Optimizer steps per epoch.
        max_epochs: Upper bound in epochs (``--epochs``).
        max_steps: Upper bound in steps (``--max-steps``), None = none.
        warmup_steps: Requested warm-up; capped at ``WARMUP_SHARE`` of the plan.

    Returns:
        The plan.

    Raises:
        InputError: If not even one step and one evaluation fit.
    """
    usable = budget_s * (1 - SAFETY_MARGIN)
    cap = max_epochs * steps_per_epoch if max_steps is None else min(max_steps, max_epochs * steps_per_epoch)
    # With e evaluations the run can have at most e epochs' steps and what the time left after them allows.
    steps = max(min(cap, evals * steps_per_epoch, int((usable - evals * eval_seconds) // seconds_per_step))
                for evals in range(1, math.ceil(cap / steps_per_epoch) + 1))
    if steps <= 0:
        raise InputError(f"--max-minutes leaves {budget_s:.0f} s after loading, too little for one step "
                         f"({seconds_per_step:.2f} s) and one evaluation ({eval_seconds:.1f} s); "
                         "raise --max-minutes or lower --eval-max-users")
    return StepPlan(steps, min(steps_per_epoch, steps), min(warmup_steps, int(steps * WARMUP_SHARE)),
                    steps_per_epoch, seconds_per_step, eval_seconds, budget_s)


def save_plan(plan: StepPlan, out_dir: Path) -> None:
    """Write ``out_dir/plan.json``."""
    (Path(out_dir) / PLAN_NAME).write_text(json.dumps(asdict(plan), indent=2), encoding="utf-8")


def load_plan(out_dir: Path) -> StepPlan | None:
    """The plan of an earlier time-boxed run in ``out_dir``, or None."""
    path = Path(out_dir) / PLAN_NAME
    if not path.is_file():
        return None
    try:
        return StepPlan(**json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError) as exc:
        raise InputError(f"{path}: not a plan written by gloss-train fit ({exc})") from exc


def measure_seconds(
    model: Any, collate: Callable[[list[dict[str, list[int]]]], dict[str, Any]],
    train_set: Sequence[dict[str, list[int]]], eval_set: Sequence[dict[str, list[int]]],
    batch_size: int, device: Any, bf16: bool, seed: int,
) -> tuple[float, float]:
    """Seconds per training micro-batch (forward + backward) and per validation example (forward).

    Gradients are cleared afterwards and no optimizer step is taken, so the model is unchanged.
    """
    import torch

    rng = random.Random(seed)
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=bf16)

    def batch(examples: Sequence[dict[str, list[int]]]) -> tuple[dict[str, Any], int]:
        picked = rng.sample(list(examples), min(batch_size, len(examples)))
        return {k: v.to(device) for k, v in collate(picked).items()}, len(picked)

    timings = []
    model.train()
    for _ in range(PROBE_STEPS + 1):
        inputs, _ = batch(train_set)
        _sync(device)
        start = time.perf_counter()
        with autocast:
            loss = model(**inputs).loss
        loss.backward()
        _sync(device)
        timings.append(time.perf_counter() - start)
    model.zero_grad(set_to_none=True)
    model.eval()
    inputs, count = batch(eval_set)
    _sync(device)
    start = time.perf_counter()
    with torch.no_grad(), autocast:
        model(**inputs)
    _sync(device)
    eval_per_example = (time.perf_counter() - start) / count
    model.train()
    return sum(timings[1:]) / PROBE_STEPS, eval_per_example


def _sync(device: Any) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def slowest(value: float) -> float:
    """The largest ``value`` over all data-parallel processes (every process must follow the same plan)."""
    import torch

    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    if torch.distributed.get_backend() == "nccl":
        tensor = tensor.cuda()
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return float(tensor.item())


class TimeBudgetCallback(transformers.TrainerCallback):
    """Evaluates and saves at the last planned step; stops early (evaluate + save) when time runs out.

    Args:
        deadline: ``time.monotonic()`` value by which training and its last evaluation must be done; None =
            no deadline (only the evaluation at the last step).
        eval_seconds: Time kept for that last evaluation.
    """

    def __init__(self, deadline: float | None = None, eval_seconds: float = 0.0) -> None:
        self.deadline = deadline
        self.eval_seconds = eval_seconds

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """Force the final evaluation; stop when the next step would overrun the deadline."""
        if state.global_step >= state.max_steps:
            control.should_evaluate = control.should_save = True
        elif self.deadline is not None and time.monotonic() + self.eval_seconds >= self.deadline:
            logger.warning("time budget reached at step %d of %d (epoch %.2f): evaluating, saving, stopping",
                           state.global_step, state.max_steps, state.epoch or 0.0)
            control.should_training_stop = control.should_evaluate = control.should_save = True
        return control


class BestAdapterCallback(transformers.TrainerCallback):
    """Copies the best checkpoint's adapter to ``adapter_dir`` as soon as it is saved.

    A run killed later still leaves its best adapter in place, and ``--resume`` continues from the checkpoints
    with ``Trainer``'s own record of the best one.
    """

    def __init__(self, adapter_dir: Path) -> None:
        self.adapter_dir = Path(adapter_dir)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """After a checkpoint save: if it is the best so far, make it ``adapter_dir``."""
        best = state.best_model_checkpoint
        if state.is_world_process_zero and best and Path(best).name == f"checkpoint-{state.global_step}":
            copy_adapter(Path(best), self.adapter_dir)
            logger.info("best eval loss %.4f at step %d: adapter updated", state.best_metric, state.global_step)
        return control


def copy_adapter(checkpoint: Path, adapter_dir: Path) -> None:
    """Copy a checkpoint's adapter and tokenizer files (not the optimizer state) into ``adapter_dir``, atomically."""
    with atomic_dir(adapter_dir, marker=ADAPTER_MARKER) as tmp:
        for path in checkpoint.iterdir():
            if path.is_file() and path.name not in _STATE_FILES and not path.name.startswith("rng_state"):
                shutil.copy2(path, tmp / path.name)

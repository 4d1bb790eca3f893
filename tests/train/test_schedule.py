"""gloss.train.schedule: the step plan against a brute-force search, time-boxed runs, resume after a kill."""

from __future__ import annotations

import json
import math

import pytest

from gloss.edge.errors import InputError


def _brute_force_steps(budget_s, step_s, eval_s, per_epoch, cap):
    from gloss.train.schedule import SAFETY_MARGIN

    usable = budget_s * (1 - SAFETY_MARGIN)
    fits = [n for n in range(1, cap + 1) if n * step_s + math.ceil(n / per_epoch) * eval_s <= usable]
    return max(fits, default=0)


@pytest.mark.parametrize(
    ("budget_s", "step_s", "eval_s", "per_epoch", "epochs", "max_steps"),
    [
        (600, 0.5, 20, 350, 10, None),  # budget-bound, several evaluations
        (600, 0.01, 5, 100, 3, None),  # epoch-bound
        (600, 0.01, 5, 100, 3, 42),  # max_steps-bound
        (100, 1.7, 30.5, 7, 10, None),  # evaluations cost more than a few steps
    ],
)
def test_plan_is_the_largest_step_count_that_fits(budget_s, step_s, eval_s, per_epoch, epochs, max_steps):
    from gloss.train.schedule import plan_steps

    cap = epochs * per_epoch if max_steps is None else min(max_steps, epochs * per_epoch)
    plan = plan_steps(budget_s, step_s, eval_s, per_epoch, epochs, max_steps, warmup_steps=300)
    assert plan.max_steps == _brute_force_steps(budget_s, step_s, eval_s, per_epoch, cap)
    assert plan.eval_steps == min(per_epoch, plan.max_steps)
    assert plan.warmup_steps <= plan.max_steps * 0.1


def test_plan_without_room_for_one_step_is_an_input_error():
    from gloss.train.schedule import plan_steps

    with pytest.raises(InputError, match="too little for one step"):
        plan_steps(10, 2.0, 30, 100, 10)


def _records(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_time_boxed_run_finishes_its_plan_and_decays_to_zero(make_config):
    from gloss.train.loop import train

    config = make_config(max_steps=None, max_minutes=10, epochs=1, learning_rate=1e-3)
    out_dir = train(config)
    manifest = json.loads((out_dir / "gloss_manifest.json").read_text())
    plan = json.loads((out_dir / "plan.json").read_text())
    assert manifest["plan"]["max_steps"] == plan["max_steps"] == 10  # 20 examples / 2: the epoch cap binds
    assert manifest["result"]["global_step"] == plan["max_steps"]
    assert manifest["result"]["seconds"] < config.max_minutes * 60
    lrs = [r["lr"] for r in _records(out_dir) if "loss" in r]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < lrs[0] / plan["max_steps"] * 1.01
    assert [r["step"] for r in _records(out_dir) if "eval_loss" in r][-1] == plan["max_steps"]


class _Kill(Exception):
    pass


def _kill_after(step):
    from transformers import TrainerCallback

    class KillAfter(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step >= step:
                raise _Kill(f"killed after saving step {step}")

    return KillAfter()


def _adapter_tensors(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


@pytest.mark.slow
def test_resume_after_a_kill_keeps_the_best_adapter(make_config):
    """Eval + save every step, killed after step 3; the adapter is the best checkpoint's, before and after."""
    import torch

    from gloss.train.loop import train

    config = make_config(max_steps=6, eval_steps=1, learning_rate=5e-2, early_stopping_patience=10)
    with pytest.raises(_Kill):
        train(config, callbacks=[_kill_after(3)])
    out_dir = config.out_dir
    evals = {r["step"]: r["eval_loss"] for r in _records(out_dir) if "eval_loss" in r}
    best_step = min(evals, key=evals.get)
    assert set(evals) == {1, 2, 3} and (out_dir / "adapter").is_dir()
    best_before = _adapter_tensors(out_dir / "adapter")
    assert all(torch.equal(v, _adapter_tensors(out_dir / "checkpoints" / f"checkpoint-{best_step}")[k])
               for k, v in best_before.items())

    train(make_config(max_steps=6, eval_steps=1, learning_rate=5e-2, early_stopping_patience=10, resume=True))
    evals = {r["step"]: r["eval_loss"] for r in _records(out_dir) if "eval_loss" in r}
    manifest = json.loads((out_dir / "gloss_manifest.json").read_text())
    assert manifest["result"]["best_eval_loss"] == pytest.approx(min(evals.values()))
    best_step = min(evals, key=evals.get)
    assert manifest["result"]["best_checkpoint"].endswith(f"checkpoint-{best_step}")
    final = _adapter_tensors(out_dir / "adapter")
    best = _adapter_tensors(out_dir / "checkpoints" / f"checkpoint-{best_step}")
    assert final.keys() == best.keys() and all(torch.allclose(final[k], best[k]) for k in final)

"""`gloss-train fit` for a fixed device budget: the same `train()`, plus a wall-clock deadline and length grouping.

Two additions, both through module attributes of `gloss.train.loop` (TrainConfig has no field for them yet):
- a deadline: at the first optimizer step after ``--deadline`` (unix time) training stops, evaluates and saves,
  so `train()` still keeps the best checkpoint by eval loss and writes the adapter and the manifest;
- length-grouped batches (`group_by_length` in transformers 4.x, `train_sampling_strategy` in 5.x): Beauty
  prompts are 264 tokens on average but 1 in 16 is over 512, so random batches of 64 are mostly padding.

Usage (the YAML holds the recipe, flags the machine's paths)::

    python benchmarks/gpu/run_fit.py --config benchmarks/gpu/beauty-smollm2.yaml --data-dir D --out-dir R \
        --base-model M.gguf --deadline $(( $(date +%s) + 400 )) [--set max_steps=2 ...]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from gloss.edge.errors import user_errors
from gloss.edge.logs import setup_logging

logger = logging.getLogger("gloss.benchmarks.run_fit")


def _parse_sets(pairs: list[str]) -> dict[str, Any]:
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set {pair!r}: expected KEY=VALUE")
        out[key.strip()] = yaml.safe_load(value)
    return out


def install_budget(deadline: float | None, group_by_length: bool) -> None:
    """Patch `gloss.train.loop` so that the next `train()` call honours ``deadline`` and groups by length."""
    from gloss.train import loop

    base_args, base_logger = loop.training_arguments, loop.MetricsLogger

    def training_arguments(config: Any, checkpoint_dir: Path) -> Any:
        args = base_args(config, checkpoint_dir)
        args.disable_tqdm = True  # MetricsLogger prints one line per logging step
        if group_by_length:
            if hasattr(args, "train_sampling_strategy"):  # transformers >= 5
                args.train_sampling_strategy = "group_by_length"
            else:
                args.group_by_length = True
        return args

    class DeadlineLogger(base_logger):  # type: ignore[misc, valid-type]
        """MetricsLogger that also stops training (evaluate + save first) once the deadline has passed."""

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if deadline is not None and time.time() >= deadline and not control.should_training_stop:
                logger.warning("deadline reached at step %d (epoch %.2f): evaluating, saving, stopping",
                               state.global_step, state.epoch or 0.0)
                control.should_training_stop = True
                control.should_evaluate = True
                control.should_save = True
            return control

    loop.training_arguments = training_arguments
    loop.MetricsLogger = DeadlineLogger


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="YAML of TrainConfig fields.")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--base-model", required=True)
    parser.add_argument("--deadline", type=float, default=None, help="Unix time at which training stops.")
    parser.add_argument("--no-group-by-length", action="store_true")
    parser.add_argument("--set", action="append", default=[], help="Extra TrainConfig field KEY=VALUE.")
    ns = parser.parse_args()
    setup_logging()
    logging.getLogger("gloss.benchmarks").setLevel(logging.INFO)
    from gloss.train.config import load_config
    from gloss.train.data import read_manifest

    overrides = {"data_dir": ns.data_dir, "out_dir": ns.out_dir, "base_model": ns.base_model,
                 **_parse_sets(ns.set)}
    with user_errors():
        config = load_config(ns.config, overrides)
        read_manifest(config.data_dir)
        if ns.deadline is not None:
            logger.info("training deadline in %.0f s", ns.deadline - time.time())
        install_budget(ns.deadline, not ns.no_group_by_length)
        from gloss.train.loop import train

        print(train(config))


if __name__ == "__main__":
    main()

"""`gloss-train fit` for a fixed device budget: `train()` with its own time box (``--max-minutes``).

The deadline (unix time) becomes ``max_minutes``: ``train()`` measures its throughput after a short warm-up,
plans the steps that fit (linear decay to the end of the plan, one evaluation per epoch and one at the end),
keeps the best adapter by validation loss and stops early (evaluating and saving first) if it runs late.

Usage (the YAML holds the recipe, flags the machine's paths)::

    python benchmarks/gpu/run_fit.py --config benchmarks/gpu/beauty-smollm2.yaml --data-dir D --out-dir R \\
        --base-model M.gguf --deadline $(( $(date +%s) + 400 )) [--set objective=all ...]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="YAML of TrainConfig fields.")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--base-model", required=True)
    parser.add_argument("--deadline", type=float, default=None, help="Unix time by which training has ended.")
    parser.add_argument("--set", action="append", default=[], help="Extra TrainConfig field KEY=VALUE.")
    ns = parser.parse_args()
    setup_logging()
    logging.getLogger("gloss.benchmarks").setLevel(logging.INFO)
    from gloss.train.config import load_config
    from gloss.train.data import read_manifest

    overrides = {"data_dir": ns.data_dir, "out_dir": ns.out_dir, "base_model": ns.base_model,
                 **_parse_sets(ns.set)}
    if ns.deadline is not None:
        overrides["max_minutes"] = round((ns.deadline - time.time()) / 60, 3)
        logger.info("time box: %.2f min", overrides["max_minutes"])
    with user_errors():
        config = load_config(ns.config, overrides)
        read_manifest(config.data_dir)
        from gloss.train.loop import train

        print(train(config))


if __name__ == "__main__":
    main()

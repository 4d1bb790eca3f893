"""`gloss-train generate` for validation and a test subsample in one process, within a wall-clock deadline.

The run is loaded (base dequantized, adapter merged) once for both splits. All validation users are
generated first; the test users that fit in the time left (at the validation rate, with a margin) follow,
from the start of the test split (users are sorted by id, so the first N are an arbitrary subsample).
A JSON summary (timings, users per split) is written after each split and printed at the end.

Usage::

    python benchmarks/gpu/run_generate.py RUN_DIR --out-dir O --deadline UNIX_TIME [--batch-size 64]
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import time
from pathlib import Path

from gloss.edge.errors import user_errors
from gloss.edge.files import write_json_atomic
from gloss.edge.logs import setup_logging
from gloss.edge.splits import Split

logger = logging.getLogger("gloss.benchmarks.run_generate")


def test_users_that_fit(seconds_left: float, users_per_s: float, batch_size: int, cap: int | None) -> int:
    """Whole batches of test users that fit in ``seconds_left`` at 80% of the measured rate."""
    fit = int(0.8 * seconds_left * users_per_s) // batch_size * batch_size
    return max(0, min(fit, cap) if cap is not None else fit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--deadline", type=float, required=True, help="Unix time by which to be done.")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-beams", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=50)
    parser.add_argument("--validation-max-users", type=int, default=None)
    parser.add_argument("--test-max-users", type=int, default=None, help="Cap on test users (default: time).")
    parser.add_argument("--summary-path", type=Path, default=None, help="Default: OUT_DIR/generate_summary.json.")
    ns = parser.parse_args()
    setup_logging()
    logging.getLogger("gloss.benchmarks").setLevel(logging.INFO)
    from gloss.train import generate as evaluate

    # Load once for both splits: generate_queries looks the loader up in its module at call time.
    evaluate.load_for_generation = functools.lru_cache(maxsize=1)(evaluate.load_for_generation)
    summary: dict[str, object] = {"batch_size": ns.batch_size, "num_beams": ns.num_beams}
    ns.out_dir.mkdir(parents=True, exist_ok=True)
    with user_errors():
        start = time.time()
        evaluate.load_for_generation(ns.run_dir)
        summary["load_s"] = round(time.time() - start, 1)
        for split in (Split.validation, Split.test):
            left = ns.deadline - time.time()
            if split is Split.validation:
                max_users = ns.validation_max_users
            else:
                rate = summary["validation_users"] / max(summary["validation_s"], 1e-6)  # type: ignore[operator]
                max_users = test_users_that_fit(left, rate, ns.batch_size, ns.test_max_users)
                if max_users == 0:
                    logger.warning("no time left for test users (%.0f s left)", left)
                    break
            logger.info("%s: up to %s users, %.0f s left", split.value, max_users or "all", left)
            out_path = ns.out_dir / f"queries_{split.value}.jsonl.gz"
            begin = time.time()
            evaluate.generate_queries(ns.run_dir, None, split, out_path, ns.num_beams, ns.max_new_tokens,
                                      ns.batch_size, max_users, show_progress=False)
            with_rows = sum(1 for _ in _rows(out_path))
            summary[f"{split.value}_users"] = with_rows
            summary[f"{split.value}_s"] = round(time.time() - begin, 1)
            logger.info("%s: %d users in %.1f s", split.value, with_rows, time.time() - begin)
            write_json_atomic(ns.summary_path or ns.out_dir / "generate_summary.json", summary)
    print(json.dumps(summary))


def _rows(path: Path):
    from gloss.edge.files import read_jsonl

    return read_jsonl(path)


if __name__ == "__main__":
    main()

"""Fill the GPU keys of ``benchmarks/results/train_slot.{json,md}`` from a slot's files (issue 8).

Reads what call 2 brought back (``throughput.json``, ``metrics.jsonl``, ``gloss_manifest.json``) and the scores
``follow_up.sh`` wrote (``eval/bundle_validation_first.json``: the generator alone through the CPU edge path,
llama.cpp beams + ONNX + usearch, the paper's rule; ``eval/hf_validation*.json``: the GPU's transformers beams),
keeps the ``cpu`` block that ``benchmarks/train_throughput.py`` measured, and rewrites both files.

Usage::

    python benchmarks/gpu/slot_report.py FILES_DIR benchmarks/.work/gpu-beauty/eval
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[1] / "results" / "train_slot.json"


def converged(evals: list[float], patience: int) -> bool:
    """Validation loss no longer improving: the last ``patience`` evaluations (at least one) beat no earlier best."""
    window = max(min(patience, len(evals) - 1), 1)
    if len(evals) <= window:
        return False
    best_before = min(evals[:-window])
    return min(evals[-window:]) >= best_before


def _metrics(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    m = json.loads(path.read_text())["metrics"]["all"]
    return {"recall@5": m["recall@5"], "ndcg@5": m["ndcg@5"], "users": int(m["users"])}


def gpu_block(files: Path, eval_dir: Path) -> dict[str, Any]:
    """The GPU keys of issue 8 from one slot's files."""
    throughput = json.loads((files / "throughput.json").read_text())
    manifest = json.loads((files / "gloss_manifest.json").read_text())
    records = [json.loads(line) for line in (files / "metrics.jsonl").read_text().splitlines()]
    curve = [{"step": r["step"], "epoch": r["epoch"], "eval_loss": r["eval_loss"]} for r in records if "eval_loss" in r]
    paths = throughput["paths"]
    result, config = manifest["result"], manifest["config"]
    return {
        "device": throughput["device"],
        "baseline_tokens_per_s": paths["old"]["tokens_per_s"],
        "tokens_per_s": paths["new_none" if config["quant"] == "none" else "new"]["tokens_per_s"],
        "tokens_per_s_paths": paths,
        "epochs": result["epoch"],
        "converged": converged([c["eval_loss"] for c in curve], config["early_stopping_patience"]),
        "validation_loss_curve": curve,
        "validation": _metrics(eval_dir / "bundle_validation_first.json"),
        "validation_seen_removed": _metrics(eval_dir / "bundle_validation_first_exclude_seen.json"),
        "validation_hf_gpu_beams": _metrics(eval_dir / "hf_validation.json"),
        "validation_hf_gpu_beams_seen_removed": _metrics(eval_dir / "hf_validation_exclude_seen.json"),
        "plan": manifest.get("plan"),
        "missing": None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files_dir", type=Path)
    parser.add_argument("eval_dir", type=Path)
    parser.add_argument("--out-dir", type=Path, default=RESULTS.parent,
                        help="Where train_slot.{json,md} go (the dry run writes elsewhere).")
    ns = parser.parse_args()
    spec = importlib.util.spec_from_file_location("train_throughput", RESULTS.parents[1] / "train_throughput.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    cpu = json.loads(RESULTS.read_text())["cpu"]
    ns.out_dir.mkdir(parents=True, exist_ok=True)
    module.write_results(cpu, gpu_block(ns.files_dir, ns.eval_dir), ns.out_dir)


if __name__ == "__main__":
    main()

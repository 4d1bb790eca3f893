"""Write a tiny random LLaMA with SmolLM2's real tokenizer as a GGUF: the base of the device smoke run.

The smoke run then takes the same path as the real one (GGUF -> HF folder -> NF4 4-bit -> LoRA -> merge ->
beam search) in seconds, before the real model has arrived on the device.

Usage: python benchmarks/gpu/make_smoke_gguf.py OUT.gguf
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)


def make_smoke_gguf(out_path: Path) -> Path:
    """Build the tiny model (2 layers, width 64, SmolLM2 vocabulary) and write it as an f16 GGUF (~8 MB)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from gloss.export.gguf import write_gguf
    from gloss.export.hf_models import align_tokenizer_with_gguf, default_base_gguf

    base = default_base_gguf()
    tokenizer = AutoTokenizer.from_pretrained(base.parent, gguf_file=base.name)
    align_tokenizer_with_gguf(tokenizer, base)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, rms_norm_eps=1e-5,
        rope_theta=10000.0, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        return write_gguf(Path(tmp), Path(out_path), dtype="f16")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(make_smoke_gguf(Path(sys.argv[1])))

"""merge_adapter: merged weights give base + LoRA (PEFT) logits; adapters for another base are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from typer.testing import CliRunner  # noqa: E402

from gloss.edge.errors import InputError  # noqa: E402
from gloss.edge.prompt import build_prompt  # noqa: E402
from gloss.export.cli import app  # noqa: E402
from gloss.export.hf_models import load_causal_lm  # noqa: E402
from gloss.export.merge import merge_adapter  # noqa: E402

TITLES = ["Maybelline New York Great Lash Mascara, Blackest Black", "Neutrogena Oil-Free Acne Wash, 6 Fl. Oz"]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(base_dir: Path, out_dir: Path, seed: int = 1) -> object:
    """Save a LoRA adapter on ``base_dir`` whose B matrices are random (so merging changes the weights)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0)
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    peft_model.save_pretrained(out_dir)
    return peft_model.eval()


def logits(model: object, input_ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([input_ids])).logits[0]


@pytest.fixture(scope="module")
def adapter(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("adapter")
    return out, make_adapter(tiny_llama_dir, out)


def test_merged_model_matches_base_plus_adapter(adapter, tiny_llama_dir: Path, tmp_path: Path) -> None:
    adapter_dir, peft_model = adapter
    out = merge_adapter(adapter_dir, tmp_path / "merged")
    merged, tokenizer = load_causal_lm(out, "float32")
    ids = tokenizer(build_prompt(TITLES, TITLES[0])).input_ids
    base, _ = load_causal_lm(tiny_llama_dir, "float32")
    reference = logits(peft_model, ids)
    diff = (logits(merged, ids) - reference).abs().max().item()
    scale = reference.abs().max().item()
    print(f"merged vs base+adapter: max abs logit diff {diff:.2e} (logit scale {scale:.1f})")
    assert diff < 1e-5 * max(1.0, scale), f"max abs logit diff {diff} at logit scale {scale}"
    assert (logits(base, ids) - reference).abs().max().item() > 1e-2  # the adapter does change the model
    assert {"model.safetensors", "tokenizer.json", "config.json", "gloss_manifest.json"} <= {
        p.name for p in out.iterdir()
    }
    assert tokenizer(build_prompt(TITLES)).input_ids == base_tokenizer_ids(
        tiny_llama_dir, build_prompt(TITLES)
    )


def base_tokenizer_ids(model_dir: Path, text: str) -> list[int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)(text).input_ids


def test_merge_reads_base_from_run_manifest_and_replaces_own_output(
    adapter, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    adapter_dir, _ = adapter
    run = tmp_path / "run"
    shutil.copytree(adapter_dir, run / "adapter")
    config_path = run / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = "someone/not-in-the-cache"
    config_path.write_text(json.dumps(config))
    (run / "gloss_manifest.json").write_text(json.dumps({"config": {"base_model": str(tiny_llama_dir)}}))
    out = tmp_path / "merged"
    merge_adapter(run, out)
    merge_adapter(run, out)  # a second run replaces its own earlier output
    assert json.loads((out / "gloss_manifest.json").read_text())["config"]["base_model"] == str(
        tiny_llama_dir
    )


@pytest.fixture(scope="module")
def other_base_adapter(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapter trained on a narrower LLaMA (hidden 32) with the same tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    other = tmp_path_factory.mktemp("other-base")
    LlamaForCausalLM(config).save_pretrained(other)
    tokenizer.save_pretrained(other)
    out = tmp_path_factory.mktemp("other-adapter")
    make_adapter(other, out)
    config_path = out / "adapter_config.json"
    data = json.loads(config_path.read_text())
    data["base_model_name_or_path"] = str(tiny_llama_dir)  # claims the tiny base: only the shapes tell
    config_path.write_text(json.dumps(data))
    return out


def test_merge_rejects_adapter_for_other_base(other_base_adapter: Path, adapter, tmp_path: Path) -> None:
    with pytest.raises(
        InputError, match=r"features where .* has \d+; the adapter was trained on another base"
    ):
        merge_adapter(other_base_adapter, tmp_path / "merged")
    adapter_dir, _ = adapter
    with pytest.raises(InputError, match="trained on base model .*, not 'HuggingFaceTB/SmolLM2-1.7B'"):
        merge_adapter(adapter_dir, tmp_path / "merged", base_model="HuggingFaceTB/SmolLM2-1.7B")
    assert not (tmp_path / "merged").exists()


def test_merge_accepts_the_base_the_run_manifest_names(adapter, tiny_llama_dir: Path, tmp_path: Path) -> None:
    """A 4-bit run from a GGUF: PEFT records the run's base-hf folder, the manifest the GGUF given to train."""
    adapter_dir, _ = adapter
    run = tmp_path / "run"
    shutil.copytree(adapter_dir, run / "adapter")
    config_path = run / "adapter" / "adapter_config.json"
    config_path.write_text(
        json.dumps({**json.loads(config_path.read_text()), "base_model_name_or_path": str(run / "base-hf")})
    )
    (run / "gloss_manifest.json").write_text(json.dumps({"config": {"base_model": str(tiny_llama_dir)}}))
    assert merge_adapter(run, tmp_path / "merged", base_model=tiny_llama_dir).is_dir()
    with pytest.raises(InputError, match=f"trained on base model '{tiny_llama_dir}', not 'HuggingFaceTB/x'"):
        merge_adapter(run, tmp_path / "merged2", base_model="HuggingFaceTB/x")


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda a, t: [str(t), "--out-dir", str(t / "m")], "no adapter_config.json here"),
        (lambda a, t: [str(a), "--out-dir", str(a)], "non-empty folder not written by gloss-export merge"),
        (
            lambda a, t: [str(a), "--out-dir", str(t / "m"), "--base-model", str(t / "x.gguf")],
            "was trained on base model",
        ),
    ],
)
def test_merge_cli_bad_input(adapter, tmp_path: Path, make_args, message: str) -> None:
    adapter_dir, _ = adapter
    result = CliRunner().invoke(app, ["merge", *make_args(adapter_dir, tmp_path)])
    assert result.exit_code == 2, result.output
    assert message in result.output


@pytest.mark.slow
def test_merge_onto_gguf_base(smollm2_gguf_path: Path, tmp_path: Path) -> None:
    """The real SmolLM2 GGUF as base: dequantized by transformers, merged, saved as a plain HF folder."""
    from peft import LoraConfig, get_peft_model

    base, tokenizer = load_causal_lm(smollm2_gguf_path, "float32")
    peft_model = get_peft_model(
        base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    peft_model.save_pretrained(tmp_path / "adapter")
    ids = tokenizer(build_prompt(TITLES)).input_ids
    reference = logits(peft_model.eval(), ids)
    out = merge_adapter(tmp_path / "adapter", tmp_path / "merged", base_model=smollm2_gguf_path)
    merged, merged_tokenizer = load_causal_lm(out, "float32")
    assert merged_tokenizer(build_prompt(TITLES)).input_ids == ids  # same tokenizer and BOS rule
    diff = (logits(merged, ids) - reference).abs().max().item()
    print(f"SmolLM2 merged vs base+adapter: max abs logit diff {diff:.2e}")
    assert diff < 1e-5 * max(1.0, reference.abs().max().item())

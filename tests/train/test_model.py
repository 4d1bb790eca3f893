"""gloss.train.model: explicit pad/BOS/EOS decisions, base model resolution, LoRA wrapping."""

from __future__ import annotations

import pytest

from gloss.edge.errors import InputError


@pytest.mark.slow  # GGUFReader parses every tensor header (~5 s)
def test_gguf_tokenizer_gets_the_files_eos_and_bos_rule(smollm2_tokenizer_dir, smollm2_gguf_path):
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    from gloss.export.hf_models import align_tokenizer_with_gguf
    from gloss.train.model import token_policy

    fields = GGUFReader(str(smollm2_gguf_path)).fields

    def value(key):
        return fields[key].parts[fields[key].data[0]].tolist()[0]

    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    align_tokenizer_with_gguf(tokenizer, smollm2_gguf_path)
    policy = token_policy(tokenizer)
    assert policy.eos_token_id == value("tokenizer.ggml.eos_token_id")
    assert policy.bos_token_id == value("tokenizer.ggml.bos_token_id")
    assert policy.pad_token_id == value("tokenizer.ggml.padding_token_id")
    assert policy.add_bos_token == bool(value("tokenizer.ggml.add_bos_token"))
    assert policy.encode_prompt(tokenizer, "x") == tokenizer("x")["input_ids"]


def test_token_policy_sets_missing_pad_to_eos(smollm2_tokenizer_dir):
    from transformers import AutoTokenizer

    from gloss.train.model import token_policy

    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    tokenizer.pad_token = None
    policy = token_policy(tokenizer, add_bos_token=False)
    assert policy.pad_token_id == tokenizer.eos_token_id == policy.eos_token_id
    assert policy.encode_prompt(tokenizer, "x") == tokenizer("x", add_special_tokens=False)["input_ids"]


def test_default_base_model_is_the_smollm2_gguf(smollm2_gguf_path):
    from gloss.train.model import resolve_base_model

    assert resolve_base_model(None) == str(smollm2_gguf_path)
    assert resolve_base_model("org/model") == "org/model"


def test_unknown_target_module_is_an_input_error(make_config, tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    from gloss.train.model import add_lora

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    with pytest.raises(InputError, match="--target-modules qkv_proj: not in the base model"):
        add_lora(model, make_config(target_modules=("q_proj", "qkv_proj")))


@pytest.fixture
def saved_adapter(tiny_llama_dir, tmp_path):
    """A PEFT adapter of the tiny model (r 4, q/v) with random, non-zero LoRA weights."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    for name, param in model.named_parameters():
        if "lora_" in name:
            torch.nn.init.normal_(param, std=0.1)
    model.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter", {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def test_add_lora_continues_the_init_adapter_with_trainable_weights(make_config, tiny_llama_dir, saved_adapter):
    import torch
    from transformers import AutoModelForCausalLM

    from gloss.train.model import add_lora, resolve_init_adapter

    folder, weights = saved_adapter
    config = make_config(lora_r=4, lora_alpha=8, target_modules=("v_proj", "q_proj"), init_adapter=str(folder))
    assert resolve_init_adapter(config, str(tiny_llama_dir)) == folder
    model = add_lora(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), config, folder)
    got = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert got.keys() == weights.keys()
    assert all(torch.equal(got[n], w) and got[n].requires_grad for n, w in weights.items())


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"lora_r": 16, "lora_alpha": 8, "target_modules": ("q_proj", "v_proj")}, "--lora-r 16 (the adapter has 4)"),
        ({"lora_r": 4, "lora_alpha": 8}, "--target-modules"),
    ],
)
def test_init_adapter_with_other_lora_settings_is_an_input_error(make_config, tiny_llama_dir, saved_adapter,
                                                                 settings, message):
    from gloss.train.model import resolve_init_adapter

    config = make_config(init_adapter=str(saved_adapter[0]), **settings)
    with pytest.raises(InputError, match="use the adapter's settings") as info:
        resolve_init_adapter(config, str(tiny_llama_dir))
    assert message in str(info.value)


def test_shipped_init_adapter_on_another_base_is_an_input_error(make_config, tiny_llama_dir):
    from gloss.train.model import resolve_init_adapter

    config = make_config(init_adapter="smollm2-135m-beauty")
    with pytest.raises(InputError, match="leave --base-model unset to continue it on its own base"):
        resolve_init_adapter(config, str(tiny_llama_dir))

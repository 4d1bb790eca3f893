"""gloss.train.loop: completion-only masking and end-to-end training of the tiny model on CPU."""

from __future__ import annotations

import json
import math

import pytest

from gloss.edge.errors import InputError
from gloss.edge.prompt import build_prompt, fit_history, render_item
from gloss.edge.splits import Split


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir)


@pytest.mark.parametrize("add_bos", [None, False, True])
def test_labels_mask_exactly_the_prompt_tokens(tokenizer, prepared_dir, add_bos):
    from gloss.train.loop import encode_example, load_split_titles
    from gloss.train.model import token_policy

    policy = token_policy(tokenizer, add_bos)
    _, history, target = load_split_titles(prepared_dir, Split.train)[0]
    encoded = encode_example(tokenizer, policy, history, target, max_seq_length=1024)
    prompt_ids = policy.encode_prompt(tokenizer, build_prompt(history))
    n = len(prompt_ids)
    assert encoded["input_ids"][:n] == prompt_ids
    assert encoded["labels"][:n] == [-100] * n
    assert -100 not in encoded["labels"][n:]
    assert encoded["labels"][n:] == encoded["input_ids"][n:]
    assert encoded["labels"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(encoded["labels"][n:], skip_special_tokens=True) == render_item(target)
    assert (encoded["input_ids"][:1] == [tokenizer.bos_token_id]) == policy.add_bos_token


def test_long_history_is_cut_from_the_oldest_item(tokenizer):
    from gloss.train.loop import encode_example
    from gloss.train.model import token_policy

    policy = token_policy(tokenizer)
    history = [f"Item number {i} with a fairly long descriptive title for testing" for i in range(40)]
    encoded = encode_example(tokenizer, policy, history, "The target", max_seq_length=200)
    assert len(encoded["input_ids"]) <= 200
    completion = len(policy.encode_completion(tokenizer, render_item("The target")))
    count = lambda text: len(policy.encode_prompt(tokenizer, text))  # noqa: E731
    kept = fit_history(history, count, 200 - completion)
    assert kept[-1] == history[-1] and len(kept) < len(history)
    assert encoded["input_ids"][:-completion] == policy.encode_prompt(tokenizer, build_prompt(kept))


def test_collator_pads_right_and_never_labels_padding():
    from gloss.train.loop import CompletionCollator

    batch = CompletionCollator(pad_token_id=7)(
        [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4], "labels": [4]}]
    )
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 7, 7]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def _check_run(out_dir, config, steps):
    assert {p.name for p in out_dir.iterdir()} >= {
        "adapter",
        "checkpoints",
        "metrics.jsonl",
        "gloss_manifest.json",
    }
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {
        p.name for p in (out_dir / "adapter").iterdir()
    }
    assert (out_dir / "checkpoints" / f"checkpoint-{steps}").is_dir()
    manifest = json.loads((out_dir / "gloss_manifest.json").read_text())
    assert manifest["stage"] == "train"
    assert (
        manifest["config"]["lora_r"] == config.lora_r
        and manifest["config"]["base_model"] == config.base_model
    )
    assert manifest["result"]["global_step"] == steps
    assert math.isfinite(manifest["result"]["best_eval_loss"])
    assert set(manifest["tokenizer"]) == {"add_bos_token", "bos_token_id", "eos_token_id", "pad_token_id"}
    assert len(manifest["data"]["manifest_sha256"]) == 64
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_records][-1] == steps
    assert all(math.isfinite(r["loss"]) and r["tokens_per_s"] >= 0 for r in train_records)
    assert any("eval_loss" in r for r in records)
    return manifest, records


@pytest.mark.slow
@pytest.mark.parametrize("load_in_4bit", [False, pytest.param(True, marks=pytest.mark.gpu)])
def test_train_end_to_end_on_tiny_model(make_config, load_in_4bit):
    from gloss.train.loop import train

    config = make_config(load_in_4bit=load_in_4bit)
    out_dir = train(config)
    manifest, _ = _check_run(out_dir, config, steps=2)
    assert manifest["data"]["train_examples"] == 20 and manifest["data"]["eval_examples"] == 2
    # The run folder feeds generation directly: base + best adapter, the run's tokenisation and data.
    from gloss.edge.files import read_jsonl
    from gloss.train.generate import generate_queries

    queries = generate_queries(out_dir, None, Split.validation, out_dir.parent / "q.jsonl", max_new_tokens=4)
    rows = list(read_jsonl(queries))
    assert len(rows) == 2 and all(len(r["queries"]) == 5 for r in rows)


@pytest.mark.slow
def test_train_resumes_from_checkpoint(make_config):
    from gloss.train.loop import train

    out_dir = train(make_config(max_steps=2))
    with pytest.raises(InputError, match="pass --resume"):
        train(make_config(max_steps=4))
    config = make_config(max_steps=4, resume=True)
    manifest, records = _check_run(train(config), config, steps=4)
    assert manifest["result"]["resumed_from"].endswith("checkpoint-2")
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]  # appended, steps 1-2 not repeated
    assert out_dir == config.out_dir


def test_resume_without_checkpoint_is_an_input_error(make_config):
    from gloss.train.loop import train

    with pytest.raises(InputError, match="--resume: no checkpoint"):
        train(make_config(resume=True))


def test_saved_adapter_folder_follows_the_umask(tmp_path):
    """The adapter folder is made with mkdtemp (0700); like the bundle, it follows the user's umask."""
    import os
    from pathlib import Path

    from gloss.train.loop import _save_adapter

    class Saver:
        def save_pretrained(self, folder):
            (Path(folder) / f"{type(self).__name__}.json").write_text("{}")

    old = os.umask(0o022)
    try:
        _save_adapter(Saver(), Saver(), tmp_path / "adapter")
    finally:
        os.umask(old)
    assert (tmp_path / "adapter" / "Saver.json").is_file()
    assert (tmp_path / "adapter").stat().st_mode & 0o777 == 0o755

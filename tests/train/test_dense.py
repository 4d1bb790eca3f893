"""The ``dense`` objective: one text per user, labels on every history title after the first and on the target.

References: the label mask against a brute-force one (each token's character offset from decoding the ids before
it, with SmolLM2's real tokenizer); the target's loss against the ``last`` objective's loss of the same text; the
texts against the users' sequences with their held-out items cut off independently.
"""

from __future__ import annotations

import json

import pytest

from gloss.edge.errors import InputError
from gloss.edge.files import read_jsonl
from gloss.edge.prompt import PROMPT_TEMPLATE, build_prompt, render_item
from gloss.edge.splits import Split

# Titles that stress token boundaries: digits, quotes, HTML entities, non-ASCII, a trailing number.
TRICKY = ["Nail Polish Red 0.5 oz", 'UV gel "dryer" &amp; lamp', "Crème de la Mer 3.4", "Wraps 100 Count",
          "Jean Paul Gaultier - Le Male (4.2 oz)"]


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)


def _brute_force_labels(tokenizer, prompt_ids, text, history):
    """Token i is labelled iff the text decoded before it ends inside a history line after the first."""
    start = text.index("### Purchase history:\n") + len("### Purchase history:\n")
    spans = []
    for title in history:
        line = render_item(title) + "\n"
        spans.append((start, start + len(line)))
        start += len(line)
    labels = []
    for i, token in enumerate(prompt_ids):
        at = len(tokenizer.decode(prompt_ids[:i], clean_up_tokenization_spaces=False))
        labels.append(token if any(a <= at < b for a, b in spans[1:]) else -100)
    return labels


@pytest.mark.parametrize("add_bos", [False, True])
@pytest.mark.parametrize("source", ["tricky", "beauty"])
def test_dense_labels_are_exactly_the_history_title_lines(tokenizer, prepared_dir, add_bos, source):
    from gloss.train.examples import encode_dense, encode_example, load_split_titles
    from gloss.train.model import token_policy

    policy = token_policy(tokenizer, add_bos)
    if source == "tricky":
        history, target = TRICKY[:-1], TRICKY[-1]
    else:
        _, history, target = max(load_split_titles(prepared_dir, Split.train), key=lambda r: len(r[1]))
    dense = encode_dense(tokenizer, policy, history, target, max_seq_length=1024)
    last = encode_example(tokenizer, policy, history, target, max_seq_length=1024)
    assert dense["input_ids"] == last["input_ids"]  # the same text as the paper's objective
    n = len(policy.encode_prompt(tokenizer, build_prompt(history)))
    bos = int(policy.add_bos_token)
    text_ids = dense["input_ids"][bos:n]
    assert dense["labels"][:bos] == [-100] * bos
    assert dense["labels"][bos:n] == _brute_force_labels(tokenizer, text_ids, build_prompt(history), history)
    labelled = [t for t in dense["labels"][:n] if t != -100]
    assert tokenizer.decode(labelled) == "".join(render_item(t) + "\n" for t in history[1:])
    assert dense["labels"][n:] == last["labels"][n:]  # target completion + EOS, as in `last`
    assert dense["num_targets"] == len(history) and last["num_targets"] == 1


def test_dense_cut_keeps_the_target_and_labels_the_kept_lines_only(tokenizer):
    from gloss.train.examples import encode_dense, encode_example
    from gloss.train.model import token_policy

    policy = token_policy(tokenizer)
    history = [f"Item number {i} with a fairly long descriptive title" for i in range(40)]
    dense = encode_dense(tokenizer, policy, history, "The target", max_seq_length=200)
    last = encode_example(tokenizer, policy, history, "The target", max_seq_length=200)
    assert dense["input_ids"] == last["input_ids"] and len(dense["input_ids"]) <= 200
    kept = history[-(dense["num_targets"]):]
    assert 1 < len(kept) < len(history)
    labelled = tokenizer.decode([t for t in dense["labels"] if t != -100], skip_special_tokens=True)
    assert labelled == "".join(render_item(t) + "\n" for t in kept[1:]) + render_item("The target")
    assert history[-len(kept) - 1] not in tokenizer.decode(dense["input_ids"])


def test_dense_history_block_is_the_templates_first_field():
    """encode_dense finds the history lines where the edge's template puts them."""
    head = PROMPT_TEMPLATE[:PROMPT_TEMPLATE.index("{}")]
    assert build_prompt(["a", "b"]).startswith(head + "Title: a\nTitle: b\n")


def test_dense_target_loss_equals_the_last_objectives_loss(tiny_llama_dir, tokenizer, prepared_dir):
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from gloss.train.examples import encode_dense, encode_example, load_split_titles
    from gloss.train.model import token_policy

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    policy = token_policy(tokenizer)
    for _, history, target in load_split_titles(prepared_dir, Split.train)[:3]:
        dense = encode_dense(tokenizer, policy, history, target, 1024)
        last = encode_example(tokenizer, policy, history, target, 1024)
        with torch.no_grad():
            # The `last` objective's loss: transformers' own token-mean loss on its labels.
            want = model(input_ids=torch.tensor([last["input_ids"]]), labels=torch.tensor([last["labels"]])).loss
            logits = model(input_ids=torch.tensor([dense["input_ids"]])).logits[0, :-1]
        labels = torch.tensor(dense["labels"][1:])
        per_token = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")
        target_part = torch.tensor(last["labels"][1:]) != -100
        assert (labels[target_part] == torch.tensor(last["labels"][1:])[target_part]).all()
        assert torch.isclose(per_token[target_part].mean(), want, rtol=1e-5)
        assert (labels[~target_part] != -100).sum() > 0  # and the history titles add terms of their own


def test_dense_training_texts_never_hold_validation_or_test_items(tokenizer, prepared_dir):
    from gloss.edge.catalog import load_catalog
    from gloss.train.examples import encode_texts, load_split_titles
    from gloss.train.model import token_policy

    policy = token_policy(tokenizer)
    catalog = load_catalog(prepared_dir / "items.jsonl.gz")
    sequences = {r["user"]: r["items"] for r in read_jsonl(prepared_dir / "sequences.jsonl.gz")}
    held_out = {r["user"]: {r["target"]} for r in read_jsonl(prepared_dir / "test.jsonl.gz")}
    for r in read_jsonl(prepared_dir / "validation.jsonl.gz"):
        held_out[r["user"]].add(r["target"])
    rows = load_split_titles(prepared_dir, Split.train)
    texts = encode_texts(rows, "dense", tokenizer, policy, 1024)
    assert len(texts) == len(rows) == len(sequences)
    for (row, _, _), text in zip(rows, texts, strict=True):
        items = sequences[row["user"]][:-len(held_out[row["user"]])]  # held-out items are the newest ones
        assert not set(items) & held_out[row["user"]]
        titles = catalog.titles_of(items)
        want = policy.encode_prompt(tokenizer, build_prompt(titles[:-1])) + policy.encode_completion(
            tokenizer, render_item(titles[-1]))
        assert text["input_ids"] == want and text["num_targets"] == len(items) - 1


def test_encode_splits_counts_one_dense_text_and_n_minus_1_targets_per_user(make_config, tokenizer):
    from gloss.train.loop import encode_splits, load_split_titles
    from gloss.train.model import token_policy

    config = make_config(objective="dense", max_seq_length=1024)
    train_set, eval_set = encode_splits(config, tokenizer, token_policy(tokenizer))
    rows = load_split_titles(config.data_dir, Split.train)
    assert len(train_set) == len(rows)
    assert sum(e["num_targets"] for e in train_set) == sum(len(h) for _, h, _ in rows)
    assert all(e["num_targets"] == 1 for e in eval_set)  # validation stays the paper's example


def test_only_texts_that_cannot_fit_are_skipped(tokenizer):
    from gloss.train.examples import encode_texts
    from gloss.train.model import token_policy

    policy = token_policy(tokenizer)
    rows = [({}, ["short", "titles"], "ok"), ({}, ["word " * 300], "too long " * 100)]
    assert len(encode_texts(rows, "dense", tokenizer, policy, 256)) == 1
    with pytest.raises(InputError, match="all 1 training texts exceed --max-seq-length 256"):
        encode_texts(rows[1:], "last", tokenizer, policy, 256)


def test_dense_keeps_single_item_histories_as_target_only_texts(tokenizer):
    from gloss.train.examples import encode_example, encode_texts
    from gloss.train.model import token_policy

    policy = token_policy(tokenizer)
    rows = [({}, ["a", "b"], "c"), ({}, ["x"], "y")]
    texts = encode_texts(rows, "dense", tokenizer, policy, 256)
    assert texts[1] == encode_example(tokenizer, policy, ["x"], "y", 256)
    with pytest.raises(InputError, match="none of the 1 training texts has a history title"):
        encode_texts(rows[1:], "dense", tokenizer, policy, 256)


@pytest.mark.slow
def test_train_end_to_end_with_the_dense_objective(make_config):
    from gloss.train.loop import train

    out_dir = train(make_config(objective="dense"))
    manifest = json.loads((out_dir / "gloss_manifest.json").read_text())
    assert manifest["config"]["objective"] == "dense" and manifest["result"]["global_step"] == 2
    assert manifest["data"]["train_examples"] == 20 and manifest["data"]["train_targets"] > 20

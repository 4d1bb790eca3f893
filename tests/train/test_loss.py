"""gloss.train.loss and gloss.train.packing against the plain path: full logits on right-padded batches.

Reference: transformers' own loss (``LlamaForCausalLM.forward`` with labels and ``num_items_in_batch``, full
logits, padded batch with an attention mask). Tolerance: fp32 on CPU, the two paths only reorder sums, so
losses agree to 1e-5 relative and LoRA gradients to 1e-4 relative (max abs difference / max abs value).
"""

from __future__ import annotations

import copy

import pytest

from gloss.edge.errors import InputError
from gloss.edge.splits import Split

LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-4


@pytest.fixture(scope="module")
def lora_model(tiny_llama_dir):
    """The tiny model with LoRA on all projections; LoRA B is random so that every LoRA gradient is non-zero."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    lora = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "up_proj"])
    model = peft.get_peft_model(model, lora)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    return model


@pytest.fixture(scope="module")
def examples(tiny_llama_dir, prepared_dir):
    from transformers import AutoTokenizer

    from gloss.train.loop import encode_example, load_split_titles
    from gloss.train.model import token_policy

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    policy = token_policy(tokenizer)
    rows = load_split_titles(prepared_dir, Split.train)[:4]
    encoded = [encode_example(tokenizer, policy, h, t, max_seq_length=160) for _, h, t in rows]
    assert len({len(e["input_ids"]) for e in encoded}) > 1  # different lengths, so the padded batch pads
    return encoded, policy.pad_token_id


@pytest.fixture(scope="module")
def reference(lora_model, examples):
    """The plain path: transformers' loss on full logits of the right-padded batch."""
    from gloss.train.loop import CompletionCollator

    features, pad = examples
    return _loss_and_grads(lora_model, CompletionCollator(pad)(features))


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    num_items = (batch["labels"] != -100).sum()
    loss = model(**batch, num_items_in_batch=num_items).loss
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def _assert_close(reference, got):
    (ref_loss, ref_grads), (loss, grads) = reference, got
    assert abs(loss.item() - ref_loss.item()) <= LOSS_RTOL * abs(ref_loss.item())
    assert ref_grads.keys() == grads.keys() and len(grads) > 0
    for name, ref in ref_grads.items():
        assert ref.abs().max() > 0, name
        assert (grads[name] - ref).abs().max() <= GRAD_RTOL * ref.abs().max(), name


@pytest.mark.parametrize("chunk_size", [5, 4096])
def test_chunked_loss_matches_full_logits_loss_and_gradients(lora_model, examples, reference, chunk_size):
    from gloss.train.loop import CompletionCollator
    from gloss.train.loss import install_completion_loss

    features, pad = examples
    batch = CompletionCollator(pad)(features)
    patched = install_completion_loss(copy.deepcopy(lora_model), chunk_size=chunk_size)
    _assert_close(reference, _loss_and_grads(patched, batch))


@pytest.mark.parametrize(("attn", "rows"), [("sdpa", "several"), ("eager", "several"), ("sdpa", "one")])
def test_packed_loss_matches_padded_loss(lora_model, examples, reference, attn, rows):
    """Several rows (some padded) or one row: no attention across examples, positions restart."""
    from gloss.train.loss import install_completion_loss
    from gloss.train.packing import PackingCollator

    features, pad = examples
    lengths = sorted(len(f["input_ids"]) for f in features)
    pack_length = lengths[-1] + lengths[0] if rows == "several" else sum(lengths)
    model = copy.deepcopy(lora_model)
    model.get_base_model().config._attn_implementation = attn
    model.config.use_cache = False
    packed = PackingCollator(pad, pack_length)(features)
    assert packed["input_ids"].shape[0] < len(features) and "attention_mask" not in packed
    _assert_close(reference, _loss_and_grads(model, packed))  # transformers' loss on packed rows
    install_completion_loss(model)
    _assert_close(reference, _loss_and_grads(model, packed))  # the default path: packed + chunked


@pytest.mark.slow
def test_packed_rows_attend_across_examples_without_restarted_positions(lora_model, examples, reference):
    """The check above has teeth: the same rows with running positions give another loss."""
    import torch

    from gloss.train.packing import PackingCollator

    features, pad = examples
    model = copy.deepcopy(lora_model)
    model.config.use_cache = False
    packed = PackingCollator(pad, 1000)(features)
    packed["position_ids"] = torch.arange(packed["input_ids"].shape[1]).expand_as(packed["input_ids"])
    assert abs(_loss_and_grads(model, packed)[0].item() - reference[0].item()) > 1e-3


@pytest.mark.parametrize("chunk_size", [7, 4096])
def test_dense_loss_is_the_same_packed_or_padded(lora_model, tiny_llama_dir, prepared_dir, chunk_size):
    """Dense texts (many label spans each): packed + chunked == transformers' loss on padded full logits."""
    from transformers import AutoTokenizer

    from gloss.train.examples import CompletionCollator, encode_texts, load_split_titles
    from gloss.train.loss import install_completion_loss
    from gloss.train.model import token_policy
    from gloss.train.packing import PackingCollator

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    policy = token_policy(tokenizer)
    features = encode_texts(load_split_titles(prepared_dir, Split.train)[4:8], "dense", tokenizer, policy, 200)
    assert sum(f["num_targets"] for f in features) > len(features)
    reference = _loss_and_grads(lora_model, CompletionCollator(policy.pad_token_id)(features))
    model = copy.deepcopy(lora_model)
    model.config.use_cache = False
    install_completion_loss(model, chunk_size=chunk_size)
    lengths = sorted(len(f["input_ids"]) for f in features)
    packed = PackingCollator(policy.pad_token_id, lengths[-1] + lengths[0])(features)
    assert packed["input_ids"].shape[0] < len(features)
    _assert_close(reference, _loss_and_grads(model, packed))


def test_pack_rows_keeps_every_example_once_within_the_length():
    from gloss.train.packing import pack_rows

    lengths = [5, 9, 3, 7, 10, 1, 4]
    rows = pack_rows(lengths, 10)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 10 for row in rows)
    assert len(rows) == 4  # ceil(39 / 10): first fit decreasing is optimal here


def test_packing_shorter_than_an_example_is_an_input_error():
    from gloss.train.packing import PackingCollator

    with pytest.raises(InputError, match="--pack-length 4 is shorter than the longest example"):
        PackingCollator(0, 4)([{"input_ids": [1, 2, 3, 4, 5], "labels": [-100, -100, 3, 4, 5]}])


def test_whole_history_objective_uses_every_item_after_the_first():
    from gloss.train.examples import expand_histories

    rows = [({"user": "u"}, ["a", "b"], "c"), ({"user": "v"}, ["x"], "y")]
    assert [(h, t) for _, h, t in expand_histories(rows)] == [
        (["a"], "b"), (["a", "b"], "c"), (["x"], "y")
    ]

"""gloss.train.generate: 5-beam queries from transformers in the queries-file format gloss-edge eval reads."""

from __future__ import annotations

import pytest

from gloss.edge.catalog import load_catalog
from gloss.edge.evaluate import cases_from_queries_file
from gloss.edge.files import read_jsonl
from gloss.edge.splits import Split


@pytest.fixture(scope="module")
def loaded(tiny_llama_dir):
    from gloss.train.generate import load_for_generation

    return load_for_generation(tiny_llama_dir)


def test_generate_queries_writes_rows_edge_eval_reads(
    loaded, tiny_llama_dir, prepared_dir, tmp_path, monkeypatch
):
    import gloss.train.generate as evaluate

    monkeypatch.setattr(evaluate, "load_for_generation", lambda _: loaded)
    out = evaluate.generate_queries(
        tiny_llama_dir,
        prepared_dir,
        Split.validation,
        tmp_path / "q.jsonl.gz",
        num_beams=5,
        max_new_tokens=6,
        batch_size=2,
    )
    rows = list(read_jsonl(out))
    split_rows = list(read_jsonl(prepared_dir / "validation.jsonl.gz"))
    assert [(r["user"], r["history"], r["target"]) for r in rows] == [
        (r["user"], r["history"], r["target"]) for r in split_rows
    ]
    assert all(len(r["queries"]) == 5 and all(q.startswith("Title: ") for q in r["queries"]) for r in rows)
    assert all("\n" not in q for r in rows for q in r["queries"])
    cases = cases_from_queries_file(out, load_catalog(prepared_dir / "items.jsonl.gz"))
    assert [c.user for c in cases] == [r["user"] for r in rows]


def test_batched_left_padded_beams_equal_one_by_one(loaded, prepared_dir):
    from gloss.train.generate import beam_queries
    from gloss.train.loop import load_split_titles

    histories = [h for _, h, _ in load_split_titles(prepared_dir, Split.test, max_users=3)]
    assert len({len(h) for h in histories}) > 1  # different prompt lengths -> real left padding
    batched = beam_queries(loaded, histories, num_beams=3, max_new_tokens=5)
    single = [beam_queries(loaded, [h], num_beams=3, max_new_tokens=5)[0] for h in histories]
    assert batched == single


def test_beams_match_transformers_generate_on_the_plain_prompt(loaded, prepared_dir):
    import torch

    from gloss.edge.prompt import build_prompt, parse_generated, render_item
    from gloss.train.generate import beam_queries
    from gloss.train.loop import load_split_titles

    _, history, _ = load_split_titles(prepared_dir, Split.test, max_users=1)[0]
    ids = torch.tensor([loaded.policy.encode_prompt(loaded.tokenizer, build_prompt(history))])
    out = loaded.model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        num_beams=4,
        num_return_sequences=4,
        max_new_tokens=5,
        do_sample=False,
        eos_token_id=list(loaded.stop_ids),
        pad_token_id=loaded.policy.pad_token_id,
    )
    want = [
        render_item(parse_generated(t))
        for t in loaded.tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
    ]
    assert beam_queries(loaded, [history], num_beams=4, max_new_tokens=5) == [want]


def test_newline_tokens_stop_generation(loaded):
    from gloss.train.generate import newline_token_ids

    newline = loaded.tokenizer("a\nb", add_special_tokens=False)["input_ids"]
    stops = set(loaded.stop_ids)
    assert loaded.policy.eos_token_id in stops
    assert any(i in stops for i in newline)
    assert set(newline_token_ids(loaded.tokenizer)) <= stops

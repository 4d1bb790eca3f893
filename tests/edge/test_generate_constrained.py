"""Catalogue-constrained beams: llama.cpp (our beam search + trie) == transformers (``prefix_allowed_tokens_fn``)
on the same f32 tiny model, and every constrained beam is a catalogue title (slow: builds a GGUF)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("llama_cpp")

from gloss.edge.catalog import load_catalog  # noqa: E402
from gloss.edge.errors import InputError  # noqa: E402
from gloss.edge.generation.generate import GenerationConfig, LlamaCppGenerator  # noqa: E402
from gloss.edge.trie import TokenTrie  # noqa: E402
from gloss.export.gguf import write_gguf  # noqa: E402
from gloss.export.hf_models import load_causal_lm  # noqa: E402
from gloss.export.trie import build_trie_gguf, build_trie_hf, hf_vocab_fingerprint  # noqa: E402
from gloss.train.generate import is_placeholder, prefix_allowed_tokens  # noqa: E402
from tests.conftest import FIXTURES  # noqa: E402

NUM_TITLES = 150
# transformers' early stopping counts its placeholder hypotheses (train.generate.is_placeholder) as finished, so
# constrained parity is checked with early_stopping=False, which the train side uses.
CONFIG = GenerationConfig(num_beams=5, num_return_sequences=5, n_ctx=512, early_stopping=False)


@pytest.fixture(scope="module")
def titles() -> list[str]:
    return list(load_catalog(FIXTURES / "beauty_items.jsonl").titles[:NUM_TITLES])


@pytest.fixture(scope="module")
def tiny_f32_gguf(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gguf(tiny_llama_dir, tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf", "f32")


@pytest.fixture(scope="module")
def trie(titles: list[str], tiny_f32_gguf: Path) -> TokenTrie:
    return build_trie_gguf(titles, tiny_f32_gguf)


@pytest.fixture(scope="module")
def runtimes(tiny_llama_dir: Path, tiny_f32_gguf: Path, trie: TokenTrie) -> Iterator[tuple[LlamaCppGenerator, Any]]:
    model, _ = load_causal_lm(tiny_llama_dir, "float32")
    with LlamaCppGenerator.load(tiny_f32_gguf, CONFIG, add_bos=True, constraint=trie) as gen:
        yield gen, model.eval()


def hf_constrained(
    model: Any, prompt: list[int], gen: LlamaCppGenerator, trie: TokenTrie
) -> list[tuple[list[int], float]]:
    """transformers' beam search with the same settings, stop tokens and trie (the train-side hook); its
    placeholder hypotheses (dead beams scored about -1e9, which fill slots no real title can) are left out."""
    settings = gen.settings
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            num_beams=settings.num_beams,
            num_return_sequences=gen.config.num_return_sequences,
            max_new_tokens=settings.max_new_tokens,
            do_sample=False,
            early_stopping=settings.early_stopping,
            length_penalty=settings.length_penalty,
            eos_token_id=sorted(settings.stop_token_ids),
            pad_token_id=trie.meta.end_token_ids[0],
            prefix_allowed_tokens_fn=prefix_allowed_tokens(trie, len(prompt), trie.meta.end_token_ids[0]),
            output_scores=True,
            return_dict_in_generate=True,
        )
    results = []
    for seq, score in zip(out.sequences, out.sequences_scores, strict=True):
        generated = seq[len(prompt) :].tolist()
        end = next((i + 1 for i, t in enumerate(generated) if t in settings.stop_token_ids), len(generated))
        if not is_placeholder(float(score)):
            results.append((generated[:end], float(score)))
    return results


def histories(titles: list[str]) -> list[list[str]]:
    return [titles[i : i + 3] for i in (0, 90)]


def test_constrained_llama_cpp_beams_equal_constrained_transformers_beams(runtimes, trie, titles):
    gen, model = runtimes
    assert gen.settings.max_new_tokens == trie.meta.max_length  # every catalogue title fits
    for history in histories(titles):
        prompt = gen.prompt_tokens(history)
        ours = gen.beam_search(prompt)
        theirs = hf_constrained(model, prompt, gen, trie)
        assert [tokens for tokens, _ in ours] == [tokens for tokens, _ in theirs]
        np.testing.assert_allclose([s for _, s in ours], [s for _, s in theirs], atol=1e-3)


@pytest.mark.parametrize("early_stopping", [True, False])
def test_every_constrained_beam_is_a_catalogue_title_with_its_positions(tiny_f32_gguf, trie, titles, early_stopping):
    config = replace(CONFIG, early_stopping=early_stopping)
    with LlamaCppGenerator.load(tiny_f32_gguf, config, add_bos=True, constraint=trie) as gen:
        for history in histories(titles):
            queries = gen.generate(history)
            assert 1 <= len(queries) <= CONFIG.num_return_sequences
            assert [q.score for q in queries] == sorted((q.score for q in queries), reverse=True)
            for query in queries:
                assert query.title in titles
                assert query.items == tuple(i for i, t in enumerate(titles) if t == query.title)


def test_free_beams_stay_free(tiny_f32_gguf: Path, titles):
    with LlamaCppGenerator.load(tiny_f32_gguf, replace(CONFIG, max_new_tokens=8), add_bos=True) as gen:
        queries = gen.generate(histories(titles)[0])
    assert gen.settings.constraint is None and all(q.items is None for q in queries)
    assert not all(q.title in titles for q in queries)  # a random tiny model writes no catalogue title freely


def test_transformers_tokenizer_builds_the_same_trie(tiny_llama_dir: Path, trie: TokenTrie, titles):
    _, tokenizer = load_causal_lm(tiny_llama_dir, "float32")
    assert hf_vocab_fingerprint(tokenizer) == trie.meta.tokenizer_sha256
    hf_trie = build_trie_hf(titles, tokenizer, trie.meta.end_token_ids[0])
    assert dict(hf_trie.sequences()) == dict(trie.sequences())


def test_a_trie_of_another_tokenizer_is_refused(tiny_f32_gguf: Path, trie: TokenTrie):
    arrays = {name: getattr(trie, name) for name in ("offsets", "tokens", "leaf_nodes", "leaf_offsets", "leaf_items")}
    other = TokenTrie(arrays, replace(trie.meta, tokenizer_sha256="0" * 64))
    with pytest.raises(InputError, match="tiny-f32.gguf: built for another tokenizer than the generator's"):
        LlamaCppGenerator.load(tiny_f32_gguf, CONFIG, constraint=other)


def test_train_side_constrained_queries_are_catalogue_titles(tiny_llama_dir: Path, titles):
    from gloss.train.generate import LoadedGenerator, beam_queries, newline_token_ids
    from gloss.train.model import token_policy

    model, tokenizer = load_causal_lm(tiny_llama_dir, "float32")
    policy = token_policy(tokenizer)
    loaded = LoadedGenerator(model.eval(), tokenizer, policy, 1024, None)
    loaded.stop_ids = tuple(sorted({policy.eos_token_id, *newline_token_ids(tokenizer)}))
    trie = build_trie_hf(titles, tokenizer, policy.eos_token_id)
    (queries,) = beam_queries(loaded, histories(titles)[:1], num_beams=3, trie=trie)
    assert 1 <= len(queries) <= 3
    assert all(query.removeprefix("Title: ") in titles for query in queries)


@pytest.mark.parametrize("early_stopping", [True, False])
@pytest.mark.parametrize("max_new_tokens", [3, 7])
def test_free_beams_cut_by_the_length_cap_equal_transformers(
    runtimes, tiny_f32_gguf: Path, titles, early_stopping, max_new_tokens
):
    """A random tiny model never ends a title, so every hypothesis finishes at the length cap: the branch that
    real models reach only when a beam runs away (both stopping rules)."""
    _, model = runtimes
    config = replace(CONFIG, max_new_tokens=max_new_tokens, early_stopping=early_stopping)
    with LlamaCppGenerator.load(tiny_f32_gguf, config, add_bos=True) as gen:
        for history in histories(titles):
            prompt = gen.prompt_tokens(history)
            ours = gen.beam_search(prompt)
            with torch.no_grad():
                out = model.generate(
                    torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                    num_beams=5, num_return_sequences=5, max_new_tokens=max_new_tokens, do_sample=False,
                    early_stopping=early_stopping, eos_token_id=sorted(gen.stop_token_ids),
                    pad_token_id=model.generation_config.pad_token_id or 0, output_scores=True,
                    return_dict_in_generate=True,
                )
            theirs = [(seq[len(prompt) :].tolist(), float(score)) for seq, score in
                      zip(out.sequences, out.sequences_scores, strict=True)]
            assert [t for t, _ in ours] == [t for t, _ in theirs]
            np.testing.assert_allclose([s for _, s in ours], [s for _, s in theirs], atol=1e-4)

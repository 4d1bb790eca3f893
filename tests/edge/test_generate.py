"""Beam search on llama.cpp: bookkeeping vs exhaustive search; the runtime on the real SmolLM2 GGUF."""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from gloss.edge.errors import InputError
from gloss.edge.generation.beam import Beams, BeamSettings, beam_step, log_softmax, run_beam_search
from gloss.edge.generation.generate import GenerationConfig, LlamaCppGenerator
from gloss.edge.generation.gguf_header import check_gguf
from gloss.edge.prompt import build_prompt, parse_generated

HISTORY = [
    "Xtreme Brite Brightening Gel 1oz.",
    "WAWO 15 Color Professionl Makeup Eyeshadow Concealer Palette",
]


def fake_log_probs(prefix: tuple[int, ...], vocab: int) -> np.ndarray:
    """A deterministic 'model': next-token log-probs seeded by the prefix."""
    seed = int.from_bytes(hashlib.sha256(repr(prefix).encode()).digest()[:4], "little")
    return log_softmax(np.random.default_rng(seed).normal(scale=2.0, size=vocab))


def fake_search(vocab: int, settings: BeamSettings) -> Beams:
    """Run the production loop with the fake model."""

    def advance(beams: Beams, parents: tuple[int, ...]) -> np.ndarray:
        return np.stack([fake_log_probs(seq, vocab) for seq in beams.sequences])

    return run_beam_search(fake_log_probs((), vocab)[None, :], advance, settings)


def exhaustive(vocab: int, settings: BeamSettings) -> list[tuple[float, tuple[int, ...]]]:
    """Every sequence that ends at its first stop token or at the length limit, scored and sorted."""
    out = []
    for length in range(1, settings.max_new_tokens + 1):
        for seq in itertools.product(range(vocab), repeat=length):
            stops = [t in settings.stop_token_ids for t in seq]
            if any(stops[:-1]) or (not stops[-1] and length < settings.max_new_tokens):
                continue
            total = sum(fake_log_probs(seq[:i], vocab)[t] for i, t in enumerate(seq))
            out.append((total / length**settings.length_penalty, seq))
    return sorted(out, key=lambda item: -item[0])


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0, -1.0])
@pytest.mark.parametrize(("vocab", "max_new_tokens", "stops"), [(3, 3, {0}), (2, 4, {1}), (4, 2, set())])
def test_beam_search_with_all_beams_equals_exhaustive_search(vocab, max_new_tokens, stops, length_penalty):
    settings = BeamSettings(vocab**max_new_tokens, max_new_tokens, frozenset(stops), length_penalty)
    expected = exhaustive(vocab, settings)
    got = fake_search(vocab, settings).finished
    assert [seq for _, seq in got] == [seq for _, seq in expected]
    np.testing.assert_allclose([s for s, _ in got], [s for s, _ in expected], rtol=1e-12)


def test_beam_step_only_top_num_beams_candidates_can_finish():
    settings = BeamSettings(num_beams=2, max_new_tokens=10, stop_token_ids=frozenset({3}))
    log_probs = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))  # the stop token ranks 4th
    beams, parents = beam_step(Beams(), log_probs, settings)
    assert beams.finished == () and beams.sequences == ((0,), (1,)) and parents == (0, 0)
    log_probs = np.log(np.array([[0.5, 0.3, 0.15, 0.05], [0.1, 0.1, 0.1, 0.7]]))
    beams, parents = beam_step(beams, log_probs, settings)
    # Candidates: (0,0) .25, (1,3) .21, (0,1) .15 -> the stop candidate ranks 2nd, so it finishes.
    assert [seq for _, seq in beams.finished] == [(1, 3)]
    assert beams.finished[0][0] == pytest.approx(np.log(0.3 * 0.7) / 2)
    assert beams.sequences == ((0, 0), (0, 1)) and parents == (0, 0)


def test_beam_step_stops_when_running_beams_cannot_beat_finished_ones():
    settings = BeamSettings(num_beams=1, max_new_tokens=10, stop_token_ids=frozenset({0}))
    beams, _ = beam_step(Beams(), np.log(np.array([[0.6, 0.4]])), settings)
    # Best running beam (token 1, log .4) judged at length 1 is below the finished (token 0, log .6).
    assert beams.finished[0][1] == (0,) and beams.done


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"num_beams": 0}, "--num-beams"),
        ({"num_beams": 200}, "--num-beams"),
        ({"num_return_sequences": 6}, "--num-return-sequences"),
        ({"num_return_sequences": 0}, "--num-return-sequences"),
        ({"max_new_tokens": 0}, "--max-new-tokens"),
        ({"n_ctx": 50}, "--n-ctx"),
        ({"length_penalty": float("nan")}, "--length-penalty"),
        ({"num_threads": 0}, "--num-threads"),
        ({"kv_type": "q8_0"}, "--kv-type"),
    ],
)
def test_generation_config_rejects_bad_values(kwargs, flag):
    with pytest.raises(InputError, match=flag):
        GenerationConfig(**kwargs)


def test_load_rejects_missing_and_non_gguf_files(tmp_path: Path):
    with pytest.raises(InputError, match="no such file"):
        LlamaCppGenerator.load(tmp_path / "missing.gguf")
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(InputError, match="not a GGUF file"):
        LlamaCppGenerator.load(bad)


def test_load_rejects_gguf_of_another_architecture(tmp_path: Path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "bert.gguf"
    writer = gguf.GGUFWriter(path, "bert")
    writer.add_uint32("bert.block_count", 2)
    writer.add_array("tokenizer.ggml.tokens", ["a", "b"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(InputError, match="is a bert GGUF.*gloss-export gguf"):
        LlamaCppGenerator.load(path)


def test_gguf_header_reader_agrees_with_llama_cpp(smollm2_gguf_path: Path, generator: LlamaCppGenerator):
    meta = check_gguf(smollm2_gguf_path, stop_after="general.architecture")
    assert meta["general.architecture"] == generator._model.metadata()["general.architecture"]


@pytest.fixture(scope="module")
def generator(smollm2_gguf_path: Path) -> LlamaCppGenerator:
    pytest.importorskip("llama_cpp")
    config = GenerationConfig(num_beams=3, num_return_sequences=3, max_new_tokens=4, n_ctx=512, max_batch_users=3)
    gen = LlamaCppGenerator.load(smollm2_gguf_path, config, add_bos=True)
    yield gen
    gen.close()


def test_all_beams_of_a_step_go_in_one_llama_decode_call(generator: LlamaCppGenerator, monkeypatch):
    import llama_cpp

    calls: list[tuple[int, set[int]]] = []
    real_decode = llama_cpp.llama_decode

    def counting_decode(ctx, batch):
        calls.append((batch.n_tokens, {batch.seq_id[i][0] for i in range(batch.n_tokens)}))
        return real_decode(ctx, batch)

    monkeypatch.setattr(llama_cpp, "llama_decode", counting_decode)
    generator.prefix_cache.clear()
    prompt = generator.prompt_tokens(HISTORY)
    results = generator.beam_search(prompt)
    steps = generator.stats.num_steps
    assert len(results) == 3 and steps >= max(len(tokens) for tokens, _ in results)
    # The prompt once, then one call per step after the first (the last step's tokens need no decode).
    assert len(calls) == steps and calls[0] == (len(prompt), {0})
    for n_tokens, seqs in calls[1:]:
        assert 1 <= n_tokens <= 3 and len(seqs) == n_tokens


def test_generate_returns_parsed_titles_best_first(generator: LlamaCppGenerator):
    queries = generator.generate(HISTORY)
    assert len(queries) == 3
    assert [q.score for q in queries] == sorted((q.score for q in queries), reverse=True)
    for q in queries:
        assert q.title == parse_generated(q.text)


def test_one_beam_equals_greedy_decoding(smollm2_gguf_path: Path):
    config = GenerationConfig(num_beams=1, num_return_sequences=1, max_new_tokens=6, n_ctx=512)
    with LlamaCppGenerator.load(smollm2_gguf_path, config) as gen:
        greedy = gen.generate_greedy(HISTORY)
        (beam,) = gen.generate(HISTORY)
    assert beam.text == greedy.text
    assert beam.score == pytest.approx(greedy.score, abs=1e-4)


def test_completion_log_probs_equal_one_decode_per_prefix(smollm2_gguf_path: Path):
    """One teacher-forced decode of prompt + completion gives, in row i, the next-token log-probs of decoding
    prompt + completion[:i] on its own (the definition of the conditional distribution, no cache involved).

    Token-by-token decoding with the KV cache (as greedy and beam search run) is the same computation, but
    llama.cpp may pick other kernels for a 1-token batch: on AVX2 builds of 0.3.36 the Q4_1 model's cached rows
    drift by up to ~0.6 nats in the tail of the vocabulary (about what Q4_1 itself costs against transformers),
    so that reference is held to its argmax only."""
    config = GenerationConfig(num_beams=1, num_return_sequences=1, max_new_tokens=6, n_ctx=512, prefix_cache_mb=0)
    with LlamaCppGenerator.load(smollm2_gguf_path, config) as gen:
        prompt = gen.prompt_tokens(HISTORY)
        completion = gen.tokenize(" Title: Xtreme Brite Brightening Gel")[:6]
        forced = gen.completion_log_probs(prompt, completion).copy()
        fresh = np.stack([log_softmax(gen._start([*prompt, *completion[:i]]))[0] for i in range(len(completion))])
        rows = [log_softmax(gen._start(prompt))[0]]
        for i, token in enumerate(completion[:-1]):
            rows.append(log_softmax(gen._decode([token], [len(prompt) + i], [0], 1))[0])
        with pytest.raises(InputError, match="completion tokens"):
            gen.completion_log_probs(prompt, [])
    assert forced.shape == (len(completion), gen.n_vocab)
    np.testing.assert_allclose(forced, fresh, atol=1e-4)
    assert (forced.argmax(axis=1) == np.stack(rows).argmax(axis=1)).all()


def test_stop_tokens_are_eos_and_every_newline_token(generator: LlamaCppGenerator):
    stops = generator.stop_token_ids
    assert generator._model.token_eos() in stops
    assert set(generator.tokenize("a\nb")) & stops  # the newline of a prompt is a stop token
    assert not set(generator.tokenize("Title: Xtreme Brite Gel")) & stops


def test_add_bos_prepends_bos_and_none_follows_the_gguf(
    generator: LlamaCppGenerator, smollm2_gguf_path: Path
):
    with_bos = generator.tokenize("Title: a")
    assert with_bos[0] == generator._model.token_bos()
    with LlamaCppGenerator.load(smollm2_gguf_path, generator.config) as default:
        assert default.add_bos == default._model.add_bos_token()
        assert default.tokenize("Title: a") == (with_bos if default.add_bos else with_bos[1:])


def test_history_is_cut_from_the_oldest_item_to_fit(generator: LlamaCppGenerator):
    long_history = [f"Item number {i} with a rather long descriptive title for testing" for i in range(200)]
    tokens = generator.prompt_tokens(long_history)
    budget = generator.config.max_prompt_tokens
    assert len(tokens) <= budget
    text = generator.detokenize(tokens)
    assert "Item number 199 " in text and "Item number 0 " not in text
    assert len(tokens) + 20 > budget  # it keeps as much history as fits


def test_prompt_too_long_even_after_truncation_is_an_input_error(smollm2_gguf_path: Path):
    config = GenerationConfig(num_beams=2, num_return_sequences=1, max_new_tokens=8, n_ctx=100)
    with LlamaCppGenerator.load(smollm2_gguf_path, config) as gen:
        with pytest.raises(InputError, match="exceeds 92 tokens.*raise --n-ctx"):
            gen.generate(["word " * 200])
        with pytest.raises(InputError, match="more than --n-ctx 100"):
            gen.beam_search(list(range(150)))


def test_prompt_matches_the_shared_template(generator: LlamaCppGenerator):
    assert generator.prompt_tokens(HISTORY) == generator.tokenize(build_prompt(HISTORY))


RETURNING = [*HISTORY, "Maybelline New York Great Lash Washable Mascara, Blackest Black"]
OTHER = ["Neutrogena Oil-Free Acne Wash, 6 Ounce", "CeraVe Moisturizing Cream 16 oz"]


def test_prefix_cache_gives_the_beams_and_scores_of_a_fresh_prompt(smollm2_gguf_path: Path):
    config = GenerationConfig(num_beams=3, num_return_sequences=3, max_new_tokens=4, n_ctx=512)
    with LlamaCppGenerator.load(smollm2_gguf_path, replace(config, prefix_cache_mb=0), add_bos=True) as plain:
        expected = [plain.beam_search(plain.prompt_tokens(h)) for h in (HISTORY, RETURNING, OTHER, HISTORY)]
    with LlamaCppGenerator.load(smollm2_gguf_path, config, add_bos=True) as cached:
        prompts = [cached.prompt_tokens(h) for h in (HISTORY, RETURNING, OTHER, HISTORY)]
        got, decoded = [], []
        for prompt in prompts:
            got.append(cached.beam_search(prompt))
            decoded.append(cached.stats.batch_sizes[0])
    assert [[t for t, _ in r] for r in got] == [[t for t, _ in r] for r in expected]
    np.testing.assert_allclose([[s for _, s in r] for r in got], [[s for _, s in r] for r in expected], atol=1e-6)
    cache = cached.prefix_cache
    assert (cache.hits, cache.misses) == (3, 1)
    assert decoded[0] == len(prompts[0])
    # The returning user decodes only its new item; the same prompt again decodes one token.
    assert decoded[1] < len(prompts[1]) - len(prompts[0]) + 8 and decoded[3] == 3  # no prompt token at all
    assert decoded[2] < len(prompts[2])  # a new user still reuses the prompt header


def test_generate_batch_runs_every_users_beams_in_one_decode_per_step(generator: LlamaCppGenerator, monkeypatch):
    import llama_cpp

    histories = [HISTORY, OTHER, RETURNING]
    calls: list[set[int]] = []
    real_decode = llama_cpp.llama_decode

    def counting_decode(ctx, batch):
        calls.append({batch.seq_id[i][0] for i in range(batch.n_tokens)})
        return real_decode(ctx, batch)

    alone = [generator.generate(h) for h in histories]
    monkeypatch.setattr(llama_cpp, "llama_decode", counting_decode)
    batched = generator.generate_batch(histories)
    assert [len(r) for r in batched] == [3, 3, 3]
    steps = generator.stats.steps_per_user
    assert len(steps) == 3 and len(calls) < sum(steps)  # one at a time needs a decode per step and user
    width = 2 * generator.config.num_beams
    assert max(len({seq // width for seq in seqs}) for seqs in calls) >= 2  # users share decode calls
    for got, expected in zip(batched, alone, strict=True):
        assert got[0].title == expected[0].title  # quantized kernels may swap near ties further down


def test_catalogue_cap_is_the_longest_title_plus_margin(smollm2_gguf_path: Path):
    config = GenerationConfig(num_beams=2, num_return_sequences=2, max_new_tokens=30, n_ctx=256)
    with LlamaCppGenerator.load(smollm2_gguf_path, config, add_bos=True) as gen:
        titles = ["Short", "A much longer title with several more words in it"]
        longest = len(gen.tokenize("Title: " + titles[1])) - gen.add_bos
        assert gen.cap_new_tokens(titles, margin=2) == longest + 1 + 2
        gen.generate(HISTORY)
        assert max(gen.stats.steps_per_user) <= longest + 3
        assert gen.cap_new_tokens(titles * 3 + ["word " * 60]) == 30  # never above --max-new-tokens


def test_warm_prefix_fills_the_cache_without_changing_results(generator: LlamaCppGenerator):
    generator.prefix_cache.clear()
    expected = generator.generate(RETURNING)
    generator.prefix_cache.clear()
    generator.warm_prefix(generator.prompt_tokens(HISTORY))
    assert len(generator.prefix_cache) == 1
    hits = generator.prefix_cache.hits
    got = generator.generate(RETURNING)
    assert generator.prefix_cache.hits == hits + 1
    assert [(q.text, q.score) for q in got] == [(q.text, q.score) for q in expected]

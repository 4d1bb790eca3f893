"""Beam bookkeeping: the stopping rules, and the fast candidate selection against a full-vocabulary reference."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import pytest

from gloss.edge.generation.beam import NEG_INF, Beams, BeamSettings, beam_step, log_softmax


def reference_step(beams: Beams, log_probs: np.ndarray, settings: BeamSettings) -> tuple[Beams, tuple[int, ...]]:
    """transformers' step written plainly: every (beam, token) pair scored in float64, a stable sort of all."""
    num_running, vocab = log_probs.shape
    step_len = len(beams.sequences[0]) + 1
    flat = (np.asarray(beams.scores, dtype=np.float64)[:, None] + log_probs.astype(np.float64)).ravel()
    k = min(flat.size, max(2, 1 + len(settings.stop_token_ids)) * settings.num_beams)
    top = np.argsort(-flat, kind="stable")[:k]
    finished, running = list(beams.finished), []
    for rank, idx in enumerate(top.tolist()):
        parent, token = divmod(idx, vocab)
        if step_len >= settings.max_new_tokens or token in settings.stop_token_ids:
            if rank < settings.num_beams and flat[idx] > NEG_INF:
                finished.append((flat[idx] / step_len**settings.length_penalty, beams.sequences[parent] + (token,)))
        elif len(running) < settings.num_beams:
            running.append((parent, token, float(flat[idx])))
    finished = sorted(finished, key=lambda item: -item[0])[: settings.num_beams]
    if not running:
        done = True
    elif len(finished) < settings.num_beams:
        done = False
    elif settings.early_stopping:
        done = True
    else:
        done = running[0][2] / step_len**settings.length_penalty <= finished[-1][0]
    new = Beams(
        tuple(beams.sequences[p] + (t,) for p, t, _ in running), tuple(s for _, _, s in running),
        tuple(finished), done,
    )
    return new, tuple(p for p, _, _ in running)


def model(prefix: tuple[int, ...], vocab: int, ties: bool) -> np.ndarray:
    """Deterministic next-token log-probs seeded by the prefix; ``ties`` rounds them so many values tie."""
    seed = int.from_bytes(hashlib.sha256(repr(prefix).encode()).digest()[:4], "little")
    logits = np.random.default_rng(seed).normal(scale=3.0, size=vocab)
    if ties:
        logits = np.round(logits)
    return log_softmax(logits.astype(np.float32))


def search(step, settings: BeamSettings, vocab: int, ties: bool = False) -> list[Beams]:
    """Every state of a search driven by ``step`` (the first state is after the prompt)."""
    beams, states = Beams(), []
    while not beams.done:
        beams, _ = step(beams, np.stack([model(seq, vocab, ties) for seq in beams.sequences]), settings)
        states.append(beams)
    return states


@pytest.mark.parametrize("early_stopping", [False, True])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize(("vocab", "num_stops", "num_beams"), [(50, 3, 4), (400, 30, 5), (64, 0, 3)])
def test_beam_step_equals_the_full_vocabulary_reference(vocab, num_stops, num_beams, ties, early_stopping):
    stops = frozenset(range(vocab - num_stops, vocab))
    settings = BeamSettings(num_beams, 12, stops, 1.0, early_stopping)
    got = search(beam_step, settings, vocab, ties)
    expected = search(reference_step, settings, vocab, ties)
    assert [s.sequences for s in got] == [s.sequences for s in expected]
    assert [[seq for _, seq in s.finished] for s in got] == [[seq for _, seq in s.finished] for s in expected]
    np.testing.assert_allclose([s.scores for s in got[-1:]], [s.scores for s in expected[-1:]], rtol=1e-12)


@pytest.mark.parametrize("seed_vocab", [17, 40, 100])
def test_early_stopping_ends_at_the_step_the_last_beam_finishes(seed_vocab):
    """Both rules make the same steps until num_beams titles are finished; early stopping ends right there."""
    settings = BeamSettings(3, 20, frozenset({0, 1, 2}), 1.0, early_stopping=False)
    slow = search(beam_step, settings, seed_vocab)
    fast = search(beam_step, replace(settings, early_stopping=True), seed_vocab)
    full_at = next(i for i, s in enumerate(slow) if len(s.finished) == settings.num_beams or s.done)
    assert len(fast) == full_at + 1
    assert fast[-1].finished == slow[full_at].finished
    assert len(slow) >= len(fast)


def test_length_limit_finishes_every_top_beam():
    settings = BeamSettings(2, 2, frozenset({9}), 1.0, early_stopping=True)
    lp = np.log(np.full((1, 10), 0.1))
    beams, _ = beam_step(Beams(), lp, settings)
    beams, _ = beam_step(beams, np.repeat(lp, 2, axis=0), settings)
    assert beams.done and len(beams.finished) == 2
    assert all(len(seq) == 2 for _, seq in beams.finished)

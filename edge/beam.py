"""Beam-search bookkeeping, pure numpy: candidate selection exactly as transformers' beam search does it.

The llama.cpp generator (gloss.edge.generate) feeds it log-probabilities; tests drive it with fake models and
check it against exhaustive search.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

NEG_INF = -math.inf


@dataclass(frozen=True)
class Beams:
    """State of a beam search between steps.

    Attributes:
        sequences: Generated tokens of each running beam, best first.
        scores: Running beams' summed log-probabilities.
        finished: ``(score, tokens)`` of finished hypotheses, best first, at most ``num_beams``;
            tokens end with the stop token unless the length limit ended them.
        done: True when no running beam can improve the finished ones (or none is left).
    """

    sequences: tuple[tuple[int, ...], ...] = ((),)
    scores: tuple[float, ...] = (0.0,)
    finished: tuple[tuple[float, tuple[int, ...]], ...] = ()
    done: bool = False


@dataclass(frozen=True)
class BeamSettings:
    """What :func:`beam_step` needs besides the state and the log-probabilities."""

    num_beams: int
    max_new_tokens: int
    stop_token_ids: frozenset[int]
    length_penalty: float = 1.0


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def beam_step(beams: Beams, log_probs: np.ndarray, settings: BeamSettings) -> tuple[Beams, tuple[int, ...]]:
    """Advance a beam search by one token, as transformers' ``_beam_search`` does.

    Candidates are all (beam, token) pairs scored by ``beam score + log p(token)``. Of the top
    ``max(2, 1 + number of stop tokens) * num_beams`` candidates, those among the first ``num_beams``
    that end (a stop token, or the length limit) become finished hypotheses scored
    ``sum / new_length ** length_penalty``; the best ``num_beams`` that do not end keep running.
    The search is done when the best running beam, normalised at the current length, cannot beat
    the worst of ``num_beams`` finished hypotheses (transformers' ``early_stopping=False``).

    Args:
        beams: Current state; ``beams.sequences`` has one row per row of ``log_probs``.
        log_probs: ``(num_running, vocab)`` next-token log-probabilities of the running beams.
        settings: Beam width, length limit, stop tokens, length penalty.

    Returns:
        The new state and, for each new running beam, the index of the running beam it extends.
    """
    num_running, vocab = log_probs.shape
    if num_running != len(beams.sequences):
        raise ValueError(f"log_probs has {num_running} rows for {len(beams.sequences)} running beams")
    step_len = len(beams.sequences[0]) + 1  # generated tokens after this step, stop token included
    total = np.asarray(beams.scores, dtype=np.float64)[:, None] + log_probs
    flat = total.ravel()
    k = min(flat.size, max(2, 1 + len(settings.stop_token_ids)) * settings.num_beams)
    top = np.argpartition(-flat, k - 1)[:k] if k < flat.size else np.arange(flat.size)
    top = top[np.lexsort((top, -flat[top]))]  # best first; ties keep the lower index, like a stable topk
    parents, tokens = np.divmod(top, vocab)
    at_limit = step_len >= settings.max_new_tokens
    finished = list(beams.finished)
    running: list[tuple[int, int, float]] = []
    candidates = zip(parents.tolist(), tokens.tolist(), flat[top].tolist(), strict=True)
    for rank, (parent, token, score) in enumerate(candidates):
        if at_limit or token in settings.stop_token_ids:
            if rank < settings.num_beams and score > NEG_INF:
                seq = beams.sequences[parent] + (token,)
                finished.append((score / step_len**settings.length_penalty, seq))
        elif len(running) < settings.num_beams:
            running.append((parent, token, score))
    finished.sort(key=lambda item: -item[0])  # stable: earlier hypotheses win ties
    finished = finished[: settings.num_beams]
    new = Beams(
        sequences=tuple(beams.sequences[p] + (t,) for p, t, _ in running),
        scores=tuple(s for _, _, s in running),
        finished=tuple(finished),
        done=not running or _cannot_improve(running[0][2], finished, step_len, settings),
    )
    return new, tuple(p for p, _, _ in running)


def _cannot_improve(
    best_running: float, finished: list[tuple[float, tuple[int, ...]]], length: int, settings: BeamSettings
) -> bool:
    """transformers' early-stop heuristic (``early_stopping=False``): the best beam judged at its length."""
    if len(finished) < settings.num_beams:
        return False
    return best_running / length**settings.length_penalty <= finished[-1][0]


def run_beam_search(
    first_log_probs: np.ndarray,
    advance: Callable[[Beams, tuple[int, ...]], np.ndarray],
    settings: BeamSettings,
) -> Beams:
    """Run :func:`beam_step` until done.

    Args:
        first_log_probs: ``(1, vocab)`` log-probabilities after the prompt.
        advance: Given the new state and each running beam's parent index, feeds every running beam's
            last token to the model and returns the next ``(num_running, vocab)`` log-probabilities.
        settings: Beam width, length limit, stop tokens, length penalty.

    Returns:
        The final state; ``finished`` holds the hypotheses, best first.
    """
    beams, parents = beam_step(Beams(), first_log_probs, settings)
    while not beams.done:
        beams, parents = beam_step(beams, advance(beams, parents), settings)
    return beams

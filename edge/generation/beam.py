"""Beam-search bookkeeping, pure numpy: candidate selection exactly as transformers' beam search does it.

The llama.cpp generator (gloss.edge.generation.generate) feeds it log-probabilities; tests drive it with fake models and
check it against exhaustive search.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

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


class TokenConstraint(Protocol):
    """Which tokens a running beam may write next, given the tokens it has generated so far.

    ``gloss.edge.trie.TokenTrie`` implements it (catalogue-constrained beams); an empty array means none.
    """

    def allowed_tokens(self, generated: Sequence[int]) -> np.ndarray: ...


@dataclass(frozen=True)
class BeamSettings:
    """What :func:`beam_step` needs besides the state and the log-probabilities.

    ``constraint`` (optional) masks each running beam's log-probabilities to its allowed tokens.
    """

    num_beams: int
    max_new_tokens: int
    stop_token_ids: frozenset[int]
    length_penalty: float = 1.0
    early_stopping: bool = False  # True: done once num_beams hypotheses are finished (transformers' rule)
    constraint: TokenConstraint | None = None


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in the input's float precision (float32 stays float32, as in transformers)."""
    x = np.asarray(logits)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    shift = x.max(axis=-1, keepdims=True)
    return x - (shift + np.log(np.exp(x - shift).sum(axis=-1, keepdims=True)))


def constrain_log_probs(
    log_probs: np.ndarray, sequences: Sequence[Sequence[int]], constraint: TokenConstraint
) -> np.ndarray:
    """Set every token a beam may not write to -inf, as transformers' ``prefix_allowed_tokens_fn`` does.

    The mask is applied to the log-softmax output without renormalising (transformers adds a 0/-inf mask
    to the log-probabilities), so a constrained beam's score is the model's own log-probability.
    """
    out = np.full_like(log_probs, NEG_INF)
    for row, generated in enumerate(sequences):
        allowed = constraint.allowed_tokens(generated)
        out[row, allowed] = log_probs[row, allowed]
    return out


def beam_step(beams: Beams, log_probs: np.ndarray, settings: BeamSettings) -> tuple[Beams, tuple[int, ...]]:
    """Advance a beam search by one token, as transformers' ``_beam_search`` does.

    Candidates are all (beam, token) pairs scored by ``beam score + log p(token)``. Of the top
    ``max(2, 1 + number of stop tokens) * num_beams`` candidates, those among the first ``num_beams``
    that end (a stop token, or the length limit) become finished hypotheses scored
    ``sum / new_length ** length_penalty``; the best ``num_beams`` that do not end keep running.
    With ``num_beams`` finished hypotheses the search is done: at once with ``settings.early_stopping``
    (transformers' ``early_stopping=True``), else when the best running beam, normalised at the current
    length, cannot beat the worst of them (``early_stopping=False``).

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
    if settings.constraint is not None:
        log_probs = constrain_log_probs(log_probs, beams.sequences, settings.constraint)
    step_len = len(beams.sequences[0]) + 1  # generated tokens after this step, stop token included
    k = min(num_running * vocab, max(2, 1 + len(settings.stop_token_ids)) * settings.num_beams)
    flat_ids, flat = _top_candidates(np.asarray(beams.scores, dtype=np.float64), log_probs, k)
    top = np.lexsort((flat_ids, -flat))  # best first; ties keep the lower index, like a stable topk
    parents, tokens = np.divmod(flat_ids[top], vocab)
    at_limit = step_len >= settings.max_new_tokens
    finished = list(beams.finished)
    running: list[tuple[int, int, float]] = []
    candidates = zip(parents.tolist(), tokens.tolist(), flat[top].tolist(), strict=True)
    for rank, (parent, token, score) in enumerate(candidates):
        if rank >= settings.num_beams and len(running) == settings.num_beams:
            break  # later candidates can neither finish nor run
        if at_limit or token in settings.stop_token_ids:
            if rank < settings.num_beams and score > NEG_INF:
                seq = beams.sequences[parent] + (token,)
                finished.append((score / step_len**settings.length_penalty, seq))
        elif len(running) < settings.num_beams and score > NEG_INF:
            # A -inf beam (every token masked by a constraint) can never finish: transformers keeps it as
            # dead weight; dropping it changes no result and ends the search once no beam can finish.
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


def _top_candidates(scores: np.ndarray, log_probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat ids (``beam * vocab + token``) and float64 scores of the ``k`` best (beam, token) pairs, unordered.

    Each beam's best ``k`` tokens are picked first (float32 argpartition, no full-vocabulary float64 copy):
    the global top ``k`` lies in their union because a beam's score is a constant shift of its row.
    """
    num_running, vocab = log_probs.shape
    if k >= vocab:
        ids = np.arange(num_running * vocab)
        return ids, (scores[:, None] + log_probs).ravel()
    cols = np.argpartition(log_probs, vocab - k, axis=1)[:, vocab - k :]
    total = scores[:, None] + np.take_along_axis(log_probs, cols, axis=1).astype(np.float64)
    ids = (cols + np.arange(num_running)[:, None] * vocab).ravel()
    total = total.ravel()
    if total.size > k:
        kth = total[np.argpartition(-total, k - 1)[k - 1]]
        # Everything at least as good as the k-th: a tie there keeps every tied candidate, so lexsort picks
        # the lower ids, as a stable topk does.
        keep = np.flatnonzero(total >= kth)
        ids, total = ids[keep], total[keep]
    return ids, total


def _cannot_improve(
    best_running: float, finished: list[tuple[float, tuple[int, ...]]], length: int, settings: BeamSettings
) -> bool:
    """transformers' stop test: ``early_stopping=True`` stops at ``num_beams`` finished hypotheses;
    ``False`` also needs the best running beam, judged at its current length, not to beat the worst of them."""
    if len(finished) < settings.num_beams:
        return False
    if settings.early_stopping:
        return True
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

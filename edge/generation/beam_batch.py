"""Several users' beam searches in one KV context: every running beam of every user in one decode per step.

The scheduler talks to the model through :class:`KvRuntime` (decode a batch, copy/remove sequences, save and
restore a sequence's KV cells), so tests can drive it with a fake; :class:`~.generate.LlamaCppGenerator`
implements it over llama.cpp. Each user owns ``2 * num_beams`` sequence ids (beams ping-pong between the two
halves), a user is admitted when sequence ids and KV cells are free (as another finishes), and a prompt starts from
the KV cells of the longest prefix it shares with an earlier prompt (:class:`~.kvcache.PrefixCache`).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from gloss.edge.generation.beam import Beams, BeamSettings, beam_step, log_softmax
from gloss.edge.generation.kvcache import PrefixCache, PrefixHit

logger = logging.getLogger(__name__)

Results = list[tuple[list[int], float]]
Batch = tuple[list[int], list[int], list[int], list[bool]]  # tokens, positions, sequence ids, wants logits


class KvRuntime(Protocol):
    """What the scheduler needs from a model with a multi-sequence KV cache."""

    def decode(self, tokens: list[int], positions: list[int], seq_ids: list[int], outputs: list[bool]) -> np.ndarray:
        """Logits ``(sum(outputs), vocab)`` of the flagged tokens, in batch order."""
        ...

    def clear(self) -> None: ...

    def seq_cp(self, src: int, dst: int) -> None: ...

    def seq_rm(self, seq: int, start: int = -1) -> None:
        """Remove a sequence's cells from position ``start`` on (-1: all)."""
        ...

    def save_seq(self, seq: int, max_bytes: int) -> tuple[Any, int] | None:
        """A copy of a sequence's KV cells and its size in bytes (None if it failed or would exceed
        ``max_bytes``, checked before anything is copied)."""
        ...

    def load_seq(self, seq: int, state: Any, size: int) -> bool:
        """Restore saved cells into ``seq``; False if they did not fit."""
        ...


@dataclass
class SearchStats:
    """Counters of the last search (tests and benchmarks read them)."""

    num_steps: int = 0  # beam steps, summed over users
    num_decode_calls: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    steps_per_user: list[int] = field(default_factory=list)  # in the order the searches finished


@dataclass(frozen=True)
class BatchLimits:
    """How many users run at once: sequence-id groups, KV cells and tokens per decode."""

    num_return_sequences: int
    max_users: int
    kv_capacity: int
    max_batch_tokens: int


@dataclass
class UserSearch:
    """One user's beam search in flight: its prompt, its sequence ids and its beams."""

    slot: int  # index of the user in the batch
    prompt: list[int]
    seqs: tuple[int, ...]  # 2 * num_beams sequence ids: beams ping-pong between the two halves
    beams: Beams | None = None  # None until the prompt is decoded
    live: tuple[int, ...] = ()  # sequence id of each running beam (the prompt's before the first step)
    half: int = 0  # which half of seqs holds the live beams
    reused: int = 0  # prompt tokens restored from the prefix cache
    first_logits: np.ndarray | None = None  # the prompt's last logits, when the cache had the whole prompt
    reserved: int = 0  # KV cells reserved for this search
    steps: int = 0


def _append(batch: Batch, tokens: Sequence[int], positions: Iterable[int], seq: int) -> None:
    """Add tokens of one sequence to a batch; only the last returns logits."""
    batch[0].extend(tokens)
    batch[1].extend(positions)
    batch[2].extend([seq] * len(tokens))
    batch[3].extend([False] * (len(tokens) - 1) + [True])


class BatchedBeamSearch:
    """Runs beam searches of many prompts over one :class:`KvRuntime`, sharing each decode call.

    Args:
        runtime: The model and its KV cache.
        settings: Beam bookkeeping settings (width, length cap, stop tokens, stopping rule, constraint).
        limits: Users in flight, KV cells and tokens per decode.
        cache: Prefix cache of earlier prompts (``max_bytes=0``: off).
        stats: Counters to update.
        observe: Called after each beam step with (user index, beams, steps) (benchmarks use it).
    """

    def __init__(
        self, runtime: KvRuntime, settings: BeamSettings, limits: BatchLimits, cache: PrefixCache[Any],
        stats: SearchStats, observe: Callable[[int, Beams, int], None] | None = None,
    ) -> None:
        self.runtime, self.settings, self.limits, self.cache, self.stats = runtime, settings, limits, cache, stats
        self.observe = observe
        width = 2 * settings.num_beams
        self._free = [tuple(range(g * width, (g + 1) * width)) for g in range(limits.max_users)]

    def run(self, prompts: Sequence[Sequence[int]]) -> list[Results]:
        """Search every prompt; results in prompt order, each best first."""
        self.runtime.clear()
        pending = deque(range(len(prompts)))
        results: list[Results] = [[] for _ in prompts]
        active: list[UserSearch] = []
        while pending or active:
            batch: Batch = ([], [], [], [])
            for search in active:
                pos = len(search.prompt) + search.steps - 1
                for seq, beam in zip(search.live, search.beams.sequences, strict=True):
                    _append(batch, [beam[-1]], [pos], seq)
            reserved = sum(s.reserved for s in active)
            while pending and self._free:
                search = self._admit(pending[0], list(prompts[pending[0]]), reserved, len(batch[0]))
                if search is None:
                    break
                pending.popleft()
                if search.first_logits is None:  # else the whole prompt and its logits came from the cache
                    _append(batch, search.prompt[search.reused :], range(search.reused, len(search.prompt)),
                            search.seqs[0])
                reserved += search.reserved
                active.append(search)
            logits = self.runtime.decode(*batch) if batch[0] else None
            row, still = 0, []
            for search in active:
                if search.first_logits is not None:
                    rows, search.first_logits = search.first_logits, None
                else:
                    rows, row = logits[row : row + len(search.live)], row + len(search.live)
                if self._advance(search, rows):
                    results[search.slot] = self._finish(search)
                else:
                    still.append(search)
            active = still
        return results

    def warm(self, prompt: Sequence[int]) -> None:
        """Decode a prompt into the prefix cache without searching."""
        if not self.cache.max_bytes or tuple(prompt) in self.cache:
            return
        self.runtime.clear()
        search = self._admit(0, list(prompt), 0, 0)
        batch: Batch = ([], [], [], [])
        _append(batch, search.prompt[search.reused :], range(search.reused, len(search.prompt)), search.seqs[0])
        if batch[0]:
            self._save_prefix(search, self.runtime.decode(*batch)[0])
        self.runtime.clear()
        self._free.append(search.seqs)

    def _admit(self, slot: int, prompt: list[int], reserved: int, batch_tokens: int) -> UserSearch | None:
        """Start a user's search if its KV cells and prompt fit; restore its longest cached prefix."""
        hit = self.cache.find(prompt)
        if hit is not None and hit.length == len(prompt) and hit.tokens != tuple(prompt):
            hit = replace(hit, length=len(prompt) - 1)  # no saved logits there: decode the last token
        need = max(len(prompt), len(hit.tokens) if hit else 0) + self.settings.num_beams * self.settings.max_new_tokens
        reused = hit.length if hit else 0
        fits_batch = batch_tokens + len(prompt) - reused <= self.limits.max_batch_tokens
        if reserved and (reserved + need > self.limits.kv_capacity or not fits_batch):
            return None  # the first user always runs: the context is sized for one
        search = UserSearch(slot, prompt, self._free.pop(0), reserved=need)
        search.live = (search.seqs[0],)
        if hit is None or not self._restore(search.seqs[0], hit):
            if self.cache.max_bytes:
                self.cache.use(None)
            return search
        self.cache.use(hit)
        search.reused = hit.length
        if hit.length == len(prompt):
            search.first_logits = hit.payload[2][None, :]
        return search

    def _restore(self, seq: int, hit: PrefixHit[Any]) -> bool:
        """Restore a saved prompt's KV cells into ``seq`` and drop those after the shared prefix."""
        state, size, _ = hit.payload
        if not self.runtime.load_seq(seq, state, size):
            logger.debug("prefix cache: restoring %d tokens failed; decoding the whole prompt", len(hit.tokens))
            self.runtime.seq_rm(seq)
            return False
        self.runtime.seq_rm(seq, hit.length)
        return True

    def _advance(self, search: UserSearch, logits: np.ndarray) -> bool:
        """One beam step of a search from its rows of logits; move the KV cells; True when it is done."""
        if search.beams is None and self.cache.max_bytes and search.prompt not in self.cache:
            self._save_prefix(search, logits[0])
        beams, parents = beam_step(search.beams or Beams(), log_softmax(logits), self.settings)
        search.beams, search.steps = beams, search.steps + 1
        self.stats.num_steps += 1
        if self.observe is not None:
            self.observe(search.slot, beams, search.steps)
        if beams.done:
            return True
        # Ping-pong: the new beams go to the other half, so no copy overwrites a parent still to be copied.
        target = 1 - search.half
        start = target * self.settings.num_beams
        new = search.seqs[start : start + len(parents)]
        for dst, parent in zip(new, parents, strict=True):
            self.runtime.seq_cp(search.live[parent], dst)
        for old in search.live:
            self.runtime.seq_rm(old)
        search.live, search.half = new, target
        return False

    def _finish(self, search: UserSearch) -> Results:
        """Free a finished search's sequences and return its results."""
        for seq in search.seqs:
            self.runtime.seq_rm(seq)
        self._free.append(search.seqs)
        self.stats.steps_per_user.append(search.steps)
        finished = search.beams.finished[: self.limits.num_return_sequences]
        return [(list(seq), score) for score, seq in finished]

    def _save_prefix(self, search: UserSearch, last_logits: np.ndarray) -> None:
        """Keep the prompt's KV cells (and its last logits) for later prompts that share a prefix."""
        logits = np.array(last_logits, dtype=np.float32)
        saved = self.runtime.save_seq(search.seqs[0], self.cache.max_bytes - logits.nbytes)
        if saved is not None:
            state, size = saved
            self.cache.add(search.prompt, (state, size, logits), size + logits.nbytes)

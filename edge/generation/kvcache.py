"""Prompt prefix cache bookkeeping, pure Python: which saved prompt shares the longest token prefix, LRU.

The llama.cpp generator (gloss.edge.generation.generate) saves each prompt's KV cells (``llama_state_seq_get_data``) and
restores the cells of the longest shared token prefix before decoding a new prompt, as llama.cpp's server does
with ``cache_prompt``: the prompt header is the same for every user, and a returning user's earlier history is
a prefix of the new prompt. This module only decides what to reuse and what to evict; tests drive it alone.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

Payload = TypeVar("Payload")


@dataclass(frozen=True)
class PrefixHit(Generic[Payload]):
    """The saved prompt sharing the longest prefix with a new prompt.

    Attributes:
        tokens: The saved prompt's tokens.
        payload: What was saved with it (for llama.cpp: the sequence's KV state).
        length: Number of leading tokens the new prompt shares with it (> 0).
    """

    tokens: tuple[int, ...]
    payload: Payload
    length: int


def shared_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Number of leading tokens two sequences share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class PrefixCache(Generic[Payload]):
    """Saved prompts with their payloads, bounded by total payload size, least recently used evicted first.

    Args:
        max_bytes: Total payload size kept at most; 0 turns the cache off.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[int, ...], tuple[Payload, int]] = OrderedDict()  # oldest use first
        self.num_bytes = 0
        self.hits = 0
        self.misses = 0
        self.reused_tokens = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, tokens: Sequence[int]) -> bool:
        return tuple(tokens) in self._entries

    def find(self, tokens: Sequence[int], max_length: int | None = None) -> PrefixHit[Payload] | None:
        """The saved prompt sharing the most leading tokens with ``tokens``, or None; changes nothing.

        Args:
            tokens: The new prompt.
            max_length: Reuse at most this many tokens (the caller must still decode at least one).
        """
        best: tuple[tuple[int, ...], int] | None = None
        for saved in self._entries:
            length = shared_prefix_length(saved, tokens)
            if max_length is not None:
                length = min(length, max_length)
            if length > 0 and (best is None or length > best[1]):
                best = (saved, length)
        if best is None:
            return None
        return PrefixHit(best[0], self._entries[best[0]][0], best[1])

    def use(self, hit: PrefixHit[Payload] | None) -> None:
        """Count a lookup (None: a miss) and mark a reused prompt as the most recently used."""
        if hit is None or hit.tokens not in self._entries:
            self.misses += 1
            return
        self._entries.move_to_end(hit.tokens)
        self.hits += 1
        self.reused_tokens += hit.length

    def add(self, tokens: Sequence[int], payload: Payload, num_bytes: int) -> list[tuple[int, ...]]:
        """Save a prompt; drop saved prompts it extends, then the least recently used until it fits.

        A prompt bigger than ``max_bytes`` is not saved.

        Returns:
            The token tuples of the prompts dropped.
        """
        key = tuple(tokens)
        if num_bytes > self.max_bytes:
            return []
        dropped = [saved for saved in self._entries if saved == key[: len(saved)]]  # covered by the new one
        for saved in dropped:
            self._drop(saved)
        while self._entries and self.num_bytes + num_bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)
            dropped.append(oldest)
        self._entries[key] = (payload, num_bytes)
        self.num_bytes += num_bytes
        if dropped:
            logger.debug("prefix cache: dropped %d, kept %d (%d bytes)", len(dropped), len(self), self.num_bytes)
        return dropped

    def _drop(self, key: tuple[int, ...]) -> None:
        _, size = self._entries.pop(key)
        self.num_bytes -= size

    def clear(self) -> None:
        """Forget every saved prompt."""
        self._entries.clear()
        self.num_bytes = 0

"""Prefix cache bookkeeping: longest shared prefix against a brute-force scan, LRU eviction, byte bound."""

from __future__ import annotations

import random

import pytest

from gloss.edge.generation.kvcache import PrefixCache, shared_prefix_length


def brute_longest(saved: list[tuple[int, ...]], tokens: tuple[int, ...]) -> int:
    """Longest shared prefix by comparing every saved prompt token by token."""
    best = 0
    for s in saved:
        n = 0
        while n < min(len(s), len(tokens)) and s[n] == tokens[n]:
            n += 1
        best = max(best, n)
    return best


def test_find_returns_the_longest_shared_prefix_of_any_saved_prompt():
    rng = random.Random(0)
    cache: PrefixCache[str] = PrefixCache(max_bytes=10**9)
    header = (7, 7, 3)
    saved = []
    for i in range(20):
        tokens = header + tuple(rng.randrange(4) for _ in range(rng.randrange(1, 8)))
        cache.add(tokens, f"p{i}", num_bytes=len(tokens))
        saved = [s for s in saved if s != tokens[: len(s)]] + [tokens]
    for _ in range(200):
        query = header + tuple(rng.randrange(4) for _ in range(rng.randrange(0, 8)))
        hit = cache.find(query)
        expected = brute_longest(saved, query)
        assert (hit.length if hit else 0) == expected
        if hit:
            assert hit.tokens in saved and hit.tokens[: hit.length] == query[: hit.length]


def test_find_respects_max_length_and_misses_unrelated_prompts():
    cache: PrefixCache[str] = PrefixCache(max_bytes=100)
    cache.add((1, 2, 3), "a", 3)
    assert cache.find((1, 2, 3), max_length=2).length == 2  # the caller must still decode one token
    assert cache.find((9, 2, 3)) is None
    assert cache.find((1, 2, 3), max_length=0) is None


def test_least_recently_used_prompt_is_dropped_first_and_bytes_stay_bounded():
    cache: PrefixCache[str] = PrefixCache(max_bytes=10)
    cache.add((1,), "a", 4)
    cache.add((2,), "b", 4)
    cache.use(cache.find((1, 5)))  # (1,) is now the most recent
    dropped = cache.add((3,), "c", 4)
    assert dropped == [(2,)]
    assert (1,) in cache and (3,) in cache and (2,) not in cache
    assert cache.num_bytes == 8 <= cache.max_bytes


def test_a_prompt_replaces_saved_prompts_it_extends():
    cache: PrefixCache[str] = PrefixCache(max_bytes=100)
    cache.add((1, 2), "old", 2)
    assert cache.add((1, 2, 3), "new", 3) == [(1, 2)]
    assert len(cache) == 1 and cache.find((1, 2, 3, 4)).payload == "new"


def test_too_big_prompt_or_zero_budget_is_not_saved():
    cache: PrefixCache[str] = PrefixCache(max_bytes=5)
    cache.add((1,), "a", 6)
    assert len(cache) == 0
    off: PrefixCache[str] = PrefixCache(max_bytes=0)
    off.add((1,), "a", 1)
    assert len(off) == 0 and off.find((1,)) is None


def test_use_counts_hits_misses_and_reused_tokens():
    cache: PrefixCache[str] = PrefixCache(max_bytes=100)
    cache.add((1, 2, 3), "a", 3)
    cache.use(cache.find((1, 2, 9)))
    cache.use(cache.find((5,)))
    assert (cache.hits, cache.misses, cache.reused_tokens) == (1, 1, 2)


def test_negative_budget_is_rejected():
    with pytest.raises(ValueError, match="max_bytes"):
        PrefixCache(max_bytes=-1)


@pytest.mark.parametrize(("a", "b", "n"), [((), (1,), 0), ((1, 2), (1, 2), 2), ((1, 2, 3), (1, 4), 1)])
def test_shared_prefix_length(a, b, n):
    assert shared_prefix_length(a, b) == n

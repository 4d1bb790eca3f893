"""The multi-user beam scheduler against a fake KV runtime: batched == one at a time, cache on == cache off."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest

from gloss.edge.generation.beam import BeamSettings
from gloss.edge.generation.beam_batch import BatchedBeamSearch, BatchLimits, SearchStats
from gloss.edge.generation.kvcache import PrefixCache

VOCAB = 16
SETTINGS = BeamSettings(num_beams=3, max_new_tokens=6, stop_token_ids=frozenset({0}), early_stopping=True)


class FakeKv:
    """Each sequence is its token list; logits are a hash of the whole list, so any KV mix-up changes them."""

    def __init__(self) -> None:
        self.seqs: dict[int, list[int]] = {}
        self.decoded_tokens = 0
        self.decode_calls: list[set[int]] = []
        self.save_calls = 0
        self.copied = 0

    def decode(self, tokens, positions, seq_ids, outputs):
        rows = []
        self.decoded_tokens += len(tokens)
        self.decode_calls.append(set(seq_ids))
        for token, pos, seq, out in zip(tokens, positions, seq_ids, outputs, strict=True):
            cells = self.seqs.setdefault(seq, [])
            assert pos == len(cells), f"seq {seq}: token at position {pos} after {len(cells)} cells"
            cells.append(token)
            if out:
                digest = hashlib.sha256(repr(cells).encode()).digest()[:4]
                rows.append(np.random.default_rng(int.from_bytes(digest, "little")).normal(size=VOCAB))
        return np.array(rows, dtype=np.float32)

    def clear(self):
        self.seqs.clear()

    def seq_cp(self, src, dst):
        self.seqs[dst] = list(self.seqs[src])

    def seq_rm(self, seq, start=-1):
        if start < 0:
            self.seqs.pop(seq, None)
        else:
            del self.seqs.setdefault(seq, [])[start:]

    def save_seq(self, seq, max_bytes):
        self.save_calls += 1
        if len(self.seqs[seq]) > max_bytes:
            return None
        self.copied += len(self.seqs[seq])
        return list(self.seqs[seq]), len(self.seqs[seq])

    def load_seq(self, seq, state, size):
        self.seqs[seq] = list(state)
        return True


def run(prompts, max_users=4, kv_capacity=10_000, cache_bytes=0, cache=None):
    kv = FakeKv()
    cache = cache if cache is not None else PrefixCache(cache_bytes)
    limits = BatchLimits(num_return_sequences=3, max_users=max_users, kv_capacity=kv_capacity, max_batch_tokens=64)
    results = BatchedBeamSearch(kv, SETTINGS, limits, cache, SearchStats()).run(prompts)
    return results, kv


def make_prompts(n, seed=0):
    rng = random.Random(seed)
    header = [5, 6, 7]
    return [header + [rng.randrange(1, VOCAB) for _ in range(rng.randrange(1, 9))] for _ in range(n)]


@pytest.mark.parametrize(("max_users", "kv_capacity"), [(2, 10_000), (4, 10_000), (4, 60), (8, 50)])
def test_batched_searches_equal_one_at_a_time(max_users, kv_capacity):
    prompts = make_prompts(7)
    alone = [run([p], max_users=1)[0][0] for p in prompts]
    batched, kv = run(prompts, max_users=max_users, kv_capacity=kv_capacity)
    assert batched == alone
    assert max(len({seq // 6 for seq in seqs}) for seqs in kv.decode_calls) > 1  # users shared decodes


def test_kv_capacity_limits_users_in_flight():
    prompts = make_prompts(6)
    per_user = max(len(p) for p in prompts) + SETTINGS.num_beams * SETTINGS.max_new_tokens
    _, kv = run(prompts, max_users=8, kv_capacity=per_user)  # room for one user at a time
    assert all(len({seq // 6 for seq in seqs}) == 1 for seqs in kv.decode_calls)


def test_prefix_cache_changes_nothing_but_the_tokens_decoded():
    base = make_prompts(5, seed=1)
    prompts = base + [base[0] + [3, 4]] + [base[2]] + make_prompts(3, seed=2)  # returning users, a repeat
    plain, plain_kv = run(prompts, max_users=1)
    cached, cached_kv = run(prompts, max_users=1, cache_bytes=10**6)
    assert cached == plain
    assert cached_kv.decoded_tokens < plain_kv.decoded_tokens


def test_a_small_cache_drops_old_prompts_but_results_stay_the_same():
    prompts = make_prompts(10, seed=3)
    cache: PrefixCache = PrefixCache(max_bytes=3 * (4 * VOCAB + 11))  # 3 prompts at most (logits + tokens)
    got, _ = run(prompts * 2, max_users=3, cache=cache)
    assert got == run(prompts * 2, max_users=3)[0]
    assert cache.num_bytes <= cache.max_bytes and cache.hits > 0


def test_a_prompt_bigger_than_the_cache_is_never_copied():
    """A long prompt that the cache could not keep must not be copied out first (a transient copy of its cells
    is what pushed the server's peak RSS up)."""
    long_prompt = [5, 6, 7] + list(range(1, 40))
    cache: PrefixCache = PrefixCache(max_bytes=4 * VOCAB + 10)  # logits and 10 cells
    _, kv = run([long_prompt], cache=cache)
    assert kv.save_calls == 1 and kv.copied == 0 and len(cache) == 0
    _, kv = run([long_prompt[:8]], cache=cache)
    assert kv.copied == 8 and len(cache) == 1

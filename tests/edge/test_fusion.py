"""Fusion re-ranking: equal to a slow reference implementation on the Beauty fixture, and input checks."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from gloss.edge.catalog import load_catalog
from gloss.edge.errors import InputError
from gloss.edge.fusion import CoPurchase, FusionConfig, FusionRanker
from gloss.edge.prompt import render_item
from gloss.edge.splits import load_sequences
from gloss.export.copurchase import build_copurchase, training_prefixes
from tests.fakes import BruteForceIndex, HashEmbedder

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CONFIGS = [
    FusionConfig(num_neighbors=5, num_successors=3, num_popular=4),
    FusionConfig(query_weight=2.0, text_weight=0.5, copurchase_weight=10.0, popularity_weight=0.3,
                 history_len=4, history_decay=0.6, num_neighbors=8, num_successors=2, num_popular=0),
    FusionConfig(text_weight=1.0, copurchase_weight=3.0, history_len=1, exclude_seen=False, num_neighbors=6),
]


@pytest.fixture(scope="module")
def setup():
    catalog = load_catalog(FIXTURES / "beauty_items.jsonl")
    embedder = HashEmbedder(dim=32)
    index = BruteForceIndex(embedder.embed([render_item(t) for t in catalog.titles]))
    sequences = training_prefixes(load_sequences(FIXTURES / "beauty_sequences.jsonl"), catalog, 0)
    copurchase = build_copurchase([s[:-1] for s in sequences], len(catalog), window=3, decay=0.5)
    return catalog, embedder, index, sequences, copurchase


def reference_rank(vectors, sequences, history, queries, config, k):
    """Slow, loop-by-loop restatement of the documented fusion score and candidate rule."""
    num_items = len(vectors)
    vectors = vectors.astype(np.float64)
    counts: dict[int, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    popularity = [0.0] * num_items
    for seq in sequences:
        for i, a in enumerate(seq):
            popularity[a] += 1
            for gap in range(1, 4):
                if i + gap < len(seq) and seq[i + gap] != a:
                    counts[a][seq[i + gap]] += 0.5 ** (gap - 1)
    recent = list(reversed(history))[: config.history_len]
    raw = [config.history_decay**j for j in range(len(recent))]
    weights = [w / sum(raw) for w in raw]
    seen = set(history) if config.exclude_seen else set()

    def nearest(vec):
        sims = [(-float(np.dot(vec, vectors[c])), c) for c in range(num_items) if c not in seen]
        return [c for _, c in sorted(sims)[: config.num_neighbors]]

    profile = sum(w * vectors[h].astype(np.float64) for w, h in zip(weights, recent, strict=True))
    pool = set(nearest(profile))
    for q in queries if queries is not None else []:
        pool |= set(nearest(q))
    for h in recent:
        row = sorted(counts[h].items(), key=lambda kv: (-kv[1], kv[0]))
        pool |= {b for b, _ in row[: config.num_successors]}
    pool |= set(sorted(range(num_items), key=lambda c: (-popularity[c], c))[: config.num_popular])
    pool -= seen
    top = max(math.log1p(p) for p in popularity)
    scored = []
    for c in pool:
        text = sum(w * float(np.dot(vectors[c], vectors[h])) for w, h in zip(weights, recent, strict=True))
        co = sum(w * counts[h].get(c, 0.0) / sum(counts[h].values()) for w, h in zip(weights, recent, strict=True)
                 if counts[h])
        query = max((float(np.dot(q, vectors[c])) for q in queries), default=0.0) if queries is not None else 0.0
        anchors = [0.0, float(np.dot(vectors[c], vectors[recent[0]]))]
        anchors += [float(np.dot(q, vectors[c])) for q in queries] if queries is not None else []
        cold = max(anchors) if popularity[c] == 0 else 0.0  # the cold-start prior of items never bought
        score = (config.query_weight * query + config.text_weight * text + config.copurchase_weight * co
                 + config.popularity_weight * math.log1p(popularity[c]) / top + config.coldstart_weight * cold)
        scored.append((-score, c))
    return [(c, -s) for s, c in sorted(scored)[:k]]


def canonical(ranked: list[tuple[int, float]]) -> list[tuple[float, int]]:
    """Ranking order with near-equal scores tied and ties ordered by position."""
    return sorted((round(-score, 9), pos) for pos, score in ranked)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("with_queries", [False, True])
def test_rank_equals_reference(setup, config, with_queries):
    catalog, embedder, index, sequences, copurchase = setup
    ranker = FusionRanker(catalog, index, copurchase, config)
    for user, seq in enumerate(sequences[:12]):
        history = seq[:-1]
        queries = None
        if with_queries:
            titles = [catalog.titles[(user * 7 + j) % len(catalog)] for j in range(3)]
            queries = embedder.embed([render_item(t) for t in titles])
        got = ranker.rank(history, queries, k=10)
        want = reference_rank(index.vectors(), [s[:-1] for s in sequences], history, queries, config, 10)
        # Equal scores (items with identical titles) may differ in the last bits between the two sums.
        assert canonical([(i.position, i.score) for i in got]) == canonical(want)
        np.testing.assert_allclose([i.score for i in got], [s for _, s in want], rtol=1e-6, atol=1e-9)
        assert all(a.score >= b.score - 1e-9 for a, b in zip(got, got[1:], strict=False))
        if config.exclude_seen:
            assert not {i.position for i in got} & set(history)


def test_batch_equals_one_by_one(setup):
    catalog, embedder, index, sequences, copurchase = setup
    ranker = FusionRanker(len(catalog), index, copurchase, CONFIGS[0])
    histories = [s[:-1] for s in sequences]
    queries = [embedder.embed([render_item(catalog.titles[u])]) if u % 2 else None for u in range(len(histories))]
    batch = ranker.rank_batch(histories, queries, k=7)
    for history, q, got in zip(histories, queries, batch, strict=True):
        assert got == ranker.rank(history, q, k=7)


def test_zero_weights_fall_back_to_a_single_feature(setup):
    catalog, _, index, sequences, copurchase = setup
    config = FusionConfig(text_weight=0.0, copurchase_weight=1.0, history_len=1, num_popular=0)
    ranker = FusionRanker(catalog, index, copurchase, config)
    history = sequences[0][:-1]
    successors, probs = copurchase.row(history[-1])
    got = ranker.rank(history, k=3)
    keep = [(p, s) for s, p in zip(successors.tolist(), probs.tolist(), strict=True) if s not in history]
    assert [round(i.score, 6) for i in got][: len(keep)] == [round(p, 6) for p, _ in keep][:3]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text_weight": -1.0}, "--text-weight must be a finite number >= 0, got -1.0"),
        ({"copurchase_weight": float("nan")}, "--copurchase-weight must be a finite number >= 0, got nan"),
        ({"history_decay": 0.0}, "--history-decay must be in (0, 1], got 0.0"),
        ({"history_len": 0}, "--history-len must be >= 1, got 0"),
        ({"num_neighbors": 0}, "--num-neighbors must be >= 1, got 0"),
        ({"num_popular": -1}, "--num-popular must be >= 0, got -1"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(InputError) as info:
        FusionConfig(**kwargs)
    assert message in str(info.value)


def test_rank_rejects_bad_input(setup):
    catalog, _, index, _, copurchase = setup
    ranker = FusionRanker(catalog, index, copurchase, FusionConfig())
    cases = [
        (([],), "empty history"),
        (([0, len(catalog)],), f"history position {len(catalog)} is outside the catalogue"),
        (([0], np.zeros((2, 5), np.float32)), "query vectors have shape (2, 5), expected (num_queries, 32)"),
        (([0], None, 0), "--k must be >= 1, got 0"),
    ]
    for args, message in cases:
        with pytest.raises(InputError) as info:
            ranker.rank(*args)
        assert message in str(info.value)


def test_ranker_rejects_mismatched_sizes(setup):
    catalog, _, index, _, _ = setup
    other = build_copurchase([[0, 1]], len(catalog) + 1)
    with pytest.raises(InputError, match=f"catalogue has {len(catalog)} items, index {len(catalog)}, co-purchase"):
        FusionRanker(catalog, index, other, FusionConfig())


def reference_beam_share(vectors, history, signals, config):
    """Beam probability share per item, the slow way: softmax over beam scores, each beam on its item."""
    scores = np.asarray(signals.scores, dtype=np.float64) / config.beam_temperature
    probs = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
    seen = set(history) if config.exclude_seen else set()
    share: dict[int, float] = defaultdict(float)
    for j, q in enumerate(signals.vectors):
        item = -1 if signals.positions is None else int(signals.positions[j])
        if item < 0:  # a free beam lands on its query's nearest (unseen) item
            sims = [(-float(np.dot(q, vectors[c])), c) for c in range(len(vectors)) if c not in seen]
            item = min(sims)[1]
        share[item] += probs[j]
    return share


@pytest.mark.parametrize("constrained", [False, True])
@pytest.mark.parametrize("exclude_seen", [False, True])
def test_beam_feature_is_the_softmax_share_of_beams_on_each_item(setup, constrained, exclude_seen):
    from gloss.edge.fusion import FEATURES, QuerySignals

    catalog, embedder, index, sequences, copurchase = setup
    config = FusionConfig(beam_weight=1.0, beam_temperature=0.5, num_neighbors=5, exclude_seen=exclude_seen)
    ranker = FusionRanker(catalog, index, copurchase, config)
    rng = np.random.default_rng(0)
    for user, seq in enumerate(sequences[:8]):
        history = seq[:-1]
        picks = rng.choice(len(catalog), 4, replace=False)
        vectors = embedder.embed([render_item(catalog.titles[p]) + " x" for p in picks])
        positions = np.array([int(picks[0]), -1, int(picks[2]), int(picks[2])]) if constrained else None
        signals = QuerySignals(vectors, rng.normal(size=4) * 2, positions)
        (cands,) = ranker.candidates_batch([history], [signals])
        want = reference_beam_share(index.vectors(), history, signals, config)
        got = dict(zip(cands.positions.tolist(), cands.features[:, FEATURES.index("beam")].tolist(), strict=True))
        for item, share in want.items():
            if exclude_seen and item in history:
                assert item not in got, user
            else:
                assert got[item] == pytest.approx(share), user  # constrained items are always candidates
        assert sum(v for i, v in got.items() if i not in want) == 0.0


def test_beams_without_scores_weigh_equally_and_bad_signals_are_refused(setup):
    from gloss.edge.fusion import QuerySignals

    catalog, embedder, index, sequences, copurchase = setup
    vectors = embedder.embed([render_item(t) for t in catalog.titles[:3]])
    np.testing.assert_allclose(QuerySignals(vectors).beam_weights(1.0), [1 / 3] * 3)
    ranker = FusionRanker(catalog, index, copurchase, FusionConfig())
    bad = [
        (QuerySignals(vectors, np.zeros(2)), "3 query vectors but beam scores of shape (2,)"),
        (QuerySignals(vectors, None, np.array([0, 1, len(catalog)])), "constrained beam's position is outside"),
    ]
    for signals, message in bad:
        with pytest.raises(InputError, match=re.escape(message)):
            ranker.rank(sequences[0][:-1], signals)
    with pytest.raises(InputError, match="--beam-temperature must be a finite number > 0"):
        FusionConfig(beam_temperature=0.0)


# --- issue 16: memory-mapped statistics, block-by-block counts ---


def test_memory_mapped_statistics_rank_like_in_memory_ones(setup, tmp_path):
    catalog, _, index, sequences, copurchase = setup
    copurchase.save(tmp_path / "c.bin")
    mapped = CoPurchase.load(tmp_path / "c.bin")
    for config in CONFIGS:
        plain, lazy = FusionRanker(catalog, index, copurchase, config), FusionRanker(catalog, index, mapped, config)
        histories = [s[:-1] for s in sequences if len(s) > 2]
        assert lazy.rank_batch(histories, k=10) == plain.rank_batch(histories, k=10)


def test_rankings_equal_those_over_the_one_shot_statistics(setup):
    from tests.export.test_copurchase import one_shot_reference

    catalog, _, index, sequences, copurchase = setup
    prefixes = [s[:-1] for s in sequences]
    indptr, indices, data, popularity = one_shot_reference(prefixes, len(catalog), 3, 0.5)
    cumulative = np.concatenate([[0.0], np.cumsum(data, dtype=np.float64)])  # the old row sums
    old = CoPurchase(indptr, indices, data, popularity, 3, 0.5, sums=cumulative[indptr[1:]] - cumulative[indptr[:-1]])
    histories = [s[:-1] for s in sequences if len(s) > 2]
    for config in CONFIGS:
        got = FusionRanker(catalog, index, copurchase, config).rank_batch(histories, k=10)
        want = FusionRanker(catalog, index, old, config).rank_batch(histories, k=10)
        assert [[i.position for i in r] for r in got] == [[i.position for i in r] for r in want]
        np.testing.assert_allclose([i.score for r in got for i in r], [i.score for r in want for i in r], rtol=1e-12)


@pytest.mark.parametrize("k", [0, 1, 4, 20, 10_000])
def test_most_popular_is_the_stable_full_sort_prefix(setup, k):
    copurchase = setup[4]
    np.testing.assert_array_equal(copurchase.most_popular(k), np.argsort(-copurchase.popularity, kind="stable")[:k])

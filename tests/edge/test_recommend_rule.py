from dataclasses import replace

import numpy as np
import pytest

from gloss.edge.errors import InputError
from gloss.edge.recommend import RetrievalConfig, fill_ranking, query_text, rank_items, search_depth
from tests.fakes import BruteForceIndex


def reference_ranking(queries, items, seen, config):
    """The paper's rule written the slow way over the full similarity matrix."""
    sims = queries @ items.T
    best = {}
    for row in sims:
        order = [int(i) for i in np.argsort(-row, kind="stable") if not (config.exclude_seen and i in seen)]
        for pos in order[: config.per_query]:
            best[pos] = max(best.get(pos, -np.inf), float(row[pos]))
    if config.ties == "raw":  # the paper's code: raw float order; bit-identical floats keep first-seen order
        return sorted(best, key=lambda p: -best[p])[: config.k]
    return sorted(best, key=lambda p: -round(best[p] * 1e5))[: config.k]


@pytest.mark.parametrize("ties", ["raw", "beam-order"])
@pytest.mark.parametrize("per_query", [1, 2])
@pytest.mark.parametrize("exclude_seen", [False, True])
def test_rank_items_matches_full_matrix_reference(per_query, exclude_seen, ties):
    rng = np.random.default_rng(3)
    items = rng.standard_normal((200, 16)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    index = BruteForceIndex(items)
    config = RetrievalConfig(k=10, per_query=per_query, exclude_seen=exclude_seen, ties=ties)
    for trial in range(20):
        queries = items[rng.choice(200, 5)] + 0.3 * rng.standard_normal((5, 16)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        seen = [int(s) for s in rng.choice(200, 8, replace=False)]
        positions, sims = index.search(queries, search_depth(config, len(seen)))
        got = [item.position for item in rank_items(positions, sims, seen, config)]
        assert got == reference_ranking(queries, items, set(seen), config), trial


@pytest.mark.parametrize("exclude_seen", [False, True])
def test_fill_ranking_puts_paper_items_first_then_the_next_neighbours(exclude_seen):
    rng = np.random.default_rng(5)
    items = rng.standard_normal((200, 16)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    config = RetrievalConfig(k=10, per_query=1, exclude_seen=exclude_seen)
    for trial in range(20):
        base = items[rng.choice(200, 2)]  # 5 beams that are near-copies of 2 titles: at most 2 paper items
        queries = base[[0, 0, 1, 0, 1]] + 0.01 * rng.standard_normal((5, 16)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        seen = [int(s) for s in rng.choice(200, 8, replace=False)]
        positions, sims = BruteForceIndex(items).search(queries, search_depth(replace(config, per_query=10), 8))
        paper = reference_ranking(queries, items, set(seen), config)
        deep = reference_ranking(queries, items, set(seen), replace(config, per_query=10))
        ranked = rank_items(positions, sims, seen, config)
        got = [i.position for i in fill_ranking(ranked, positions, sims, seen, config)]
        assert got == (paper + [p for p in deep if p not in paper])[:10], trial
        assert len(paper) < 10 and len(got) == 10 and len(set(got)) == 10


def test_duplicate_queries_keep_one_item_with_its_best_score():
    positions = np.array([[4, 1], [4, 2], [3, 4]])
    sims = np.array([[0.9, 0.5], [0.8, 0.4], [0.95, 0.7]], dtype=np.float32)
    ranked = rank_items(positions, sims, [], RetrievalConfig(k=5))
    assert [(i.position, round(i.score, 2)) for i in ranked] == [(3, 0.95), (4, 0.9)]


def test_seen_items_are_kept_by_default_and_dropped_on_request():
    positions = np.array([[7, 8, 9]])
    sims = np.array([[0.9, 0.8, 0.7]], dtype=np.float32)
    assert rank_items(positions, sims, [7], RetrievalConfig())[0].position == 7
    assert rank_items(positions, sims, [7], RetrievalConfig(exclude_seen=True))[0].position == 8


def test_paper_rule_ranks_by_raw_similarity_and_beam_order_ties_is_an_option():
    positions = np.array([[5], [3], [9]])
    sims = np.array([[0.9999999], [1.0000001], [0.5]], dtype=np.float32)
    assert [i.position for i in rank_items(positions, sims, [], RetrievalConfig())] == [3, 5, 9]
    beam_order = RetrievalConfig(ties="beam-order")
    assert [i.position for i in rank_items(positions, sims, [], beam_order)] == [5, 3, 9]


def test_exact_float_ties_keep_beam_order_under_the_raw_rule():
    positions = np.array([[8], [2], [4]])
    sims = np.array([[0.7], [0.7], [0.9]], dtype=np.float32)
    assert [i.position for i in rank_items(positions, sims, [], RetrievalConfig())] == [4, 8, 2]


def test_padding_positions_are_ignored():
    ranked = rank_items(np.array([[-1, 2]]), np.array([[-np.inf, 0.1]]), [], RetrievalConfig())
    assert [i.position for i in ranked] == [2]


def test_query_text_matches_item_rendering():
    assert query_text("Title: Foo\nTitle: Bar") == "Title: Foo"
    assert query_text("Foo") == "Title: Foo"


@pytest.mark.parametrize("kwargs, flag", [({"k": 0}, "--k"), ({"per_query": 0}, "--per-query"),
                                          ({"ties": "float"}, "--ties")])
def test_config_names_the_bad_flag(kwargs, flag):
    with pytest.raises(InputError, match=flag):
        RetrievalConfig(**kwargs)

"""ItemIndex against brute-force numpy search on seeded random unit vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gloss.edge.errors import InputError
from gloss.edge.index import ItemIndex


def unit_vectors(num: int, dim: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((num, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def brute_force(items: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = queries @ items.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sims, order, axis=1)


@pytest.fixture(scope="module")
def items() -> np.ndarray:
    return unit_vectors(600, 24, seed=0)


@pytest.fixture(scope="module")
def index(items: np.ndarray) -> ItemIndex:
    return ItemIndex.build(items, show_progress=False)


def test_exact_search_equals_brute_force(index: ItemIndex, items: np.ndarray) -> None:
    queries = unit_vectors(50, 24, seed=1)
    positions, sims = index.search(queries, k=10)
    ref_pos, ref_sims = brute_force(items, queries, 10)
    assert positions.dtype == np.int64 and sims.dtype == np.float32 and positions.shape == (50, 10)
    np.testing.assert_array_equal(positions, ref_pos)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-5)
    assert (np.diff(sims, axis=1) <= 0).all()


def test_item_vector_finds_itself_first(index: ItemIndex, items: np.ndarray) -> None:
    positions, sims = index.search(items[[5, 77, 599]], k=1)
    assert positions[:, 0].tolist() == [5, 77, 599]
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-5)


def test_hnsw_recall_at_10_vs_brute_force() -> None:
    items = unit_vectors(3000, 32, seed=2)
    queries = unit_vectors(200, 32, seed=3)
    positions, sims = ItemIndex.build(items, show_progress=False).search(queries, k=10, exact=False)
    ref_pos, _ = brute_force(items, queries, 10)
    recall = np.mean(
        [len(set(a) & set(b)) / 10 for a, b in zip(positions.tolist(), ref_pos.tolist(), strict=True)]
    )
    assert recall >= 0.99
    np.testing.assert_allclose(sims, np.take_along_axis(queries @ items.T, positions, axis=1), atol=1e-5)


@pytest.mark.parametrize("exact", [True, False])
def test_k_larger_than_index_pads(exact: bool) -> None:
    items = unit_vectors(3, 8, seed=4)
    queries = unit_vectors(2, 8, seed=5)
    positions, sims = ItemIndex.build(items, show_progress=False).search(queries, k=5, exact=exact)
    ref_pos, ref_sims = brute_force(items, queries, 3)
    np.testing.assert_array_equal(positions[:, :3], ref_pos)
    np.testing.assert_allclose(sims[:, :3], ref_sims, atol=1e-5)
    assert (positions[:, 3:] == -1).all() and np.isneginf(sims[:, 3:]).all()


@pytest.mark.parametrize("exact", [True, False])
def test_single_query_vector(index: ItemIndex, items: np.ndarray, exact: bool) -> None:
    positions, sims = index.search(items[42], k=3, exact=exact)
    assert positions.shape == (1, 3) and positions[0, 0] == 42


@pytest.mark.parametrize("view", [True, False])
def test_save_load_round_trip(tmp_path: Path, index: ItemIndex, items: np.ndarray, view: bool) -> None:
    path = tmp_path / "items.usearch"
    index.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["items.usearch"]  # no temp file left behind
    loaded = ItemIndex.load(path, view=view)
    assert len(loaded) == len(items) and loaded.dim == items.shape[1]
    queries = unit_vectors(20, 24, seed=6)
    for exact in (True, False):
        got, got_sims = loaded.search(queries, k=7, exact=exact)
        want, want_sims = index.search(queries, k=7, exact=exact)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_allclose(got_sims, want_sims, atol=1e-6)


@pytest.mark.parametrize(
    ("queries", "k", "message"),
    [
        (np.zeros((2, 23), dtype=np.float32), 3, "dim 23 but the index has dim 24"),
        (np.full((1, 24), np.nan, dtype=np.float32), 3, "NaN"),
        (np.array([["a"] * 24]), 3, "dtype"),
        (np.zeros((2, 2, 24), dtype=np.float32), 3, "2-D"),
        (np.zeros((0, 24), dtype=np.float32), 3, "at least one row"),
        (np.zeros((1, 24), dtype=np.float32), 0, "k must be a positive integer"),
    ],
)
def test_search_rejects_bad_queries(index: ItemIndex, queries: np.ndarray, k: int, message: str) -> None:
    with pytest.raises(InputError, match=message):
        index.search(queries, k=k)


def test_build_rejects_non_finite_vectors() -> None:
    vectors = unit_vectors(4, 8, seed=7)
    vectors[2, 3] = np.inf
    with pytest.raises(InputError, match="row 2 contains NaN or infinity"):
        ItemIndex.build(vectors, show_progress=False)


def test_load_rejects_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such index file"):
        ItemIndex.load(tmp_path / "missing.usearch")
    garbage = tmp_path / "garbage.usearch"
    garbage.write_bytes(b"not an index" * 10)
    with pytest.raises(InputError, match="not a usearch index"):
        ItemIndex.load(garbage)

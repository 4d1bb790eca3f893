"""ItemIndex against brute-force numpy search on seeded random unit vectors (f32, and f16/i8 stored vectors)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gloss.edge.errors import InputError
from gloss.edge.index import DEFAULT_INDEX_DTYPE, INDEX_DTYPES, ItemIndex, read_index_header

# Largest rounding error of one stored component |x| < 1: half a float16 step below 1; for i8 one step of
# 1/127, since usearch 2.26 truncates toward zero (0.0300 is stored as 3/127, 0.0315 as 3/127 too).
ROUNDING = {"f32": 0.0, "f16": 2.0**-12, "i8": 1 / 127}


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
    return ItemIndex.build(items, show_progress=False, dtype="f32")


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
    positions, sims = ItemIndex.build(items, show_progress=False, dtype="f32").search(queries, k=10, exact=False)
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
    positions, sims = ItemIndex.build(items, show_progress=False, dtype="f32").search(queries, k=5, exact=exact)
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


@pytest.fixture(scope="module")
def compact(items: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> dict[str, ItemIndex]:
    """f16 and i8 indexes of ``items``, saved and loaded back (memory-mapped) as a bundle opens them."""
    root = tmp_path_factory.mktemp("compact")
    out = {}
    for dtype in ("f16", "i8"):
        ItemIndex.build(items, show_progress=False, dtype=dtype).save(root / f"{dtype}.usearch")
        out[dtype] = ItemIndex.load(root / f"{dtype}.usearch")
    return out


@pytest.mark.parametrize("dtype", ["f16", "i8"])
def test_compact_index_stores_vectors_within_rounding(compact: dict[str, ItemIndex], items: np.ndarray,
                                                      dtype: str, tmp_path: Path) -> None:
    index = compact[dtype]
    assert index.dtype == dtype
    stored = index.vectors()
    assert stored.dtype == np.float32 and stored.shape == items.shape
    assert np.abs(stored - items).max() <= ROUNDING[dtype] + 1e-7
    assert not np.array_equal(stored, items)  # really rounded, not stored as f32
    # A freshly built index searches the same stored vectors as the saved and loaded one.
    built = ItemIndex.build(items, show_progress=False, dtype=dtype)
    np.testing.assert_array_equal(built.vectors(), stored)


@pytest.mark.parametrize("dtype", ["f16", "i8"])
def test_compact_exact_search_equals_brute_force_over_stored_vectors(compact: dict[str, ItemIndex],
                                                                     dtype: str) -> None:
    queries = unit_vectors(50, 24, seed=8)
    positions, sims = compact[dtype].search(queries, k=10)
    ref_pos, ref_sims = brute_force(compact[dtype].vectors(), queries, 10)
    np.testing.assert_array_equal(positions, ref_pos)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-5)


@pytest.mark.parametrize("dtype", ["f16", "i8"])
def test_compact_top_k_matches_f32_up_to_rounding(compact: dict[str, ItemIndex], items: np.ndarray,
                                                  dtype: str) -> None:
    """Similarities move by at most |q|_1 * rounding, so the top-k differs from f32 only among near ties."""
    queries = unit_vectors(50, 24, seed=9)
    k = 10
    positions, sims = compact[dtype].search(queries, k=k)
    exact = queries @ items.T
    bound = np.abs(queries).sum(axis=1, keepdims=True) * ROUNDING[dtype] + 1e-6
    assert (np.abs(sims - np.take_along_axis(exact, positions, axis=1)) <= bound).all()
    kth_best = -np.sort(-exact, axis=1)[:, k - 1 : k]
    assert (np.take_along_axis(exact, positions, axis=1) >= kth_best - 2 * bound).all()


def test_loaded_index_reopens_its_file_after_reading_vectors(tmp_path: Path, items: np.ndarray) -> None:
    """vectors() lets go of the mapped file (RSS); HNSW search and save must still work afterwards."""
    ItemIndex.build(items, show_progress=False, dtype="f16").save(tmp_path / "a.usearch")
    loaded = ItemIndex.load(tmp_path / "a.usearch")
    queries = unit_vectors(5, 24, seed=10)
    exact_pos, _ = loaded.search(queries, k=5)  # reads the float32 matrix, releases the file
    hnsw_pos, _ = loaded.search(queries, k=5, exact=False)
    np.testing.assert_array_equal(hnsw_pos, exact_pos)
    loaded.save(tmp_path / "b.usearch")
    again = ItemIndex.load(tmp_path / "b.usearch")
    assert (len(again), again.dim, again.dtype, again.expansion_search) == (600, 24, "f16", loaded.expansion_search)
    np.testing.assert_array_equal(again.vectors(), loaded.vectors())


def test_index_dtype_in_header_and_rejects_unknown(tmp_path: Path, items: np.ndarray) -> None:
    assert DEFAULT_INDEX_DTYPE in INDEX_DTYPES
    for dtype in INDEX_DTYPES:
        ItemIndex.build(items[:20], show_progress=False, dtype=dtype).save(tmp_path / f"{dtype}.usearch")
        assert read_index_header(tmp_path / f"{dtype}.usearch") == {"dim": 24, "num_items": 20, "dtype": dtype}
    assert ItemIndex.build(items[:20], show_progress=False).dtype == DEFAULT_INDEX_DTYPE
    with pytest.raises(InputError, match="--index-dtype must be one of f32, f16, i8, got 'f64'"):
        ItemIndex.build(items[:20], show_progress=False, dtype="f64")

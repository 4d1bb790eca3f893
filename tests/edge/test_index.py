"""ItemIndex against brute-force numpy search on seeded random unit vectors (f32, and f16/i8 stored vectors):
exact and approximate (HNSW) search, memory-mapped files, segments with removed rows as updates leave them."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from gloss.edge import index as index_module
from gloss.edge import topk as topk_module
from gloss.edge.errors import InputError
from gloss.edge.files import sha256_file
from gloss.edge.index import (
    DEFAULT_INDEX_DTYPE,
    HNSW_MIN_ITEMS,
    INDEX_DTYPES,
    ItemIndex,
    choose_kind,
    read_index_header,
)
from gloss.edge.vectors import VectorFileWriter, VectorStore, open_vectors, quantize, read_rows, write_vectors

# Largest rounding error of one stored component |x| < 1: half a float16 step below 1; for i8 half a step of
# 1/127 (round to nearest).
ROUNDING = {"f32": 0.0, "f16": 2.0**-12, "i8": 0.5 / 127}


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


def recall_at_10(found: np.ndarray, expected: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found.tolist(), expected.tolist(), strict=True)]))


def test_hnsw_recall_at_10_vs_brute_force() -> None:
    """The approximate index (graph candidates re-ranked on the stored vectors) against brute force."""
    items = unit_vectors(3000, 32, seed=2)
    queries = unit_vectors(200, 32, seed=3)
    index = ItemIndex.build(items, show_progress=False, dtype="f32", kind="hnsw", threads=1)  # deterministic
    assert index.kind == "hnsw" and not index.exact_default
    positions, sims = index.search(queries, k=10)
    ref_pos, _ = brute_force(items, queries, 10)
    assert recall_at_10(positions, ref_pos) >= 0.99
    # Whatever it finds carries the exact similarity, best first.
    np.testing.assert_allclose(sims, np.take_along_axis(queries @ items.T, positions, axis=1), atol=1e-5)
    assert (np.diff(sims, axis=1) <= 0).all()
    # exact=True (--exact) scans every item whatever the kind.
    exact_pos, _ = index.search(queries, k=10, exact=True)
    np.testing.assert_array_equal(exact_pos, ref_pos)


def test_kind_follows_the_catalogue_size() -> None:
    assert choose_kind(HNSW_MIN_ITEMS - 1) == "exact" and choose_kind(HNSW_MIN_ITEMS) == "hnsw"
    small = ItemIndex.build(unit_vectors(50, 8, seed=11), show_progress=False)
    assert small.kind == "exact" and small.exact_default


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


@pytest.mark.parametrize("kind", ["exact", "hnsw"])
def test_saved_index_is_memory_mapped_and_searches_like_the_one_in_memory(tmp_path: Path, items: np.ndarray,
                                                                          kind: str) -> None:
    index = ItemIndex.build(items, show_progress=False, dtype="f16", kind=kind)
    entries: dict = {}
    section = index.save(tmp_path, "idx", entries=entries)
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == sorted(
        ["vectors.npy"] + (["graph.usearch"] if kind == "hnsw" else []))  # no temp file left behind
    assert entries["idx/vectors.npy"] == {"size": (tmp_path / "idx/vectors.npy").stat().st_size,
                                          "sha256": sha256_file(tmp_path / "idx/vectors.npy")}  # hashed while written
    assert section["kind"] == kind and section["num_items"] == len(items) and section["dtype"] == "f16"
    loaded = ItemIndex.open(tmp_path, section)
    assert isinstance(loaded.store.segments[0], np.memmap) and loaded.store.segments[0].dtype == np.float16
    assert (len(loaded), loaded.dim, loaded.kind) == (len(items), items.shape[1], kind)
    np.testing.assert_array_equal(np.asarray(loaded.store), np.asarray(index.store))
    queries = unit_vectors(20, 24, seed=6)
    # an exact index builds a graph in memory for exact=False, one per object and on every core, so two of them
    # may differ (thread order); the hnsw kind's loaded graph is the saved one
    for exact in (True, False, None) if kind == "hnsw" else (True, None):
        got, got_sims = loaded.search(queries, k=7, exact=exact)
        want, want_sims = index.search(queries, k=7, exact=exact)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_allclose(got_sims, want_sims, atol=1e-6)


def test_blocked_exact_search_equals_the_in_memory_path(items: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above EXACT_CACHE_BYTES exact search scans the stored rows block by block: same top-k as the float32 path."""
    index = ItemIndex.build(items, show_progress=False, dtype="f16")
    queries = unit_vectors(30, 24, seed=12)
    cached_pos, cached_sims = index.search(queries, k=10)
    monkeypatch.setattr(index_module, "EXACT_CACHE_BYTES", 0)
    monkeypatch.setattr(topk_module, "BLOCK_ROWS", 64)
    blocked_pos, blocked_sims = ItemIndex.build(items, show_progress=False, dtype="f16").search(queries, k=10)
    np.testing.assert_array_equal(blocked_pos, cached_pos)
    np.testing.assert_allclose(blocked_sims, cached_sims, atol=1e-6)


@pytest.mark.parametrize("cache", [True, False])
def test_segments_with_removed_rows_search_like_the_compacted_matrix(items: np.ndarray, cache: bool,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """An updated index (segments + removed rows) and the rebuild of its live rows give bit-identical results."""
    if not cache:
        monkeypatch.setattr(index_module, "EXACT_CACHE_BYTES", 0)
    stored = quantize(items, "f16")
    removed = np.array([0, 7, 250, 399, 400, 599])
    updated = ItemIndex(VectorStore([stored[:250], stored[250:400], stored[400:]], removed))
    live = np.delete(stored, removed, axis=0)
    rebuilt = ItemIndex(VectorStore([live]))
    assert len(updated) == len(live) == len(items) - len(removed)
    np.testing.assert_array_equal(updated.store[[0, 6, 244, 593]], live[[0, 6, 244, 593]].astype(np.float32))
    queries = np.vstack([unit_vectors(25, 24, seed=13), live[[3, 3, 100]].astype(np.float32)])
    for block_rows in (topk_module.BLOCK_ROWS, 97):
        monkeypatch.setattr(topk_module, "BLOCK_ROWS", block_rows)
        got, got_sims = updated.search(queries, k=12)
        want, want_sims = rebuilt.search(queries, k=12)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got_sims, want_sims)


def test_hnsw_searches_rows_after_the_graph_and_never_returns_removed_ones(items: np.ndarray) -> None:
    """After an update the graph covers the first rows, later rows are scanned exactly, removed rows are dropped."""
    more = unit_vectors(150, 24, seed=14)
    # one thread: a graph built on every core depends on thread order, and its recall here varied around 0.99
    base = ItemIndex.build(items, show_progress=False, dtype="f32", kind="hnsw", threads=1)
    removed = np.array([1, 42, 300, 650])
    store = VectorStore([base.store.segments[0], quantize(more, "f32")], removed)
    updated = base.with_store(store)
    assert updated.graph_rows == len(items) < store.num_physical
    live = np.delete(np.vstack([items, more]), removed, axis=0)
    queries = np.vstack([unit_vectors(40, 24, seed=15), more[:10]])
    found, sims = updated.search(queries, k=10)
    ref_pos, _ = brute_force(live, queries, 10)
    assert recall_at_10(found, ref_pos) >= 0.99
    assert (found[40:, 0] == np.arange(len(items) - 3, len(items) + 7)).all()  # new rows find themselves
    np.testing.assert_allclose(sims, np.take_along_axis(queries @ live.T, found, axis=1), atol=1e-5)
    updated.extend_graph(threads=1)  # the graph takes the new rows in
    assert updated.graph_rows == store.num_physical
    assert recall_at_10(updated.search(queries, k=10)[0], ref_pos) >= 0.99


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


BROKEN_FILES = [
    ("missing-vectors", lambda d: (d / "index/vectors.npy").unlink(), "no such vectors file"),
    ("foreign-vectors", lambda d: (d / "index/vectors.npy").write_bytes(b"not an index" * 10), "not a vectors .npy"),
    ("truncated-vectors", lambda d: _cut(d / "index/vectors.npy", 10), "truncated or changed"),
    ("padded-vectors", lambda d: _append(d / "index/vectors.npy"), "truncated or changed"),
    ("missing-graph", lambda d: (d / "index/graph.usearch").unlink(), "no such graph file"),
    ("foreign-graph", lambda d: (d / "index/graph.usearch").write_bytes(bytes(300)), "not a usearch index"),
]


def _cut(path: Path, num_bytes: int) -> None:
    path.write_bytes(path.read_bytes()[:-num_bytes])


def _append(path: Path) -> None:
    with open(path, "ab") as handle:
        handle.write(b"\0" * 8)


@pytest.mark.parametrize(("case", "breakage", "message"), BROKEN_FILES, ids=[b[0] for b in BROKEN_FILES])
def test_open_rejects_missing_foreign_and_truncated_files(tmp_path: Path, items: np.ndarray, case: str, breakage,
                                                         message: str) -> None:
    section = ItemIndex.build(items[:100], show_progress=False, kind="hnsw").save(tmp_path)
    breakage(tmp_path)
    with pytest.raises(InputError, match=message) as info:
        ItemIndex.open(tmp_path, section).search(items[:2], k=3)
    assert "\n" not in str(info.value)


@pytest.fixture(scope="module")
def compact(items: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> dict[str, ItemIndex]:
    """f16 and i8 indexes of ``items``, saved and opened back (memory-mapped) as a bundle opens them."""
    root = tmp_path_factory.mktemp("compact")
    out = {}
    for dtype in ("f16", "i8"):
        section = ItemIndex.build(items, show_progress=False, dtype=dtype).save(root, dtype)
        out[dtype] = ItemIndex.open(root, section)
    return out


@pytest.mark.parametrize("dtype", ["f16", "i8"])
def test_compact_index_stores_vectors_within_rounding(compact: dict[str, ItemIndex], items: np.ndarray,
                                                      dtype: str, tmp_path: Path) -> None:
    index = compact[dtype]
    assert index.dtype == dtype
    stored = np.asarray(index.vectors())
    assert stored.dtype == np.float32 and stored.shape == items.shape
    assert np.abs(stored - items).max() <= ROUNDING[dtype] + 1e-7
    assert not np.array_equal(stored, items)  # really rounded, not stored as f32
    # A freshly built index searches the same stored vectors as the saved and loaded one.
    built = ItemIndex.build(items, show_progress=False, dtype=dtype)
    np.testing.assert_array_equal(np.asarray(built.vectors()), stored)


@pytest.mark.parametrize("dtype", ["f16", "i8"])
def test_compact_exact_search_equals_brute_force_over_stored_vectors(compact: dict[str, ItemIndex],
                                                                     dtype: str) -> None:
    queries = unit_vectors(50, 24, seed=8)
    positions, sims = compact[dtype].search(queries, k=10)
    ref_pos, ref_sims = brute_force(np.asarray(compact[dtype].vectors()), queries, 10)
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


def test_index_dtype_in_header_and_rejects_unknown(tmp_path: Path, items: np.ndarray) -> None:
    assert DEFAULT_INDEX_DTYPE in INDEX_DTYPES
    for dtype in INDEX_DTYPES:
        section = ItemIndex.build(items[:20], show_progress=False, dtype=dtype).save(tmp_path, dtype)
        assert read_index_header(tmp_path / section["file"]) == {"dim": 24, "num_items": 20, "dtype": dtype}
    assert ItemIndex.build(items[:20], show_progress=False).dtype == DEFAULT_INDEX_DTYPE
    with pytest.raises(InputError, match="--index-dtype must be one of f32, f16, i8, got 'f64'"):
        ItemIndex.build(items[:20], show_progress=False, dtype="f64")


def test_vector_file_is_written_in_chunks_and_hashed_as_written(tmp_path: Path, items: np.ndarray) -> None:
    """The streaming writer gives the bytes np.save gives, and announces no file until every row came."""
    path = tmp_path / "v.npy"
    with VectorFileWriter(path, len(items), items.shape[1], "f16") as writer:
        for start in range(0, len(items), 77):
            writer.write(items[start : start + 77])
    reference = tmp_path / "ref.npy"
    np.save(reference, items.astype(np.float16))
    assert path.read_bytes() == reference.read_bytes()
    assert writer.entry == {"size": path.stat().st_size, "sha256": sha256_file(path)}
    with pytest.raises(InputError, match="5 rows written, 6 announced"), VectorFileWriter(
        tmp_path / "short.npy", 6, items.shape[1], "f16"
    ) as short:
        short.write(items[:5])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.npy", "v.npy"]


def test_new_f16_storage_searches_exactly_like_the_old_usearch_file(tmp_path: Path, items: np.ndarray) -> None:
    """Bundles before issue 16 stored the vectors in a usearch f16 file and searched them exactly as float32: the
    .npy path stores the same f16 values and returns the same positions and similarities, bit for bit."""
    from gloss.edge.hnsw import usearch_index_class

    old = usearch_index_class()(ndim=items.shape[1], metric="ip", dtype="f16")
    old.add(np.arange(len(items), dtype=np.uint64), items)
    old.save(str(tmp_path / "index.usearch"))
    legacy = ItemIndex.open_legacy(tmp_path / "index.usearch")
    new = ItemIndex.build(items, show_progress=False, dtype="f16")
    np.testing.assert_array_equal(np.asarray(legacy.vectors()), np.asarray(new.vectors()))
    queries = np.vstack([unit_vectors(40, 24, seed=16), items[:5]])
    for k in (1, 10, 50):
        got, got_sims = new.search(queries, k)
        want, want_sims = legacy.search(queries, k)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got_sims, want_sims)


def test_blocked_exact_search_breaks_ties_by_position_across_duplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Thirty copies of one vector straddle the top-10 cut: the lowest positions win, as in the float32 path."""
    monkeypatch.setattr(index_module, "EXACT_CACHE_BYTES", 0)
    items = unit_vectors(500, 24, seed=17)
    items[np.arange(40, 340, 10)] = items[5]
    query = items[5:6] + unit_vectors(1, 24, seed=18) * 0.01
    blocked = ItemIndex.build(items, show_progress=False, dtype="f16")
    for block_rows in (topk_module.BLOCK_ROWS, 64, 25):
        monkeypatch.setattr(topk_module, "BLOCK_ROWS", block_rows)
        found, sims = blocked.search(query, k=10)
        stored = np.asarray(blocked.vectors())
        want = np.lexsort((np.arange(len(stored)), -(query @ stored.T)[0]))[:10]
        np.testing.assert_array_equal(found[0], want)
        assert found[0].tolist() == [5, *range(40, 130, 10)]


def test_row_lookups_read_the_file_and_equal_the_mapping(tmp_path: Path, items: np.ndarray) -> None:
    """Scattered rows are read with pread (kept out of the process's RSS); they equal the mapped rows."""
    write_vectors(tmp_path / "v.npy", items, "f16")
    mapped = open_vectors(tmp_path / "v.npy")
    rows = np.array([599, 0, 17, 17, 300])
    np.testing.assert_array_equal(read_rows(mapped, rows), np.asarray(mapped)[rows])
    assert getattr(mapped[10:], "gloss_file", None) is None  # a slice starts elsewhere in the file: indexed instead
    np.testing.assert_array_equal(read_rows(mapped[10:], rows[2:]), np.asarray(mapped)[rows[2:] + 10])


def mapped_rss_kb(path: Path) -> int:
    """Resident KiB of this process's mappings of ``path`` (Linux /proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):  # a mapping's header line: address range ... path
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").is_file(), reason="needs Linux /proc/self/smaps")
def test_fusion_reads_the_rows_it_scores_by_pread_and_never_through_the_mapping(fusion_bundle: Path,
                                                                               tmp_path: Path) -> None:
    """Fusion's history and candidate vectors of an HNSW index over a memory-mapped file come from pread, so serving
    never makes the file resident in the process (ef4dca7); the rankings equal those over in-memory rows."""
    from gloss.edge.bundle import load_bundle
    from gloss.edge.copurchase import CoPurchase
    from gloss.edge.fusion import FusionRanker

    bundle = load_bundle(fusion_bundle)
    vectors = np.asarray(bundle.open_index().vectors())
    in_memory = ItemIndex.build(vectors, show_progress=False, dtype="f16", kind="hnsw")  # graph built from memory
    path = tmp_path / "vectors.npy"
    write_vectors(path, vectors, "f16")
    mapped = in_memory.with_store(VectorStore([open_vectors(path)]))  # the same graph over the mapped file
    stats = CoPurchase.load(bundle.paths.copurchase)
    histories = [[int(p) for p in np.random.default_rng(user).choice(len(vectors), 4, replace=False)]
                 for user in range(30)]
    config = bundle.open_fusion().config
    got = FusionRanker(bundle.catalog, mapped, stats, config).rank_batch(histories, k=10)
    want = FusionRanker(bundle.catalog, in_memory, stats, config).rank_batch(histories, k=10)
    assert got == want
    assert mapped_rss_kb(path) == 0

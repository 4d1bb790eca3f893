"""Co-purchase statistics: equal to a dict-of-counts reference and to the one-shot count they replaced (whatever the
block size), streamed file == in-memory build, memory-mapped load == in-memory, no leakage of held-out items,
atomic I/O."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from gloss.edge import arrays as arrays_module
from gloss.edge.arrays import save_arrays
from gloss.edge.catalog import load_catalog
from gloss.edge.copurchase import COPURCHASE_FORMAT, row_sums
from gloss.edge.errors import InputError
from gloss.edge.fusion import CoPurchase
from gloss.edge.sequences import SequenceArrays
from gloss.edge.splits import UserSequence, load_sequences
from gloss.export.copurchase import build_copurchase, build_copurchase_file, training_prefixes

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="module")
def data():
    catalog = load_catalog(FIXTURES / "beauty_items.jsonl")
    return catalog, load_sequences(FIXTURES / "beauty_sequences.jsonl")


def reference_counts(sequences, window: int, decay: float) -> dict[tuple[int, int], float]:
    counts: dict[tuple[int, int], float] = defaultdict(float)
    for seq in sequences:
        for i, a in enumerate(seq):
            for gap in range(1, window + 1):
                if i + gap < len(seq) and seq[i + gap] != a:
                    counts[(a, seq[i + gap])] += decay ** (gap - 1)
    return counts


def as_dict(cp: CoPurchase) -> dict[tuple[int, int], float]:
    out = {}
    for a in range(cp.num_items):
        for b, value in zip(cp.indices[cp.indptr[a]:cp.indptr[a + 1]], cp.data[cp.indptr[a]:cp.indptr[a + 1]],
                            strict=True):
            out[(a, int(b))] = float(value)
    return out


@pytest.mark.parametrize(("window", "decay"), [(1, 1.0), (3, 0.5), (5, 0.7)])
def test_matrix_equals_dict_of_counts_reference(data, window, decay):
    catalog, sequences = data
    prefixes = training_prefixes(sequences, catalog, holdout=1)
    cp = build_copurchase(prefixes, len(catalog), window=window, decay=decay)
    expected = reference_counts(prefixes, window, decay)
    got = as_dict(cp)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-6)
    counts = np.zeros(len(catalog))
    for seq in prefixes:
        for item in seq:
            counts[item] += 1
    np.testing.assert_array_equal(cp.popularity, counts)


def test_rows_are_sorted_strongest_first(data):
    catalog, sequences = data
    cp = build_copurchase(training_prefixes(sequences, catalog, 0), len(catalog), window=4, decay=0.6)
    for a in range(cp.num_items):
        row = cp.data[cp.indptr[a]:cp.indptr[a + 1]]
        assert np.all(np.diff(row) <= 0)
        succ, probs = cp.row(a)
        if len(succ):
            assert probs.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("holdout", [1, 2])
def test_held_out_items_never_appear(holdout):
    # Every user ends with items nobody else bought: cut before them, they must leave no trace.
    num_users, shared = 30, 10
    rng = np.random.default_rng(0)
    sequences, held_out = [], set()
    for u in range(num_users):
        tail = [shared + holdout * u + j for j in range(holdout)]
        held_out.update(tail)
        items = [f"i{p}" for p in rng.choice(shared, size=4, replace=False).tolist() + tail]
        sequences.append(UserSequence(f"u{u}", tuple(items)))
    from gloss.edge.catalog import Catalog

    num_items = shared + holdout * num_users
    catalog = Catalog(tuple(f"i{p}" for p in range(num_items)), tuple(f"t{p}" for p in range(num_items)))
    cp = build_copurchase(training_prefixes(sequences, catalog, holdout), num_items, window=5, decay=0.9)
    held = np.array(sorted(held_out))
    assert not np.isin(cp.indices, held).any()
    assert all(cp.indptr[h] == cp.indptr[h + 1] for h in held)
    assert not cp.popularity[held].any()


def test_validation_prefix_excludes_validation_and_test_targets(data):
    catalog, sequences = data
    cp = build_copurchase(training_prefixes(sequences, catalog, 2), len(catalog), window=3)
    pairs = as_dict(cp)
    for seq in sequences:
        items = [catalog.position(a) for a in seq.items]
        if items[-2] not in {p for s in sequences for p in [catalog.position(a) for a in s.items[:-2]]}:
            assert cp.popularity[items[-2]] == 0
            assert not any(b == items[-2] for (_, b) in pairs)


def one_shot_reference(sequences, num_items: int, window: int, decay: float):
    """The count this module used before issue 16 (every pair at once as int64 keys + float64 weights), kept as
    the twin the block-by-block count must equal bit for bit."""
    arrays = [np.asarray(seq, dtype=np.int64).reshape(-1) for seq in sequences]
    flat = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
    owner = np.repeat(np.arange(len(arrays)), [len(a) for a in arrays])
    keys, weights = [], []
    for gap in range(1, window + 1):
        src, dst = flat[:-gap], flat[gap:]
        keep = (owner[:-gap] == owner[gap:]) & (src != dst)
        keys.append(src[keep] * num_items + dst[keep])
        weights.append(np.full(int(keep.sum()), decay ** (gap - 1)))
    unique, inverse = np.unique(np.concatenate(keys), return_inverse=True)
    data = np.bincount(inverse, weights=np.concatenate(weights), minlength=len(unique))
    rows, cols = unique // num_items, unique % num_items
    order = np.lexsort((cols, -data, rows))
    indptr = np.zeros(num_items + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=num_items), out=indptr[1:])
    return indptr, cols[order].astype(np.int32), data[order].astype(np.float32), np.bincount(
        flat, minlength=num_items).astype(np.float32)


def assert_same(a: CoPurchase, b: CoPurchase) -> None:
    for name in ("indptr", "indices", "data", "popularity", "sums"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert (a.window, a.decay) == (b.window, b.decay)


@pytest.mark.parametrize(("window", "decay"), [(1, 1.0), (3, 0.5), (8, 0.7)])
@pytest.mark.parametrize("max_block_pairs", [1, 97, 10**9])
def test_block_count_equals_the_one_shot_count_bit_for_bit(data, window, decay, max_block_pairs):
    catalog, sequences = data
    prefixes = training_prefixes(sequences, catalog, holdout=0)
    got = build_copurchase(prefixes, len(catalog), window=window, decay=decay, max_block_pairs=max_block_pairs)
    indptr, indices, values, popularity = one_shot_reference(prefixes, len(catalog), window, decay)
    for name, want in (("indptr", indptr), ("indices", indices), ("data", values), ("popularity", popularity)):
        np.testing.assert_array_equal(getattr(got, name), want, err_msg=name)
    # P(next | item): the old row sums came from one running total over every row; now each row is summed alone
    cumulative = np.concatenate([[0.0], np.cumsum(values, dtype=np.float64)])
    np.testing.assert_allclose(got.sums, cumulative[indptr[1:]] - cumulative[indptr[:-1]], rtol=1e-12, atol=1e-9)


def test_flat_arrays_and_lists_give_the_same_statistics(data):
    catalog, sequences = data
    prefixes = training_prefixes(sequences, catalog, holdout=1)
    assert_same(build_copurchase(SequenceArrays.from_lists(prefixes), len(catalog)),
                build_copurchase(prefixes, len(catalog)))


@pytest.mark.parametrize("holdout", [0, 1, 2])
def test_streamed_file_equals_the_in_memory_build_and_maps_lazily(data, tmp_path, holdout):
    catalog, sequences = data
    out = tmp_path / "sub" / "copurchase.bin"
    streamed = build_copurchase_file(FIXTURES / "beauty_sequences.jsonl", catalog, out, holdout=holdout, window=3,
                                     decay=0.5, max_block_pairs=50)
    in_memory = build_copurchase(training_prefixes(sequences, catalog, holdout), len(catalog), window=3, decay=0.5)
    assert_same(streamed, in_memory)
    assert streamed.trusted and not streamed.data.flags.writeable  # a read-only view of the mapped file
    for item in range(len(catalog)):
        for a, b in zip(streamed.row(item, 5), in_memory.row(item, 5), strict=True):
            np.testing.assert_array_equal(a, b)
    assert sorted(p.name for p in out.parent.iterdir()) == ["copurchase.bin"]  # no temp files left


def test_save_load_round_trip(data, tmp_path):
    catalog, sequences = data
    cp = build_copurchase(training_prefixes(sequences, catalog, 1), len(catalog), window=2, decay=0.5)
    cp.save(tmp_path / "c.bin")
    loaded = CoPurchase.load(tmp_path / "c.bin")
    assert_same(loaded, cp)
    assert loaded.nnz == cp.nnz and loaded.num_items == cp.num_items


def test_with_new_items_equals_statistics_over_the_longer_catalogue(data, tmp_path):
    catalog, sequences = data
    prefixes = training_prefixes(sequences, catalog, 0)
    cp = build_copurchase(prefixes, len(catalog))
    cp.save(tmp_path / "c.bin")
    loaded = CoPurchase.load(tmp_path / "c.bin")
    grown = loaded.with_new_items(3)
    assert_same(grown, build_copurchase(prefixes, len(catalog) + 3))
    assert grown.indices is loaded.indices and grown.data is loaded.data  # the pairs are shared, not copied


def test_failed_save_keeps_the_old_file(data, tmp_path, monkeypatch):
    catalog, sequences = data
    out = tmp_path / "copurchase.bin"
    cp = build_copurchase(training_prefixes(sequences, catalog, 1), len(catalog))
    cp.save(out)
    before = out.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(arrays_module, "_write", boom)
    with pytest.raises(OSError, match="disk full"):
        cp.save(out)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copurchase.bin"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": 0}, "--window must be >= 1, got 0"),
        ({"decay": 0.0}, "--decay must be in (0, 1], got 0.0"),
        ({"decay": 1.5}, "--decay must be in (0, 1], got 1.5"),
        ({"num_items": 0}, "num_items must be >= 1, got 0"),
        ({"sequences": [[0, 1, 7]]}, "sequence item position 7 is outside the catalogue (0..4)"),
        ({"sequences": [[0, -1]]}, "sequence item position -1 is outside the catalogue (0..4)"),
    ],
)
def test_build_rejects_bad_input(kwargs, message):
    args = {"sequences": [[0, 1, 2]], "num_items": 5, **kwargs}
    with pytest.raises(InputError) as info:
        build_copurchase(**args)
    assert message in str(info.value)


def test_prefixes_reject_unknown_items_and_negative_holdout(data):
    catalog, _ = data
    with pytest.raises(InputError, match="user u1: unknown item 'NOPE'"):
        training_prefixes([UserSequence("u1", ("NOPE",))], catalog, 0)
    with pytest.raises(InputError, match="--holdout must be >= 0, got -1"):
        training_prefixes([], catalog, -1)


def test_load_rejects_missing_old_foreign_and_truncated_files(data, tmp_path):
    with pytest.raises(InputError, match="no such co-purchase file"):
        CoPurchase.load(tmp_path / "absent.bin")
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"not a co-purchase file")
    with pytest.raises(InputError, match="not a gloss co-purchase file"):
        CoPurchase.load(bad)
    old = tmp_path / "old.npz"  # what format 1 wrote
    np.savez_compressed(old, format_version=np.int64(1), indptr=np.zeros(2, np.int64))
    with pytest.raises(InputError, match=f"co-purchase format 1 .a compressed .npz., expected {COPURCHASE_FORMAT}.*"
                                         "gloss-export fusion"):
        CoPurchase.load(old)
    other = tmp_path / "other.bin"
    save_arrays(other, {"indptr": np.zeros(1, np.int64)}, {"format_version": 99})
    with pytest.raises(InputError, match=f"co-purchase format 99, expected {COPURCHASE_FORMAT}"):
        CoPurchase.load(other)
    catalog, sequences = data
    good = tmp_path / "good.bin"
    build_copurchase(training_prefixes(sequences, catalog, 1), len(catalog)).save(good)
    cut = tmp_path / "cut.bin"
    cut.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(InputError, match="is truncated"):
        CoPurchase.load(cut)


def test_a_damaged_row_is_refused_when_read(data, tmp_path):
    catalog, sequences = data
    cp = build_copurchase(training_prefixes(sequences, catalog, 0), len(catalog))
    item = int(np.argmax(np.diff(cp.indptr)))
    indices = cp.indices.copy()
    indices[cp.indptr[item]] = len(catalog) + 5
    path = tmp_path / "damaged.bin"
    CoPurchase(cp.indptr, indices, cp.data, cp.popularity, cp.window, cp.decay, sums=cp.sums, trusted=True).save(path)
    loaded = CoPurchase.load(path)  # opening reads no pair
    with pytest.raises(InputError, match=f"row {item} names an item outside"):
        loaded.row(item)
    indptr = cp.indptr.copy()
    indptr[item + 1] = cp.nnz + 10
    CoPurchase(indptr, cp.indices, cp.data, cp.popularity, cp.window, cp.decay, sums=cp.sums, trusted=True).save(path)
    with pytest.raises(InputError, match=f"row {item} has offsets"):
        CoPurchase.load(path).row(item)


def test_row_sums_are_per_row_totals():
    indptr = np.array([0, 2, 2, 5, 6])
    np.testing.assert_array_equal(row_sums(indptr, np.arange(6, dtype=np.float32)), [1.0, 0.0, 9.0, 5.0])


def test_inconsistent_arrays_are_rejected():
    with pytest.raises(InputError, match="indptr has 2 entries, expected 4"):
        CoPurchase(np.array([0, 0]), np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(3, np.float32), 1, 1.0)
    with pytest.raises(InputError, match="an index is outside 0..1"):
        CoPurchase(np.array([0, 1, 1]), np.array([5], np.int32), np.ones(1, np.float32), np.zeros(2, np.float32),
                   1, 1.0)

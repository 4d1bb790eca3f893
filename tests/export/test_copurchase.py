"""Co-purchase statistics: equal to a dict-of-counts reference, no leakage of held-out items, atomic I/O."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from gloss.edge.catalog import load_catalog
from gloss.edge.errors import InputError
from gloss.edge.fusion import CoPurchase
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


def test_save_load_round_trip_is_atomic(data, tmp_path):
    catalog, sequences = data
    out = tmp_path / "sub" / "copurchase.npz"
    cp = build_copurchase_file(FIXTURES / "beauty_sequences.jsonl", catalog, out, holdout=1, window=2, decay=0.5)
    loaded = CoPurchase.load(out)
    for name in ("indptr", "indices", "data", "popularity"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(cp, name))
    assert (loaded.window, loaded.decay) == (2, 0.5)
    assert sorted(p.name for p in out.parent.iterdir()) == ["copurchase.npz"]  # no temp files left


def test_failed_save_keeps_the_old_file(data, tmp_path, monkeypatch):
    catalog, sequences = data
    out = tmp_path / "copurchase.npz"
    cp = build_copurchase(training_prefixes(sequences, catalog, 1), len(catalog))
    cp.save(out)
    before = out.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_bytes", boom)
    with pytest.raises(OSError, match="disk full"):
        cp.save(out)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copurchase.npz"]


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


def test_load_rejects_missing_and_corrupt_files(tmp_path):
    with pytest.raises(InputError, match="no such co-purchase file"):
        CoPurchase.load(tmp_path / "absent.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a co-purchase .npz"):
        CoPurchase.load(bad)
    other = tmp_path / "other.npz"
    np.savez(other, format_version=np.int64(99))
    with pytest.raises(InputError, match="co-purchase format 99, expected 1"):
        CoPurchase.load(other)


def test_inconsistent_arrays_are_rejected():
    with pytest.raises(InputError, match="indptr has 2 entries, expected 4"):
        CoPurchase(np.array([0, 0]), np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(3, np.float32), 1, 1.0)
    with pytest.raises(InputError, match="an index is outside 0..1"):
        CoPurchase(np.array([0, 1, 1]), np.array([5], np.int32), np.ones(1, np.float32), np.zeros(2, np.float32),
                   1, 1.0)

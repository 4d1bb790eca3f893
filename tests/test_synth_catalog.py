"""The synthetic catalogue generator of benchmarks/scale.py, on the fixture slice of Beauty (tiny sizes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.synth_catalog import (
    SynthConfig,
    generate_dataset,
    item_asin,
    item_rows,
    load_source,
    sequence_lines,
    write_items,
    write_sequences,
)
from gloss.edge.catalog import load_catalog
from gloss.edge.splits import load_sequences
from tests.conftest import CATALOG_PATH, SEQUENCES_PATH


@pytest.fixture(scope="module")
def source():
    return load_source([(CATALOG_PATH, SEQUENCES_PATH)])


def _real_pairs(source) -> set[tuple[int, int]]:
    return {(a, int(b)) for a in range(source.num_items)
            for b in source.succ[source.succ_ptr[a] : source.succ_ptr[a + 1]]}


def test_source_holds_every_real_transition(source):
    titles = {row["asin"]: n for n, row in enumerate(json.loads(line) for line in CATALOG_PATH.open())}
    expected = set()
    for line in SEQUENCES_PATH.open():
        seq = [titles[a] for a in json.loads(line)["items"] if a in titles]
        expected |= set(zip(seq, seq[1:], strict=False))
    assert _real_pairs(source) == expected
    assert source.num_items == len(titles)


def test_items_do_not_depend_on_the_catalogue_size(source):
    small = list(item_rows(source, 0, 50, seed=3))
    large = list(item_rows(source, 0, 120, seed=3))
    assert large[:50] == small
    assert list(item_rows(source, 50, 70, seed=3)) == large[50:]
    assert [asin for asin, _ in large] == [item_asin(i) for i in range(120)]
    assert list(item_rows(source, 0, 50, seed=4)) != small


def test_titles_are_recombined_real_words_of_real_lengths(source):
    real_words = {word for words in source.words for word in words}
    titles = [title for _, title in item_rows(source, 0, 2000)]
    lengths = [len(t.split()) for t in titles]
    assert all(set(t.split()) <= real_words for t in titles)
    assert 1 <= min(lengths) and max(lengths) <= max(source.title_lengths)
    assert abs(np.mean(lengths) - source.title_lengths.mean()) < 0.15 * source.title_lengths.mean()
    assert len(set(titles)) > 0.95 * len(titles)


def test_sequence_lines_equal_json_rows():
    ids = np.array([5, 17, 3, 123456789, 0, 42])
    offsets = np.array([0, 2, 2, 5, 6])  # the second user has no items and gets no line
    lines = sequence_lines(7, ids, offsets).decode().splitlines()
    expected = [{"user": "U000000007", "items": ["S000000005", "S000000017"]},
                {"user": "U000000009", "items": ["S000000003", "S123456789", "S000000000"]},
                {"user": "U000000010", "items": ["S000000042"]}]
    assert [json.loads(line) for line in lines] == expected


@pytest.mark.parametrize("num_items", [60, 1000])  # fewer items than the source's, and two-plus copies of it
def test_written_files_load_with_the_toolchain_readers(source, tmp_path: Path, num_items: int):
    config = SynthConfig(num_items, seed=1)
    write_items(tmp_path / "items.jsonl.gz", source, 0, num_items, seed=1)
    stats, histories = write_sequences(tmp_path / "seq.jsonl.gz", source, config, keep_histories=5)
    catalog = load_catalog(tmp_path / "items.jsonl.gz")
    sequences = load_sequences(tmp_path / "seq.jsonl.gz")
    assert len(catalog) == num_items
    assert {a for seq in sequences for a in seq.items} <= set(catalog.asins)
    assert all(a != b for seq in sequences for a, b in zip(seq.items, seq.items[1:], strict=False))
    interactions = sum(len(seq.items) for seq in sequences)
    assert interactions == stats["interactions"]
    assert abs(interactions / num_items - config.interactions_per_item) < 0.2 * config.interactions_per_item
    assert len(histories) == 5 and all(len(h) >= 3 for h in histories)
    assert histories[0] == list(next(s.items for s in sequences if len(s.items) >= 3))


def test_walks_follow_real_transitions_within_a_copy(source, tmp_path: Path):
    """With every item in the catalogue (two full copies) and no jumps, each next item is a real successor of
    the item before it in the same copy, or a restart after a real item that has no successor."""
    num_real = source.num_items
    config = SynthConfig(2 * num_real, seed=2, jump_prob=0.0)
    write_sequences(tmp_path / "seq.jsonl.gz", source, config)
    perm = np.random.default_rng([2, 0]).permutation(num_real)  # synthetic position -> real source item
    real = _real_pairs(source)
    starts = set(source.starts.tolist())
    dead_ends = {a for a in range(num_real) if source.succ_ptr[a] == source.succ_ptr[a + 1]}
    for seq in load_sequences(tmp_path / "seq.jsonl.gz"):
        ids = [int(a[1:]) for a in seq.items]
        for i, j in zip(ids, ids[1:], strict=False):
            a, b = int(perm[i % num_real]), int(perm[j % num_real])
            assert i // num_real == j // num_real
            assert (a, b) in real or (a in dead_ends and b in starts)


def test_generate_dataset_is_seeded_and_reused(source, tmp_path: Path):
    first = generate_dataset(tmp_path / "a", source, SynthConfig(80, seed=5), num_new=7, num_histories=4)
    again = generate_dataset(tmp_path / "b", source, SynthConfig(80, seed=5), num_new=7, num_histories=4)
    for name in ("items.jsonl.gz", "sequences.jsonl.gz", "new_items.jsonl.gz", "histories.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert first["stats"] == again["stats"]
    new = load_catalog(tmp_path / "a" / "new_items.jsonl.gz")
    assert new.asins == tuple(item_asin(i) for i in range(80, 87))
    stamp = (tmp_path / "a" / "items.jsonl.gz").stat().st_mtime_ns
    assert generate_dataset(tmp_path / "a", source, SynthConfig(80, seed=5), num_new=7, num_histories=4) == first
    assert (tmp_path / "a" / "items.jsonl.gz").stat().st_mtime_ns == stamp

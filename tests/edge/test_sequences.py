"""Streaming sequences into flat arrays: the same positions as the per-user objects, errors naming row and line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from gloss.edge import sequences as sequences_module
from gloss.edge.catalog import load_catalog
from gloss.edge.errors import InputError
from gloss.edge.sequences import SequenceArrays, read_sequence_arrays
from gloss.edge.splits import load_sequences
from gloss.export.copurchase import training_prefixes
from tests.conftest import FIXTURES

SEQUENCES = FIXTURES / "beauty_sequences.jsonl"


@pytest.fixture(scope="module")
def catalog():
    return load_catalog(FIXTURES / "beauty_items.jsonl")


def positions_of(catalog) -> dict[str, int]:
    return {asin: i for i, asin in enumerate(catalog.asins)}


@pytest.mark.parametrize("holdout", [0, 1, 2])
@pytest.mark.parametrize("chunk_bytes", [1, 1000, 1 << 22])
def test_flat_arrays_equal_the_per_user_objects(catalog, monkeypatch, holdout, chunk_bytes):
    monkeypatch.setattr(sequences_module, "CHUNK_BYTES", chunk_bytes)
    got = read_sequence_arrays(SEQUENCES, positions_of(catalog), holdout)
    want = training_prefixes(load_sequences(SEQUENCES), catalog, holdout)
    assert len(got) == len(want)
    assert [seq.tolist() for seq in got] == want
    assert got.items.dtype == np.int32 and got.offsets.dtype == np.int64


def test_gzip_blank_lines_and_from_lists(tmp_path: Path, catalog):
    rows = [json.dumps({"user": f"u{i}", "items": list(catalog.asins[i : i + 3])}) for i in range(5)]
    path = tmp_path / "s.jsonl.gz"
    path.write_bytes(gzip.compress(("\n".join(rows[:2]) + "\n\n   \n" + "\n".join(rows[2:]) + "\n").encode()))
    got = read_sequence_arrays(path, positions_of(catalog))
    want = SequenceArrays.from_lists([[i, i + 1, i + 2] for i in range(5)])
    np.testing.assert_array_equal(got.items, want.items)
    np.testing.assert_array_equal(got.offsets, want.offsets)


def line(user, items) -> str:
    return json.dumps({"user": user, "items": items}) + "\n"


@pytest.mark.parametrize(
    "content, message",
    [
        (line("u1", ["A"]) + line(5, ["A"]), "s.jsonl:2: needs 'user' (string) and 'items' (list of item ids)"),
        (line("u1", ["A"]) + "\n" + line("u2", "A"), "s.jsonl:3: needs 'user'"),
        (line("u1", ["A"]) + line("u2", ["A", 3]), "s.jsonl:2: needs 'user'"),
        (line("u1", ["A"]) + "\n\n" + line("u2", ["A", "ZZZ"]),
         "s.jsonl:4: user u2: item 'ZZZ' is not in the catalogue; use the catalogue the sequences were built with"),
        (line("u1", ["A"]) + "\n" + '{"user": "u2", "items": [}\n', "s.jsonl:3: not valid JSON"),
        (line("u1", ["A"]) + "[1, 2]\n", "s.jsonl:2: expected a JSON object, got list"),
        ("\n\n", "s.jsonl: no user sequences"),
    ],
)
@pytest.mark.parametrize("chunk_bytes", [1, 1 << 22])
def test_errors_name_the_row_or_line(tmp_path: Path, monkeypatch, content, message, chunk_bytes):
    monkeypatch.setattr(sequences_module, "CHUNK_BYTES", chunk_bytes)
    path = tmp_path / "s.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError) as info:
        read_sequence_arrays(path, {"A": 0})
    assert message in str(info.value)


def test_held_out_items_need_not_be_in_the_catalogue(tmp_path: Path):
    path = tmp_path / "s.jsonl"
    path.write_text(line("u1", ["A", "A", "NEW"]), encoding="utf-8")
    assert read_sequence_arrays(path, {"A": 0}, holdout=1).items.tolist() == [0, 0]
    with pytest.raises(InputError, match="--holdout must be >= 0"):
        read_sequence_arrays(path, {"A": 0}, holdout=-1)


def test_unreadable_files_are_input_errors(tmp_path: Path):
    bad_gzip = tmp_path / "s.jsonl.gz"
    bad_gzip.write_bytes(b"\x1f\x8b" + bytes(40))
    with pytest.raises(InputError, match="cannot be read as gzipped JSON Lines"):
        read_sequence_arrays(bad_gzip, {})
    latin1 = tmp_path / "l.jsonl"
    data = line("u1", ["A"]).encode() + b'{"user": "\xe8", "items": []}\n'
    latin1.write_bytes(data)
    with pytest.raises(InputError, match=f"byte 0xe8 at byte offset {data.index(0xE8)} .line 2."):
        read_sequence_arrays(latin1, {"A": 0})
    with pytest.raises(InputError, match="no such file"):
        read_sequence_arrays(tmp_path / "absent.jsonl", {})

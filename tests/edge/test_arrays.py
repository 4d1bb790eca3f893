"""The memory-mapped array file: round trips in the stored dtypes, chunked writes, refusal of short or foreign files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gloss.edge.arrays import open_arrays, save_arrays
from gloss.edge.errors import InputError


def test_round_trip_keeps_dtypes_shapes_and_metadata(tmp_path: Path):
    rng = np.random.default_rng(0)
    arrays = {
        "i8": rng.integers(-5, 5, size=7).astype(np.int8),
        "u64": rng.integers(0, 2**63, size=5, dtype=np.uint64),
        "f16": rng.normal(size=(3, 4)).astype(np.float16),
        "f64": rng.normal(size=11),
        "empty": np.zeros(0, dtype=np.int32),
        "last_empty": np.zeros((0, 3), dtype=np.float32),
    }
    save_arrays(tmp_path / "a.bin", arrays, {"format": 3, "name": "x"})
    loaded, meta = open_arrays(tmp_path / "a.bin", "test file", "make it again")
    assert meta == {"format": 3, "name": "x"}
    for name, want in arrays.items():
        got = loaded[name]
        assert got.dtype == want.dtype and got.shape == want.shape and not got.flags.writeable
        np.testing.assert_array_equal(got, want)
        assert got.ctypes.data % 64 == 0 or got.size == 0  # aligned for vector loads


def test_chunks_are_written_as_one_array(tmp_path: Path):
    chunks = [np.arange(3, dtype=np.int32), np.zeros(0, dtype=np.int32), np.arange(10, 15, dtype=np.int32)]
    save_arrays(tmp_path / "a.bin", {"joined": chunks, "after": np.ones(2)}, {})
    loaded, _ = open_arrays(tmp_path / "a.bin", "test file", "make it again")
    np.testing.assert_array_equal(loaded["joined"], np.concatenate(chunks))
    np.testing.assert_array_equal(loaded["after"], np.ones(2))
    with pytest.raises(ValueError, match="one dtype"):
        save_arrays(tmp_path / "b.bin", {"mixed": [np.zeros(1, np.int32), np.zeros(1, np.int64)]}, {})


def test_short_foreign_and_missing_files_are_refused(tmp_path: Path):
    save_arrays(tmp_path / "a.bin", {"x": np.arange(1000)}, {})
    data = (tmp_path / "a.bin").read_bytes()
    (tmp_path / "short.bin").write_bytes(data[:-8])
    with pytest.raises(InputError, match=r"short.bin: test file is truncated .* array 'x' ends at .*; make it again"):
        open_arrays(tmp_path / "short.bin", "test file", "make it again")
    (tmp_path / "foreign.bin").write_bytes(b"PK\x03\x04" + bytes(40))
    with pytest.raises(InputError, match="not a gloss test file"):
        open_arrays(tmp_path / "foreign.bin", "test file", "make it again")
    (tmp_path / "header.bin").write_bytes(data[:8] + data[8:16] + b"{not json" + bytes(100))
    with pytest.raises(InputError, match="not a gloss test file .its header fails its length or CRC-32 check"):
        open_arrays(tmp_path / "header.bin", "test file", "make it again")
    with pytest.raises(InputError, match="no such test file"):
        open_arrays(tmp_path / "absent.bin", "test file", "make it again")


def test_verify_finds_a_flipped_byte_that_a_plain_open_maps(tmp_path: Path):
    save_arrays(tmp_path / "a.bin", {"x": np.arange(1000), "y": np.ones(3)}, {"k": 1})
    data = bytearray((tmp_path / "a.bin").read_bytes())
    data[data.rfind(np.ones(3).tobytes()) + 5] ^= 0xFF  # inside "y"
    (tmp_path / "a.bin").write_bytes(bytes(data))
    loaded, _ = open_arrays(tmp_path / "a.bin", "test file", "make it again")  # sizes fit: opens
    assert not np.array_equal(loaded["y"], np.ones(3))
    with pytest.raises(InputError, match="not a gloss test file .array 'y' fails its CRC-32 check"):
        open_arrays(tmp_path / "a.bin", "test file", "make it again", verify=True)
    data[20] ^= 0xFF  # inside the header
    (tmp_path / "a.bin").write_bytes(bytes(data))
    with pytest.raises(InputError, match="header fails its length or CRC-32 check"):
        open_arrays(tmp_path / "a.bin", "test file", "make it again")

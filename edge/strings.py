"""Compact string columns: many strings as one UTF-8 blob + offsets, and a hash table that finds a row by its string.

A tuple of a million ``str`` objects costs ~150 MB of Python objects and a ``dict`` over it as much again; these
cost the bytes of the text plus 8 bytes per string for the offsets and 12 for the lookup, and can be memory-mapped
from a file (:mod:`gloss.edge.arrays`) so that opening a catalogue reads nothing until a row is asked for.
"""

from __future__ import annotations

import hashlib
import logging
from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload

import numpy as np

logger = logging.getLogger(__name__)

KEY_HASH = "blake2b-64"  # recorded in a saved lookup: another hash would find nothing
CHUNK = 1 << 16  # strings decoded per batch when iterating
FENCE = 512  # a lookup keeps every FENCE-th hash in memory and reads the 4 KB block between two of them
ENCODING_ERRORS = "surrogatepass"  # JSON may hold a lone surrogate (\ud800); keep it rather than fail


def key_hashes(strings: Iterable[bytes], count: int | None = None) -> np.ndarray:
    """Stable 64-bit keys of UTF-8 strings (BLAKE2b, 8-byte digest), as uint64."""
    digest = b"".join([hashlib.blake2b(s, digest_size=8).digest() for s in strings])
    keys = np.frombuffer(digest, dtype="<u8")
    if count is not None and len(keys) != count:
        raise ValueError(f"expected {count} strings, hashed {len(keys)}")
    return keys


class StringArray(Sequence[str]):
    """Immutable strings stored as one UTF-8 blob: string ``i`` is ``blob[offsets[i]:offsets[i + 1]]``.

    Behaves as a read-only sequence of ``str`` (indexing, contiguous slices as views, iteration, ``==`` with any
    sequence of strings); it holds no per-string Python objects.

    Args:
        blob: The concatenated UTF-8 bytes (``bytes`` or a uint8 array, possibly memory-mapped).
        offsets: (len + 1,) int64 offsets into ``blob``, non-decreasing.
        fingerprint: Cached :func:`gloss.edge.trie.catalog_fingerprint` of the strings, if known.
        source: ``(file, blob name, offsets name)`` when ``blob`` and ``offsets`` map those arrays of a
            :class:`gloss.edge.arrays.ArrayFile`: single strings are then read from the file rather than through
            the map (see :class:`~gloss.edge.arrays.ArrayFile` on why); bulk reads still use the map.
    """

    __slots__ = ("_blob", "_offsets", "_source", "fingerprint")

    def __init__(self, blob: Any, offsets: np.ndarray, fingerprint: str | None = None,
                 source: tuple[Any, str, str] | None = None) -> None:
        self._blob = memoryview(blob).cast("B") if not isinstance(blob, memoryview) else blob
        self._offsets = offsets
        self._source = source
        self.fingerprint = fingerprint  # cached catalog_fingerprint of these strings (gloss.edge.trie)

    @classmethod
    def from_strings(cls, strings: Iterable[str]) -> StringArray:
        """Encode strings into one blob."""
        blob, ends = bytearray(), [0]
        for text in strings:
            blob += text.encode("utf-8", ENCODING_ERRORS)
            ends.append(len(blob))
        return cls(bytes(blob), np.array(ends, dtype=np.int64))

    @property
    def offsets(self) -> np.ndarray:
        """(len + 1,) offsets into :attr:`blob` (absolute: a slice shares its parent's blob)."""
        return self._offsets

    @property
    def blob(self) -> memoryview:
        """The underlying bytes (of the whole parent for a slice)."""
        return self._blob

    def compact(self) -> tuple[np.ndarray, np.ndarray]:
        """``(blob, offsets)`` of just these strings, offsets starting at 0 (what a file stores)."""
        start, stop = int(self._offsets[0]), int(self._offsets[-1])
        return np.frombuffer(self._blob[start:stop], dtype=np.uint8), self._offsets - start

    def __len__(self) -> int:
        return len(self._offsets) - 1

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            return StringArray(self._blob, self._offsets[start : max(start, stop) + 1])
        size = len(self)
        i = int(index)
        if i < 0:
            i += size
        if not 0 <= i < size:
            raise IndexError(f"string index {index} out of range for {size} strings")
        return str(self.encoded(i), "utf-8", ENCODING_ERRORS)

    def encoded(self, index: int) -> bytes:
        """String ``index`` (0 <= index < len) as UTF-8 bytes (no decoding)."""
        if self._source is not None:
            file, blob_name, offsets_name = self._source
            start, stop = (int(v) for v in file.read(offsets_name, index, index + 2))
            return file.read(blob_name, start, stop).tobytes()
        return bytes(self._blob[int(self._offsets[index]) : int(self._offsets[index + 1])])

    def chunks(self, size: int = CHUNK) -> Iterator[list[str]]:
        """The strings as lists of up to ``size``, decoded in one pass per list."""
        for start in range(0, len(self), size):
            yield self._decode(start, min(start + size, len(self)))

    def encoded_chunks(self, size: int = CHUNK) -> Iterator[list[bytes]]:
        """Like :meth:`chunks`, as UTF-8 bytes."""
        for start in range(0, len(self), size):
            ends = self._offsets[start : min(start + size, len(self)) + 1].tolist()
            data, base = bytes(self._blob[ends[0] : ends[-1]]), ends[0]
            yield [data[a - base : b - base] for a, b in zip(ends[:-1], ends[1:], strict=True)]

    def _decode(self, start: int, stop: int) -> list[str]:
        ends = self._offsets[start : stop + 1].tolist()
        data, base = bytes(self._blob[ends[0] : ends[-1]]), ends[0]
        pairs = zip(ends[:-1], ends[1:], strict=True)
        return [data[a - base : b - base].decode("utf-8", ENCODING_ERRORS) for a, b in pairs]

    def __iter__(self) -> Iterator[str]:
        for chunk in self.chunks():
            yield from chunk

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StringArray):
            if len(other) != len(self):
                return False
            (blob, offsets), (other_blob, other_offsets) = self.compact(), other.compact()
            return bool(np.array_equal(offsets, other_offsets) and np.array_equal(blob, other_blob))
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # compares equal to lists and tuples

    def __repr__(self) -> str:
        shown = ", ".join(repr(s) for s in self._decode(0, min(3, len(self))))
        return f"StringArray([{shown}{', ...' if len(self) > 3 else ''}], {len(self)} strings)"


class KeyLookup:
    """Rows of a :class:`StringArray` sorted by key hash: finds the first row holding a string in O(log n).

    Args:
        hashes: (n,) uint64 key hashes, sorted.
        rows: (n,) row of each hash; rows with equal hashes in increasing order.
        source: ``(file, fence, hashes name, rows name)`` when the arrays map an
            :class:`gloss.edge.arrays.ArrayFile` that also stores ``fence = hashes[::FENCE]``: a lookup then
            reads one block of hashes from the file instead of faulting pages all over the map.
    """

    def __init__(self, hashes: np.ndarray, rows: np.ndarray, source: tuple[Any, np.ndarray, str, str] | None = None,
                 ) -> None:
        self.hashes, self.rows, self._source = hashes, rows, source

    @classmethod
    def build(cls, strings: StringArray, hashes: np.ndarray | None = None) -> KeyLookup:
        """Hash every string (unless ``hashes`` are given) and sort."""
        if hashes is None:
            hashes = np.concatenate([key_hashes(c) for c in strings.encoded_chunks()]) if len(strings) else \
                np.zeros(0, dtype=np.uint64)
        order = np.argsort(hashes, kind="stable")
        dtype = np.int32 if len(strings) < 2**31 else np.int64
        return cls(hashes[order], order.astype(dtype))

    def fence(self) -> np.ndarray:
        """Every ``FENCE``-th hash (what a saved lookup stores for :meth:`find` from a file)."""
        return np.ascontiguousarray(self.hashes[::FENCE])

    def find(self, strings: StringArray, key: str) -> int:
        """First row whose string is ``key``, or -1."""
        data = key.encode("utf-8", ENCODING_ERRORS)
        target = np.uint64(int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little"))
        if self._source is not None:
            return self._find_in_file(strings, data, target)
        at = int(np.searchsorted(self.hashes, target))
        while at < len(self.hashes) and self.hashes[at] == target:
            row = int(self.rows[at])
            if strings.encoded(row) == data:
                return row
            at += 1
        return -1

    def _find_in_file(self, strings: StringArray, data: bytes, target: np.uint64) -> int:
        file, fence, hashes_name, rows_name = self._source  # type: ignore[misc]
        size = len(self.hashes)
        block = int(np.searchsorted(fence, target))  # hashes[block * FENCE] >= target: the first match is before
        low = max(0, (block - 1) * FENCE)
        hashes = file.read(hashes_name, low, min(size, block * FENCE + 1))
        at = low + int(np.searchsorted(hashes, target))
        while at < size:
            if at - low >= len(hashes):  # equal hashes run past the block (repeated titles)
                low, hashes = at, file.read(hashes_name, at, at + FENCE)
            if hashes[at - low] != target:
                return -1
            row = int(file.read(rows_name, at, at + 1)[0])
            if strings.encoded(row) == data:
                return row
            at += 1
        return -1

    def renumbered(self, old_to_new: np.ndarray, new: StringArray) -> KeyLookup:
        """This lookup after rows were dropped (``old_to_new`` -1) or renumbered monotonically and ``new`` strings
        were appended after the kept rows; only the new strings are hashed."""
        num_kept = int((old_to_new >= 0).sum())
        rows = old_to_new[self.rows]
        alive = rows >= 0
        hashes, rows = self.hashes[alive], rows[alive]
        if len(new):
            added = np.concatenate([key_hashes(c) for c in new.encoded_chunks()])
            order = np.argsort(added, kind="stable")
            at = np.searchsorted(hashes, added[order], side="right")  # after equal kept hashes: new rows are higher
            hashes, rows = np.insert(hashes, at, added[order]), np.insert(rows, at, num_kept + order)
        return KeyLookup(np.ascontiguousarray(hashes), rows.astype(np.int32 if len(rows) < 2**31 else np.int64))

    def duplicates(self, strings: StringArray) -> list[list[int]]:
        """Rows of every string held more than once (each list ascending), in order of first appearance."""
        same = np.flatnonzero(self.hashes[1:] == self.hashes[:-1])
        if not len(same):
            return []
        groups: dict[bytes, list[int]] = {}
        for at in np.unique(np.concatenate([same, same + 1])).tolist():
            groups.setdefault(strings.encoded(int(self.rows[at])), []).append(int(self.rows[at]))
        found = [sorted(rows) for rows in groups.values() if len(rows) > 1]
        return sorted(found, key=lambda rows: rows[0])


class StringArrayBuilder:
    """Builds a :class:`StringArray` by appending strings to one growing blob (no per-string objects kept)."""

    def __init__(self) -> None:
        self.blob, self.ends = bytearray(), array("q", [0])

    def add(self, text: str) -> None:
        """Append one string."""
        self.blob += text.encode("utf-8", ENCODING_ERRORS)
        self.ends.append(len(self.blob))

    def build(self) -> StringArray:
        """The strings added so far, over the builder's own buffers (no copy: add nothing afterwards)."""
        return StringArray(self.blob, np.frombuffer(self.ends, dtype=np.int64))


def take_rows(column: StringArray, rows: np.ndarray) -> StringArray:
    """The strings of ``rows`` (ascending) as a new compact column, copied run by run of consecutive rows."""
    blob, offsets = column.compact()
    if len(rows) == len(column):
        return StringArray(blob, offsets)
    runs = np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1) if len(rows) else []
    data = b"".join(blob[int(offsets[run[0]]) : int(offsets[run[-1] + 1])].tobytes() for run in runs)
    lengths = offsets[rows + 1] - offsets[rows]
    return StringArray(data, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))


def concat(first: StringArray, second: StringArray) -> StringArray:
    """Two columns as one new compact column."""
    (blob_a, off_a), (blob_b, off_b) = first.compact(), second.compact()
    blob = np.concatenate([blob_a, blob_b]).tobytes()
    return StringArray(blob, np.concatenate([off_a, off_b[1:] + off_a[-1]]))

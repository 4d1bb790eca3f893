"""Item vectors on disk: ``.npy`` files in their stored dtype, written as a stream and memory-mapped at load.

A bundle's vectors are one or more *segments* (the build writes one; each ``gloss-export update`` that adds items
appends one), read as one matrix of *physical rows*; rows of retired items are listed as *removed*. Catalogue
position ``p`` is the ``p``-th row that is not removed, so positions stay compact (kept items in order, new ones
appended), exactly as a rebuild from the updated catalogue numbers them.

Stored dtypes: ``f32``; ``f16`` (the default: half the bytes; search runs in float32 over the rounded values);
``i8`` (a quarter: ``round(x * 127)``, read back as ``value / 127``). Nothing converts the whole matrix to
float32 unless asked to (:meth:`VectorStore.__array__`); search and row look-ups convert the rows they touch.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import mmap
import os
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gloss.edge.errors import InputError
from gloss.edge.files import atomic_path

logger = logging.getLogger(__name__)

STORE_DTYPES: dict[str, Any] = {"f32": np.float32, "f16": np.float16, "i8": np.int8}
I8_SCALE = 127.0
DEFAULT_BLOCK_ROWS = 1 << 15  # rows converted to float32 at once by exact search (48 MiB at dim 384)


def quantize(rows: np.ndarray, dtype: str) -> np.ndarray:
    """Float rows in the stored dtype (``i8``: ``round(x * 127)`` clipped to +-127); rows already of that dtype
    are returned as they are."""
    rows = np.asarray(rows)
    if rows.dtype == STORE_DTYPES[dtype]:
        return rows
    if dtype == "i8":
        return np.clip(np.rint(np.asarray(rows, dtype=np.float32) * I8_SCALE), -127, 127).astype(np.int8)
    return np.asarray(rows, dtype=STORE_DTYPES[dtype])


def dequantize(rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Stored rows as float32 (``int8`` rows divided by 127); ``out`` reuses a buffer of the right shape."""
    rows = np.asarray(rows)
    if out is None:
        out = np.empty(rows.shape, dtype=np.float32)
    out[...] = rows
    if rows.dtype == np.int8:
        out /= I8_SCALE
    return out


def dtype_name(array: np.ndarray) -> str:
    """``f32`` / ``f16`` / ``i8`` of a stored array.

    Raises:
        InputError: For any other dtype.
    """
    for name, kind in STORE_DTYPES.items():
        if array.dtype == kind:
            return name
    raise InputError(f"vectors of dtype {array.dtype}; expected one of {', '.join(STORE_DTYPES)}")


class VectorFileWriter:
    """Write an ``(num_rows, dim)`` ``.npy`` file a chunk of rows at a time, hashing the bytes as they are written.

    The file appears at ``path`` (atomically) only when all ``num_rows`` rows were written and the ``with`` block
    succeeded; :attr:`entry` then holds its size and SHA-256 for the bundle manifest, so it is never read back.

    Args:
        path: The ``.npy`` file.
        num_rows: Rows that will be written.
        dim: Row width.
        dtype: Stored dtype: ``f32``, ``f16`` or ``i8``.
    """

    def __init__(self, path: Path, num_rows: int, dim: int, dtype: str) -> None:
        if dtype not in STORE_DTYPES:
            raise InputError(f"--index-dtype must be one of {', '.join(STORE_DTYPES)}, got {dtype!r}")
        self.path, self.num_rows, self.dim, self.dtype = Path(path), int(num_rows), int(dim), dtype
        self.written = 0
        self.entry: dict[str, Any] | None = None
        self._digest = hashlib.sha256()
        self._size = 0

    def __enter__(self) -> VectorFileWriter:
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_path(self.path))
        self._handle = self._stack.enter_context(open(tmp, "wb"))
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {
            "descr": np.lib.format.dtype_to_descr(np.dtype(STORE_DTYPES[self.dtype])),
            "fortran_order": False, "shape": (self.num_rows, self.dim),
        })  # fmt: skip
        self._put(header.getvalue())
        return self

    def _put(self, data: bytes | memoryview) -> None:
        self._handle.write(data)
        self._digest.update(data)
        self._size += len(data)

    def write(self, rows: np.ndarray) -> None:
        """Append float rows (converted to the stored dtype).

        Raises:
            InputError: If the rows have the wrong width or would exceed ``num_rows``.
        """
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise InputError(f"{self.path}: rows of shape {rows.shape}, expected (n, {self.dim})")
        if self.written + len(rows) > self.num_rows:
            raise InputError(f"{self.path}: more than the {self.num_rows} rows announced")
        stored = np.ascontiguousarray(quantize(rows, self.dtype))
        self._put(memoryview(stored).cast("B"))
        self.written += len(rows)

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None and self.written != self.num_rows:
            error = InputError(f"{self.path}: {self.written} rows written, {self.num_rows} announced")
            self._stack.__exit__(type(error), error, None)  # the temp file is deleted, nothing appears at path
            raise error
        self._stack.__exit__(*exc)
        if exc[0] is None:
            self.entry = {"size": self._size, "sha256": self._digest.hexdigest()}


def write_vectors(path: Path, vectors: np.ndarray, dtype: str, chunk_rows: int = DEFAULT_BLOCK_ROWS) -> dict[str, Any]:
    """Write a float matrix as a stored-dtype ``.npy`` file; return its ``{"size", "sha256"}``."""
    vectors = np.asarray(vectors)
    with VectorFileWriter(path, len(vectors), vectors.shape[1], dtype) as writer:
        for start in range(0, len(vectors), chunk_rows):
            writer.write(vectors[start : start + chunk_rows])
    return writer.entry  # type: ignore[return-value]


def write_store(path: Path, store: VectorStore, block_rows: int = DEFAULT_BLOCK_ROWS) -> dict[str, Any]:
    """Write a store's live rows, in position order, as one ``.npy`` of its stored dtype (block by block)."""
    with VectorFileWriter(path, len(store), store.dim, store.stored_dtype) as writer:
        for _, rows in store.blocks(block_rows):
            writer.write(rows)
    return writer.entry  # type: ignore[return-value]


def read_vectors_header(path: Path) -> tuple[tuple[int, int], str, int]:
    """``((rows, dim), dtype name, data offset)`` of a vectors ``.npy`` file, checked against the file's size.

    Raises:
        InputError: If the file is missing, not a 2-D C-order ``.npy`` of a stored dtype, or its size does not
            match its header (truncated or padded).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such vectors file")
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(handle)
            offset = handle.tell()
    except (ValueError, OSError, SyntaxError) as exc:
        raise InputError(f"{path}: not a vectors .npy file ({exc})") from None
    if len(shape) != 2 or fortran:
        raise InputError(f"{path}: expected a 2-D C-order matrix, got shape {shape}")
    name = dtype_name(np.empty(0, dtype=dtype))
    expected = offset + shape[0] * shape[1] * np.dtype(dtype).itemsize
    size = path.stat().st_size
    if size != expected:
        raise InputError(f"{path}: {size} bytes, but its header ({shape[0]} x {shape[1]} {name}) needs {expected} "
                         "(truncated or changed)")
    return (int(shape[0]), int(shape[1])), name, offset


def open_vectors(path: Path) -> np.ndarray:
    """Memory-map a vectors ``.npy`` file read-only, in its stored dtype (nothing is read until used)."""
    (rows, dim), name, offset = read_vectors_header(path)
    if rows == 0:
        return np.zeros((0, dim), dtype=STORE_DTYPES[name])
    array = np.memmap(path, dtype=STORE_DTYPES[name], mode="r", offset=offset, shape=(rows, dim))
    if hasattr(os, "preadv"):  # row look-ups read the file (read_rows); closed with the array
        fd = os.open(path, os.O_RDONLY)
        array.gloss_file = (fd, offset)  # type: ignore[attr-defined]
        weakref.finalize(array, os.close, fd)
    # Searches read scattered rows (re-ranked candidates, history items): without this hint every row read pulls
    # in the kernel's read-ahead window, so a few thousand queries made the whole 0.7 GB file of 1M items resident.
    advise(array, "MADV_RANDOM")
    return array


class VectorStore:
    """Catalogue vectors as rows of stored-dtype segments minus removed rows; indexed by catalogue position.

    Supports what retrieval and fusion need of a matrix: ``len``, ``shape``, ``store[positions]`` (float32 rows;
    an int gives one 1-D row), and ``np.asarray(store)`` (the whole live matrix as float32: a copy, for small
    catalogues and tests).

    Args:
        segments: Stored-dtype matrices of one dim and dtype (memory-mapped or in memory), physical rows in order.
        removed: Sorted unique physical rows of retired items (None: none).

    Raises:
        InputError: If the segments disagree on dim or dtype, or a removed row is out of range.
    """

    ndim = 2
    dtype = np.dtype(np.float32)  # what rows come out as

    def __init__(self, segments: Sequence[np.ndarray], removed: np.ndarray | None = None) -> None:
        if not segments:
            raise InputError("no vector segments")
        self.segments = list(segments)
        self.dim = int(self.segments[0].shape[1])
        self.stored_dtype = dtype_name(self.segments[0])
        for seg in self.segments:
            if seg.ndim != 2 or seg.shape[1] != self.dim or dtype_name(seg) != self.stored_dtype:
                raise InputError(f"vector segments disagree: {seg.shape} {seg.dtype} vs dim {self.dim} "
                                 f"{self.stored_dtype}")
        self.starts = np.cumsum([0] + [len(s) for s in self.segments]).astype(np.int64)
        self.num_physical = int(self.starts[-1])
        removed = np.zeros(0, dtype=np.int64) if removed is None else np.asarray(removed, dtype=np.int64)
        if len(removed) and (removed[0] < 0 or removed[-1] >= self.num_physical or np.any(np.diff(removed) <= 0)):
            raise InputError(f"removed rows must be sorted, unique and in 0..{self.num_physical - 1}")
        self.removed = removed
        self._adjusted = removed - np.arange(len(removed))  # position p is physical p + #(adjusted <= p)

    def __len__(self) -> int:
        return self.num_physical - len(self.removed)

    @property
    def shape(self) -> tuple[int, int]:
        """(live rows, dim)."""
        return (len(self), self.dim)

    @property
    def nbytes_stored(self) -> int:
        """Bytes of the stored rows (all segments)."""
        return sum(int(s.nbytes) for s in self.segments)

    def physical(self, positions: np.ndarray) -> np.ndarray:
        """Physical rows of catalogue positions."""
        positions = np.asarray(positions, dtype=np.int64)
        if not len(self.removed):
            return positions
        return positions + np.searchsorted(self._adjusted, positions, side="right")

    def positions_of(self, rows: np.ndarray) -> np.ndarray:
        """Catalogue positions of physical rows (-1 for a removed row)."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(self.removed):
            return rows
        before = np.searchsorted(self.removed, rows, side="left")
        hit = before < len(self.removed)
        hit[hit] = self.removed[before[hit]] == rows[hit]
        return np.where(hit, -1, rows - before)

    def stored_rows(self, rows: np.ndarray) -> np.ndarray:
        """Stored-dtype rows of physical row numbers (any order)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), dtype=self.segments[0].dtype)
        which = np.searchsorted(self.starts, rows, side="right") - 1 if len(self.segments) > 1 else np.zeros(
            len(rows), dtype=np.int64)
        for seg in np.unique(which).tolist():
            mask = which == seg
            local = rows[mask] - self.starts[seg]
            source = self.segments[seg]
            out[mask] = read_rows(source, local) if len(local) <= PREAD_MAX_ROWS else source[local]
        return out

    def rows(self, positions: Any) -> np.ndarray:
        """Float32 rows of catalogue positions.

        Raises:
            IndexError: If a position is outside ``0..len - 1``.
        """
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size and (positions.min() < -len(self) or positions.max() >= len(self)):
            raise IndexError(f"position out of range for {len(self)} vectors")
        positions = np.where(positions < 0, positions + len(self), positions)
        return dequantize(self.stored_rows(self.physical(positions.reshape(-1)))).reshape(*positions.shape, self.dim)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):
            rows, rest = key[0], key[1:]
            return self[rows][(slice(None), *rest) if not np.isscalar(rows) else rest]
        if isinstance(key, slice):
            return self.rows(np.arange(len(self))[key])
        return self.rows(key)

    def block(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Float32 rows of positions ``start..stop - 1`` (contiguous reads when nothing in between is removed)."""
        first, last = self.physical(np.array([start, stop - 1]))
        if last - first == stop - start - 1 and len(self.segments) == 1:
            return dequantize(self.segments[0][first : last + 1], out)
        return dequantize(self.stored_rows(self.physical(np.arange(start, stop))), out)

    def blocks(self, block_rows: int = DEFAULT_BLOCK_ROWS, start: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        """``(first position, float32 rows)`` of consecutive blocks of positions ``start..``, one buffer reused.

        Blocks begin at multiples of ``block_rows`` (the first one at ``start``), so they do not depend on how
        the rows are split into segments.
        """
        buffer = np.empty((min(block_rows, max(len(self) - start, 0)), self.dim), dtype=np.float32)
        begin = start
        while begin < len(self):
            stop = min((begin // block_rows + 1) * block_rows, len(self))
            yield begin, self.block(begin, stop, buffer[: stop - begin])
            begin = stop

    def stored_blocks(self, block_rows: int = DEFAULT_BLOCK_ROWS, start: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        """Like :meth:`blocks`, in the stored dtype (a view of the file where no removed row lies in between).

        The mappings read ahead while the scan runs (they are advised random otherwise, see :func:`open_vectors`).
        """
        for segment in self.segments:
            advise(segment, "MADV_SEQUENTIAL")
        try:
            yield from self._stored_blocks(block_rows, start)
        finally:
            for segment in self.segments:
                advise(segment, "MADV_RANDOM")

    def _stored_blocks(self, block_rows: int, start: int) -> Iterator[tuple[int, np.ndarray]]:
        begin = start
        while begin < len(self):
            stop = min((begin // block_rows + 1) * block_rows, len(self))
            first, last = self.physical(np.array([begin, stop - 1]))
            if last - first == stop - begin - 1 and len(self.segments) == 1:
                yield begin, self.segments[0][first : last + 1]
            else:
                yield begin, self.stored_rows(self.physical(np.arange(begin, stop)))
            begin = stop

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.empty((len(self), self.dim), dtype=np.float32)
        for start, rows in self.blocks():
            out[start : start + len(rows)] = rows
        return out if dtype is None else out.astype(dtype)


PREAD_MAX_ROWS = 4096  # look-ups of up to this many rows read the file (pread) instead of touching the mapping


def read_rows(segment: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows of a vectors file opened by :func:`open_vectors`, read with ``pread`` (other arrays: indexed).

    A page the process touches through a mapping stays in its resident set, and on a fault Linux maps the cached
    pages around it too (fault-around, whatever ``madvise`` says): re-ranking a few dozen scattered rows per query
    made the whole 0.7 GB file of 1M items resident within a thousand queries. Read through the file, the rows go
    to the page cache (shared, evictable) and not to this process's RSS.
    """
    source = getattr(segment, "gloss_file", None)
    if source is None:
        return np.asarray(segment[rows])
    fd, data_offset = source
    row_bytes = segment.shape[1] * segment.itemsize
    out = np.empty((len(rows), segment.shape[1]), dtype=segment.dtype)
    raw = out.view(np.uint8).reshape(len(rows), row_bytes)
    for i, row in enumerate(rows.tolist()):
        if os.preadv(fd, [raw[i]], data_offset + row * row_bytes) != row_bytes:
            raise InputError(f"{segment.filename}: row {row} lies past the end of the file (truncated?)")
    return out


def advise(segment: np.ndarray, option: str) -> None:
    """``madvise`` a memory-mapped segment (``MADV_RANDOM`` for look-ups, ``MADV_SEQUENTIAL`` during a scan)."""
    handle = getattr(segment, "_mmap", None)
    if handle is not None and hasattr(handle, "madvise") and hasattr(mmap, option):
        handle.madvise(getattr(mmap, option))

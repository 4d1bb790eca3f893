"""One file of named numpy arrays, opened memory-mapped in their stored dtype (no parse, no copy).

Large bundle parts (the compact catalogue, the co-purchase statistics) are read at every cold start; a ``.npz``
must be decompressed and copied into memory first. This layout is mapped instead, so opening costs O(1) and
a request touches only the pages it reads::

    b"GLOSSARR" | uint32 layout version | uint32 header bytes | uint32 header CRC-32 | header JSON |
    arrays, each 64-byte aligned

The header JSON holds ``{"meta": {...}, "arrays": {name: {"dtype", "shape", "offset", "crc32"}}}``. Every open
checks the header's CRC and that every array lies inside the file (a truncated file is refused); ``verify=True``
also checks each array's CRC-32, reading the file once (not through the map): a part small enough for that at
every start does it (the trie), the large ones leave it to the bundle manifest's hashes.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import struct
import weakref
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from gloss.edge.errors import InputError
from gloss.edge.files import atomic_path, check_input_file

logger = logging.getLogger(__name__)

MAGIC = b"GLOSSARR"
LAYOUT_VERSION = 2
ALIGN = 64
PREFIX = struct.Struct("<8sIII")
READ_CHUNK = 16 << 20
MAX_HEADER_BYTES = 1 << 20


def _aligned(offset: int) -> int:
    return -(-offset // ALIGN) * ALIGN


def save_arrays(path: Path, arrays: dict[str, np.ndarray | list[np.ndarray]], meta: dict[str, Any]) -> Path:
    """Write ``arrays`` (C order, in their own dtype) and JSON ``meta`` to ``path`` atomically.

    Args:
        path: The file to write.
        arrays: Name -> array, or name -> list of 1-D chunks of one dtype (at least one, possibly empty), written
            one after the other as one array without joining them in memory first.
        meta: JSON-serialisable facts about the arrays (format version, settings).

    Returns:
        ``path``.
    """
    path = Path(path)
    parts = {name: [np.asarray(a) for a in value] if isinstance(value, list) else [np.asarray(value)]
             for name, value in arrays.items()}
    table, offset = {}, 0
    for name, chunks in parts.items():
        dtype = chunks[0].dtype
        if len(chunks) > 1 and any(c.dtype != dtype or c.ndim != 1 for c in chunks):
            raise ValueError(f"chunks of {name!r} must be 1-D arrays of one dtype")
        shape = list(chunks[0].shape) if len(chunks) == 1 else [sum(len(c) for c in chunks)]
        crc = 0
        for chunk in chunks:
            crc = _crc(chunk, crc)
        table[name] = {"dtype": dtype.str, "shape": shape, "offset": offset, "crc32": crc}
        offset = _aligned(offset + sum(c.nbytes for c in chunks))
    header = json.dumps({"meta": meta, "arrays": table}).encode("utf-8")
    start = _aligned(PREFIX.size + len(header))
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(PREFIX.pack(MAGIC, LAYOUT_VERSION, len(header), zlib.crc32(header)) + header)
        for name, chunks in parts.items():
            handle.seek(start + table[name]["offset"])
            for chunk in chunks:
                _write(handle, chunk)
        handle.truncate(start + offset)
    return path


def _crc(array: np.ndarray, crc: int = 0, chunk_bytes: int = READ_CHUNK) -> int:
    """CRC-32 of an array's bytes, continuing ``crc``."""
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    for begin in range(0, len(flat), chunk_bytes):
        crc = zlib.crc32(flat[begin : begin + chunk_bytes], crc)
    return crc


def _write(handle: Any, array: np.ndarray, chunk_bytes: int = 64 << 20) -> None:
    """Write an array's bytes in chunks (a memory-mapped source is not copied into memory at once)."""
    flat = np.ascontiguousarray(array).reshape(-1)
    step = max(1, chunk_bytes // max(flat.itemsize, 1))
    for begin in range(0, len(flat), step):
        handle.write(flat[begin : begin + step].tobytes())


class ArrayFile:
    """The arrays of one file, memory-mapped, plus positional reads of a few elements.

    Reading through the map costs more resident memory than it reads: each page fault maps the ~64 KB around it
    already in the page cache (fault-around), so a server answering requests from random rows of a large file
    slowly maps all of it. :meth:`read` copies just the elements asked for (``os.pread``) and maps nothing.

    Attributes:
        arrays: Name -> read-only array over the map.
        meta: The file's JSON metadata.
    """

    def __init__(self, path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any],
                 specs: dict[str, tuple[np.dtype, tuple[int, ...], int]]) -> None:
        self.path, self.arrays, self.meta, self._specs = path, arrays, meta, specs
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        weakref.finalize(self, os.close, self._fd)

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        """Elements ``start:stop`` of a 1-D array, read from the file (clipped to the array)."""
        dtype, shape, offset = self._specs[name]
        start, stop = max(0, start), min(stop, shape[0] if shape else 0)
        if stop <= start:
            return np.zeros(0, dtype=dtype)
        data = os.pread(self._fd, (stop - start) * dtype.itemsize, offset + start * dtype.itemsize)
        return np.frombuffer(data, dtype=dtype)


def open_arrays(path: Path, what: str, hint: str, verify: bool = False) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Map the arrays of a file written by :func:`save_arrays` (read-only views, nothing read yet).

    Args:
        path: The file.
        what: What the file holds, for messages ("co-purchase file").
        hint: What to do about a bad file, ending every message.
        verify: Also check every array's CRC-32 (reads the whole file once).

    Returns:
        ``(arrays, meta)``.

    Raises:
        InputError: If the file is missing, not of this layout, shorter than its header says, its header is
            damaged, or (``verify``) an array's bytes changed.
    """
    opened = open_array_file(path, what, hint, verify)
    return opened.arrays, opened.meta


def open_array_file(path: Path, what: str, hint: str, verify: bool = False) -> ArrayFile:
    """Like :func:`open_arrays`, keeping the file open for :meth:`ArrayFile.read`.

    Raises:
        InputError: As :func:`open_arrays`.
    """
    path = check_input_file(Path(path), what)
    with open(path, "rb") as handle:
        prefix = handle.read(PREFIX.size)
        if len(prefix) < PREFIX.size or prefix[:8] != MAGIC:
            raise InputError(f"{path}: not a gloss {what} (no {MAGIC.decode()} header); {hint}")
        _, version, header_len, header_crc = PREFIX.unpack(prefix)
        if version != LAYOUT_VERSION:
            raise InputError(f"{path}: array layout {version}, expected {LAYOUT_VERSION}; {hint}")
        raw = handle.read(min(header_len, MAX_HEADER_BYTES))
        if len(raw) != header_len or zlib.crc32(raw) != header_crc:
            raise InputError(f"{path}: not a gloss {what} (its header fails its length or CRC-32 check); {hint}")
        try:
            header = json.loads(raw.decode("utf-8"))
            table, meta = header["arrays"], header["meta"]
            start = _aligned(PREFIX.size + header_len)
            specs = {name: (np.dtype(spec["dtype"]), tuple(int(n) for n in spec["shape"]), start + int(spec["offset"]))
                     for name, spec in table.items()}
            crcs = {name: int(spec["crc32"]) for name, spec in table.items()}
        except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{path}: unreadable {what} header ({exc}); {hint}") from None
        size = handle.seek(0, 2)
        for name, (dtype, shape, offset) in specs.items():
            end = offset + dtype.itemsize * int(np.prod(shape, dtype=np.int64))
            if offset < start or end > size:
                raise InputError(f"{path}: {what} is truncated ({size} bytes, array {name!r} ends at {end}); {hint}")
        if verify:
            _verify(handle, specs, crcs, f"{path}: not a gloss {what}", hint)
        buffer = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    arrays = {name: _view(buffer, dtype, shape, offset) for name, (dtype, shape, offset) in specs.items()}
    return ArrayFile(path, arrays, meta, specs)


def _verify(handle: Any, specs: dict[str, tuple[np.dtype, tuple[int, ...], int]], crcs: dict[str, int], name: str,
            hint: str) -> None:
    """Compare every array's CRC-32 with the header's, reading the file (not mapping it: no resident pages)."""
    for array, (dtype, shape, offset) in specs.items():
        left, crc = dtype.itemsize * int(np.prod(shape, dtype=np.int64)), 0
        handle.seek(offset)
        while left:
            data = handle.read(min(left, READ_CHUNK))
            if not data:
                break
            crc, left = zlib.crc32(data, crc), left - len(data)
        if crc != crcs[array]:
            raise InputError(f"{name} (array {array!r} fails its CRC-32 check: the file is corrupt); {hint}")


def _view(buffer: Any, dtype: np.dtype, shape: tuple[int, ...], offset: int) -> np.ndarray:
    """A read-only array over ``buffer`` (an empty one owns no bytes: frombuffer refuses an offset at the end)."""
    count = int(np.prod(shape, dtype=np.int64))
    if count == 0:
        empty = np.zeros(shape, dtype=dtype)
        empty.flags.writeable = False
        return empty
    return np.frombuffer(buffer, dtype=dtype, count=count, offset=offset).reshape(shape)

"""Read a GGUF file's metadata header in plain Python (no gguf-py, no numpy, no tensors loaded).

gguf-py's ``GGUFReader`` parses every token string and takes seconds on a 49k-token vocabulary; this
reads only what it needs in milliseconds, so the edge runtime can check a model before llama.cpp loads it.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from gloss.edge.errors import InputError

GGUF_MAGIC = b"GGUF"
LLAMA_ARCH = "llama"


def check_gguf(path: Path, max_array: int = 64, stop_after: str | None = None) -> dict[str, Any]:
    """Read a GGUF file's metadata and check that it holds a LLaMA-architecture model.

    Args:
        path: A ``.gguf`` file.
        max_array: See :func:`read_gguf_metadata`.
        stop_after: See :func:`read_gguf_metadata`; ``"general.architecture"`` makes the check instant.

    Returns:
        The metadata key/values (arrays longer than ``max_array`` items are left out) plus ``"tensor_count"``.

    Raises:
        InputError: If the file is missing, is not a GGUF file, or is not a LLaMA-architecture model.
    """
    meta = read_gguf_metadata(path, max_array=max_array, stop_after=stop_after)
    arch = meta.get("general.architecture")
    if arch != LLAMA_ARCH:
        what = f"a {arch} GGUF" if arch else "a GGUF without general.architecture"
        raise InputError(
            f"{path} is {what}; the edge runtime needs a LLaMA-architecture model "
            "(export one with gloss-export gguf)"
        )
    return meta


# GGUF value types (gguf.GGUFValueType): fixed-size ones map to struct formats; 8 = string, 9 = array.
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9


def read_gguf_metadata(path: Path, max_array: int = 64, stop_after: str | None = None) -> dict[str, Any]:
    """Read the key/value metadata of a GGUF (v2/v3) file without loading its tensors.

    Args:
        path: A ``.gguf`` file.
        max_array: Arrays with more items than this (token lists, merges) are skipped, not returned.
        stop_after: Stop reading once this key has been read (e.g. ``general.architecture``, which
            writers put first).

    Returns:
        ``{key: value}`` plus ``"tensor_count"``.

    Raises:
        InputError: If the file is missing, not a GGUF file, or truncated.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory; expected a .gguf file")
    if not path.is_file():
        raise InputError(f"{path}: no such file; write a GGUF with gloss-export gguf")
    try:
        with open(path, "rb") as handle:
            if handle.read(4) != GGUF_MAGIC:
                raise InputError(
                    f"{path}: not a GGUF file; pass a .gguf written by gloss-export gguf or quantize"
                )
            version, tensor_count, kv_count = struct.unpack("<IQQ", _read(handle, 20))
            if version < 2:
                raise InputError(f"{path}: GGUF version {version} is too old; convert the model again")
            meta: dict[str, Any] = {"tensor_count": tensor_count}
            for _ in range(kv_count):
                key = _read_string(handle)
                meta[key] = _read_value(handle, struct.unpack("<I", _read(handle, 4))[0], max_array)
                if key == stop_after:
                    break
            meta = {k: v for k, v in meta.items() if v is not _SKIPPED}
    except (struct.error, UnicodeDecodeError, EOFError) as exc:
        raise InputError(
            f"{path}: corrupt GGUF header ({exc}); export it again with gloss-export gguf"
        ) from exc
    return meta


_SKIPPED = object()


def _read(handle: Any, size: int) -> bytes:
    data = handle.read(size)
    if len(data) != size:
        raise EOFError("file ends inside the header")
    return data


MAX_STRING_BYTES = 1 << 24  # no metadata string is this long; a larger length means a corrupt header


def _read_string(handle: Any) -> str:
    (size,) = struct.unpack("<Q", _read(handle, 8))
    if size > MAX_STRING_BYTES:
        raise EOFError(f"implausible string length {size}")
    return _read(handle, size).decode("utf-8")


def _read_value(handle: Any, vtype: int, max_array: int) -> Any:
    if vtype in _SCALARS:
        fmt = _SCALARS[vtype]
        return struct.unpack(fmt, _read(handle, struct.calcsize(fmt)))[0]
    if vtype == _STRING:
        return _read_string(handle)
    if vtype != _ARRAY:
        raise struct.error(f"unknown GGUF value type {vtype}")
    itype, count = struct.unpack("<IQ", _read(handle, 12))
    if count <= max_array:
        return [_read_value(handle, itype, max_array) for _ in range(count)]
    if itype in _SCALARS:
        handle.seek(count * struct.calcsize(_SCALARS[itype]), 1)
    else:
        for _ in range(count):
            _read_value(handle, itype, 0)  # walk variable-size items (strings) without keeping them
    return _SKIPPED

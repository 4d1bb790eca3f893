"""Reading user files (UTF-8 text, JSON Lines, plain or gzip) with errors that name the file, line and byte;
atomic writes that follow the user's umask."""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import json
import logging
import os
import sys
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from gloss.edge.errors import InputError

logger = logging.getLogger(__name__)

STDIN = "-"
NEWLINE = b"\n"
UTF8_HINT = "save the file as UTF-8"


def check_input_file(path: Path, what: str = "file") -> Path:
    """Return ``path`` if it exists and is not a directory (a pipe such as ``<(cmd)`` is fine).

    Raises:
        InputError: If it is missing or a directory.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory; expected a {what}")
    if not path.exists():
        raise InputError(f"{path}: no such {what}")
    return path


def decode_utf8(data: bytes, name: str, offset: int = 0, line: int = 1, hint: str = UTF8_HINT) -> str:
    """Decode UTF-8 bytes (a leading byte order mark is dropped).

    Args:
        data: The bytes.
        name: File name for the error message.
        offset: Byte offset of ``data[0]`` in the file (for a chunk of a larger file).
        line: Line number of ``data[0]`` in the file.
        hint: What to do about it, ending the message.

    Raises:
        InputError: Naming the file, the byte offset and line of the first byte that is not UTF-8.
    """
    start = len(codecs.BOM_UTF8) if offset == 0 and data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = start + exc.start
        where = f"byte offset {offset + bad} (line {line + data.count(NEWLINE, 0, bad)})"
        raise InputError(
            f"{name}: not UTF-8 text: byte 0x{data[bad]:02x} at {where}; {hint}"
        ) from None


def read_text(path: Path | str, what: str = "file", hint: str = UTF8_HINT) -> str:
    """Read a whole UTF-8 text file (``-`` = stdin); ``what`` and ``hint`` shape the error messages.

    Raises:
        InputError: If the file is missing, a directory, unreadable or not UTF-8 (naming the byte offset).
    """
    if str(path) == STDIN:
        stream = getattr(sys.stdin, "buffer", None)
        return decode_utf8(stream.read(), "<stdin>") if stream is not None else sys.stdin.read()
    path = check_input_file(Path(path), what)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return decode_utf8(data, str(path), hint=hint)


def read_yaml(path: Path | str, what: str = "file") -> Any:
    """Parse a UTF-8 YAML (or JSON) file; an empty file gives None.

    Raises:
        InputError: If the file is missing, not UTF-8 (naming the byte offset) or not valid YAML (one line
            naming the line and column).
    """
    import yaml  # lazy: the edge runtime rarely needs it

    text = read_text(path, what)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(f"{path}: not valid YAML ({where}{problem})") from None


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Yield the JSON objects of a ``.jsonl`` or ``.jsonl.gz`` file, ``-`` meaning stdin.

    Raises:
        InputError: If the file is missing, not (gzipped) UTF-8 text, or a line is not a JSON object.
    """
    for _, row in read_jsonl_lines(path):
        yield row


def read_jsonl_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Like :func:`read_jsonl`, with each object's line number (blank lines count, as in an editor)."""
    path = Path(path)
    if str(path) == STDIN:
        stream = getattr(sys.stdin, "buffer", None)
        yield from _parse_lines(stream if stream is not None else sys.stdin, "<stdin>")
        return
    check_input_file(path)
    gzipped = path.suffix == ".gz"
    try:
        with gzip.open(path, "rb") if gzipped else open(path, "rb") as handle:
            yield from _parse_lines(handle, str(path), decompressed=gzipped)
    except (OSError, EOFError, zlib.error) as exc:
        kind = "gzipped JSON Lines" if gzipped else "JSON Lines"
        raise InputError(f"{path}: cannot be read as {kind}: {exc}") from None


def _parse_lines(
    handle: Iterable[bytes | str], name: str, decompressed: bool = False
) -> Iterator[tuple[int, dict[str, Any]]]:
    offset, text_name = 0, f"{name} (decompressed)" if decompressed else name
    for number, raw in enumerate(handle, start=1):
        line = decode_utf8(raw, text_name, offset, number) if isinstance(raw, bytes) else raw
        offset += len(raw)
        if line.strip():
            yield number, parse_json_object(line, name, number)


def parse_json_object(line: str, name: str, number: int) -> dict[str, Any]:
    """One JSONL line that must hold a JSON object.

    Raises:
        InputError: Naming ``name:number`` if the line is not valid JSON or not an object.
    """
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"{name}:{number}: not valid JSON ({exc.msg})") from None
    if not isinstance(row, dict):
        raise InputError(f"{name}:{number}: expected a JSON object, got {type(row).__name__}")
    return row


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (``/proc/self/status``)."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass  # not Linux (or an old kernel): fall back to set-and-restore below
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: Path, directory: bool = False) -> None:
    """Give a file made by ``mkstemp`` / ``mkdtemp`` (0600 / 0700) the mode a plain ``open`` would give."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def make_parent_dir(path: Path) -> None:
    """Create the folder ``path`` will live in (and its parents).

    Raises:
        InputError: If it cannot be created (a file in the way, a read-only or virtual file system).
    """
    parent = Path(path).parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{path}: cannot create the folder {parent} ({exc.strerror or exc})") from None


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Give a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    make_parent_dir(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise InputError(f"{path}: cannot write there ({exc.strerror})") from None
    os.close(fd)
    tmp_path = Path(tmp)
    follow_umask(tmp_path)  # mkstemp makes 0600 files; a service running as another user must read them
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file atomically (temp file + rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write pretty JSON atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write JSON Lines (gzip if the name ends in ``.gz``) atomically; return the number of rows."""
    count = 0
    with atomic_path(path) as tmp:
        raw: IO[bytes] = gzip.GzipFile(tmp, "wb", mtime=0) if Path(path).suffix == ".gz" else open(tmp, "wb")
        with raw, io.TextIOWrapper(raw, encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
    return count


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()

"""Atomic writes and JSON Lines reading (plain or gzip) with errors that name the file and line."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from gloss.edge.errors import InputError

logger = logging.getLogger(__name__)


def _open_text(path: Path, mode: str) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, mode + "t", encoding="utf-8")  # type: ignore[return-value]
    return open(path, mode, encoding="utf-8")


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Yield the JSON objects of a ``.jsonl`` or ``.jsonl.gz`` file, ``-`` meaning stdin.

    Raises:
        InputError: If the file is missing or a line is not a JSON object.
    """
    path = Path(path)
    if str(path) == "-":
        import sys

        yield from _parse_lines(sys.stdin, "<stdin>")
        return
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        with _open_text(path, "r") as handle:
            yield from _parse_lines(handle, str(path))
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot be read as (gzipped) JSON Lines: {exc}") from exc


def _parse_lines(handle: Iterable[str], name: str) -> Iterator[dict[str, Any]]:
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{name}:{number}: not valid JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise InputError(f"{name}:{number}: expected a JSON object, got {type(row).__name__}")
        yield row


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Give a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
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

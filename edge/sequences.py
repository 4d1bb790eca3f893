"""Users' purchase sequences as two flat arrays, streamed from JSONL without a Python object per user or item.

``gloss.edge.splits.load_sequences`` keeps every user as a :class:`~gloss.edge.splits.UserSequence` of ASIN strings:
fine for evaluation users, ~3 GB for the 16 million interactions of a million-item shop. The bundle build needs only
catalogue positions, so :func:`read_sequence_arrays` parses the file a chunk of lines at a time (one ``json.loads``
per chunk) and keeps 4 bytes per interaction.
"""

from __future__ import annotations

import gzip
import json
import logging
import zlib
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import IO, Any

import numpy as np

from gloss.edge.errors import InputError
from gloss.edge.files import check_input_file, decode_utf8, parse_json_object

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 22  # whole lines parsed per json.loads (about 20k users)


@dataclass(frozen=True)
class SequenceArrays:
    """Users' sequences as catalogue positions in two flat arrays.

    Attributes:
        items: (num_interactions,) int32 positions, user by user, each user's in time order.
        offsets: (num_users + 1,) int64: user ``u``'s items are ``items[offsets[u]:offsets[u + 1]]``.
    """

    items: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __iter__(self) -> Iterator[np.ndarray]:
        for start, stop in zip(self.offsets[:-1].tolist(), self.offsets[1:].tolist(), strict=True):
            yield self.items[start:stop]

    @classmethod
    def from_lists(cls, sequences: Iterable[Sequence[int]]) -> SequenceArrays:
        """Flatten per-user position lists (small, in-memory data: tests, benchmarks)."""
        arrays = [np.asarray(seq, dtype=np.int64).reshape(-1) for seq in sequences]
        lengths = np.array([len(a) for a in arrays], dtype=np.int64)
        items = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
        return cls(items, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))


def read_sequence_arrays(path: Path, positions: Mapping[str, int], holdout: int = 0) -> SequenceArrays:
    """Stream ``{"user", "items"}`` rows into flat position arrays, without the last ``holdout`` items of each user.

    Args:
        path: JSONL(.gz) of sequences (time order).
        positions: Item id -> catalogue position.
        holdout: Items cut from the end of every sequence before mapping (2: tune on validation, 1: evaluate on
            test, 0: serve), so held-out items need not be in the catalogue.

    Raises:
        InputError: If the file is unreadable, a line is not JSON, a row is malformed, a kept item is not in
            ``positions``, ``holdout`` is negative, or the file holds no sequences.
    """
    if holdout < 0:
        raise InputError(f"--holdout must be >= 0, got {holdout}")
    items, ends = array("i"), array("q", [0])
    lookup = positions.__getitem__
    num_rows = 0
    for rows, lines in _row_chunks(Path(path)):
        kept = []
        for row, line in zip(rows, lines, strict=True):
            seq = row.get("items")
            if not isinstance(row.get("user"), str) or not isinstance(seq, list):
                raise InputError(f"{path}:{line}: needs 'user' (string) and 'items' (list of item ids)")
            kept.append(seq[: len(seq) - holdout] if holdout else seq)
        try:
            items.extend(list(map(lookup, chain.from_iterable(kept))))
        except (KeyError, TypeError):
            _raise_bad_item(path, rows, lines, kept, positions)
        for seq in kept:
            ends.append(ends[-1] + len(seq))
        num_rows += len(rows)
    if not num_rows:
        raise InputError(f"{path}: no user sequences")
    logger.info("sequences %s: %d users, %d items kept (holdout %d)", path, num_rows, len(items), holdout)
    # frombuffer: the arrays' own buffers, no copy (nothing is appended to them any more)
    return SequenceArrays(np.frombuffer(items, dtype=np.int32) if items else np.zeros(0, dtype=np.int32),
                          np.frombuffer(ends, dtype=np.int64))


def _raise_bad_item(path: Path, rows: list[dict[str, Any]], lines: list[int], kept: list[list[Any]],
                    positions: Mapping[str, int]) -> None:
    """Name the line of a chunk's first row whose items are not all strings, or of its first unknown item."""
    for row, line, seq in zip(rows, lines, kept, strict=True):
        if not all(isinstance(i, str) for i in row["items"]):
            raise InputError(f"{path}:{line}: needs 'user' (string) and 'items' (list of item ids)")
        unknown = next((i for i in seq if i not in positions), None)
        if unknown is not None:
            raise InputError(f"{path}:{line}: user {row['user']}: item {unknown!r} is not in the catalogue; use "
                             "the catalogue the sequences were built with")
    raise AssertionError("a chunk failed to map but no row is at fault")  # pragma: no cover


def _row_chunks(path: Path) -> Iterator[tuple[list[Any], list[int]]]:
    """The JSON values of a JSONL(.gz) file and their line numbers, ``CHUNK_BYTES`` of lines per list (blank lines
    skipped), each list parsed with one ``json.loads``; errors name the file and line as
    :func:`gloss.edge.files.read_jsonl` does."""
    check_input_file(path)
    gzipped = path.suffix == ".gz"
    try:
        with gzip.open(path, "rb") if gzipped else open(path, "rb") as handle:
            yield from _parse_chunks(handle, str(path), gzipped)
    except (OSError, EOFError, zlib.error) as exc:
        kind = "gzipped JSON Lines" if gzipped else "JSON Lines"
        raise InputError(f"{path}: cannot be read as {kind}: {exc}") from None


def _parse_chunks(handle: IO[bytes], name: str, decompressed: bool) -> Iterator[tuple[list[Any], list[int]]]:
    offset, first_line = 0, 1
    text_name = f"{name} (decompressed)" if decompressed else name
    while True:
        lines = handle.readlines(CHUNK_BYTES)
        if not lines:
            return
        data = b"".join(lines)
        text = decode_utf8(data, text_name, offset, first_line)
        numbered = [(number, line) for number, line in enumerate(text.split("\n"), start=first_line) if line.strip()]
        rows = [line for _, line in numbered]
        values = _parse_joined(rows)
        if values is None:
            values = _parse_lines_one_by_one(text, name, first_line)
        offset += len(data)
        first_line += len(lines)
        yield values, [number for number, _ in numbered]


def _parse_joined(rows: list[str]) -> list[Any] | None:
    """Every row parsed by one ``json.loads`` of ``[row,row,...]``, or None if that is not exactly one object per
    row (then the rows are parsed one by one, which names the bad line)."""
    if not all(row.lstrip().startswith("{") and row.rstrip().endswith("}") for row in rows):
        return None
    try:
        values = json.loads("[" + ",".join(rows) + "]")
    except json.JSONDecodeError:
        return None
    return values if len(values) == len(rows) and all(isinstance(v, dict) for v in values) else None


def _parse_lines_one_by_one(text: str, name: str, first_line: int) -> list[Any]:
    """The slow path for a chunk that failed as a whole: parse line by line to name the bad line."""
    return [parse_json_object(line, name, number)
            for number, line in enumerate(text.split("\n"), start=first_line) if line.strip()]

"""Co-purchase statistics: item -> next-item transition counts in CSR form, plus item popularity.

The edge side of the format (read, check, look up); ``gloss.export.copurchase`` builds it.

Format 2 (this version) is one :mod:`gloss.edge.arrays` file, opened memory-mapped in its stored dtypes: a
million items' statistics (about 100 million pairs, 0.8 GB) cost nothing to open, and a request reads only the
rows of its history items. It also stores each row's total count, so a row's probabilities need no pass over
the pairs. Format 1 was a compressed ``.npz`` that had to be inflated into memory on every start; such a file is
refused with a line saying to rebuild it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np

from gloss.edge.arrays import ArrayFile, open_array_file, save_arrays
from gloss.edge.errors import InputError
from gloss.edge.files import check_input_file

logger = logging.getLogger(__name__)

COPURCHASE_FORMAT = 2
BUILD_HINT = "rebuild it with gloss-export fusion (or gloss.export.copurchase.build_copurchase)"
Chunks = Union[np.ndarray, list[np.ndarray]]  # noqa: UP007  (a runtime alias: py3.10 has no `type`)
ARRAYS = {"indptr": np.int64, "indices": np.int32, "data": np.float32, "popularity": np.float32,
          "row_sums": np.float64}


def row_sums(indptr: np.ndarray, data: np.ndarray) -> np.ndarray:
    """Each row's total count in float64, summed within the row only (so a row's sum does not depend on the
    rows before it, and a builder that writes rows block by block gets the same sums)."""
    sums = np.zeros(len(indptr) - 1, dtype=np.float64)
    full = np.flatnonzero(indptr[1:] > indptr[:-1])
    if len(full):
        sums[full] = np.add.reduceat(np.asarray(data, dtype=np.float64), indptr[:-1][full])
    return sums


def write_copurchase(
    path: Path, indptr: np.ndarray, indices: Chunks, data: Chunks, popularity: np.ndarray, sums: Chunks,
    window: int, decay: float,
) -> None:
    """Write statistics in format 2, atomically; ``indices``, ``data`` and ``sums`` may be lists of chunks (a
    builder's blocks, written one after the other without joining them in memory).

    Args:
        path: The file.
        indptr: (num_items + 1,) row offsets.
        indices: Successor positions (int32), rows in order.
        data: Their decayed counts (float32).
        popularity: (num_items,) purchase counts.
        sums: (num_items,) row totals (float64).
        window: Successors counted up to this many steps ahead.
        decay: Weight of a successor ``g`` steps ahead: ``decay ** (g - 1)``.
    """
    def typed(value: Chunks, dtype: type) -> list[np.ndarray]:
        parts = value if isinstance(value, list) else [value]
        return [np.asarray(p, dtype=dtype) for p in parts] or [np.zeros(0, dtype=dtype)]

    values = {"indptr": indptr, "indices": indices, "data": data, "popularity": popularity, "row_sums": sums}
    arrays = {name: typed(values[name], dtype) for name, dtype in ARRAYS.items()}
    nnz = sum(len(p) for p in arrays["indices"])
    meta = {"format_version": COPURCHASE_FORMAT, "num_items": len(popularity), "nnz": nnz, "window": int(window),
            "decay": float(decay)}
    save_arrays(path, arrays, meta)  # type: ignore[arg-type]
    logger.info("saved co-purchase %s (%d items, %d pairs)", path, len(popularity), nnz)


@dataclass(frozen=True)
class CoPurchase:
    """Item -> next-item transition statistics in CSR form, plus item popularity.

    Row ``a`` lists the items bought after ``a`` (within the build window) with decayed counts,
    strongest first, so a row's first ``m`` entries are its top ``m`` successors.

    Attributes:
        indptr: (num_items + 1,) int64 row offsets.
        indices: Successor positions, int32.
        data: Decayed counts, float32, descending within each row.
        popularity: (num_items,) float32 purchase counts.
        window: Successors counted up to this many steps ahead.
        decay: Weight of a successor ``g`` steps ahead: ``decay ** (g - 1)``.
        sums: (num_items,) float64 total count of each row; computed from ``data`` when None.
        trusted: The arrays come from a saved file (memory-mapped): only O(1) checks run now, and each row is
            checked when it is read, so opening touches no pair. In-memory statistics are checked in full.
    """

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    popularity: np.ndarray
    window: int
    decay: float
    sums: np.ndarray | None = field(default=None, repr=False, compare=False)
    trusted: bool = field(default=False, repr=False, compare=False)
    _derived: dict[str, np.ndarray] = field(default_factory=dict, init=False, repr=False, compare=False)
    _file: ArrayFile | None = field(default=None, init=False, repr=False, compare=False)  # set by load
    _file_items: int = field(default=0, init=False, repr=False, compare=False)  # rows the file holds

    def __post_init__(self) -> None:
        num_items = len(self.popularity)
        if self.indptr.ndim != 1 or len(self.indptr) != num_items + 1:
            raise InputError(f"co-purchase: indptr has {len(self.indptr)} entries, expected {num_items + 1}; "
                             f"{BUILD_HINT}")
        if len(self.data) != len(self.indices):
            raise InputError(f"co-purchase: {len(self.indices)} indices but {len(self.data)} values; {BUILD_HINT}")
        if self.indptr[0] != 0 or self.indptr[-1] != len(self.indices):
            raise InputError(f"co-purchase: indptr is not a valid CSR row index; {BUILD_HINT}")
        if self.sums is not None and len(self.sums) != num_items:
            raise InputError(f"co-purchase: {len(self.sums)} row sums for {num_items} items; {BUILD_HINT}")
        if not self.trusted:
            if np.any(np.diff(self.indptr) < 0):
                raise InputError(f"co-purchase: indptr is not a valid CSR row index; {BUILD_HINT}")
            if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= num_items):
                raise InputError(f"co-purchase: an index is outside 0..{num_items - 1}; {BUILD_HINT}")
        if self.sums is None:
            object.__setattr__(self, "sums", row_sums(self.indptr, self.data))

    @property
    def num_items(self) -> int:
        """Catalogue size."""
        return len(self.popularity)

    @property
    def nnz(self) -> int:
        """Number of stored (item, successor) pairs."""
        return len(self.data)

    def row(self, item: int, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Successors of ``item`` (strongest first) and their transition probabilities P(next | item).

        Raises:
            InputError: If the row's stored offsets or successors are impossible (a damaged file).
        """
        stored = self._file is not None and 0 <= item < self._file_items  # appended items' rows are empty
        bounds = self._file.read("indptr", item, item + 2) if stored else self.indptr[item : item + 2]
        start, end = (int(b) for b in bounds) if len(bounds) == 2 else (0, -1)
        if not 0 <= start <= end <= self.nnz:
            raise InputError(f"co-purchase: row {item} has offsets {start}..{end} outside 0..{self.nnz}; {BUILD_HINT}")
        if limit is not None:
            end = min(end, start + limit)
        # from a file: read the row (mapping it would map ~64 KB around each page touched, per request)
        successors = self._file.read("indices", start, end) if stored else self.indices[start:end]
        counts = self._file.read("data", start, end) if stored else self.data[start:end]
        if self.trusted and len(successors) and (successors.min() < 0 or successors.max() >= self.num_items):
            raise InputError(f"co-purchase: row {item} names an item outside 0..{self.num_items - 1}; {BUILD_HINT}")
        total = self._file.read("row_sums", item, item + 1)[0] if stored else self.sums[item]  # type: ignore[index]
        probs = counts / total if total > 0 else counts * 0.0
        return successors, probs.astype(np.float64)

    def scaled_popularity(self) -> np.ndarray:
        """``log(1 + count) / log(1 + max count)`` per item, float64 (computed once, shared by every ranker)."""
        if "scaled" not in self._derived:
            pop = np.log1p(np.asarray(self.popularity, dtype=np.float64))
            top = pop.max() if len(pop) else 0.0
            self._derived["scaled"] = pop / top if top > 0 else pop
        return self._derived["scaled"]

    def cold(self) -> np.ndarray:
        """Items without purchases in the statistics (bool, computed once)."""
        if "cold" not in self._derived:
            self._derived["cold"] = np.asarray(self.popularity) == 0
        return self._derived["cold"]

    def most_popular(self, k: int) -> np.ndarray:
        """The ``k`` most bought items, most first, ties in position order: ``argsort(-popularity, stable)[:k]``
        in O(num_items) rather than a full sort."""
        pop = np.asarray(self.popularity)
        if k <= 0:
            return np.zeros(0, dtype=np.int64)
        if k >= len(pop):
            return np.argsort(-pop, kind="stable")
        threshold = -np.partition(-pop, k - 1)[k - 1]  # the k-th largest count
        above = np.flatnonzero(pop > threshold)
        chosen = np.concatenate([above, np.flatnonzero(pop == threshold)[: k - len(above)]])
        return chosen[np.argsort(-pop[chosen], kind="stable")]

    def with_new_items(self, count: int) -> CoPurchase:
        """The same statistics over a catalogue with ``count`` items appended (empty rows, zero popularity).

        The pairs are shared, not copied (an opened file keeps serving its rows by ``pread``): how an update that
        only adds items leaves the statistics file as it is, and how a bundle's statistics then cover its
        appended items at load (:meth:`gloss.edge.bundle.Bundle.open_copurchase`).
        """
        if count < 0:
            raise InputError(f"cannot append {count} items")
        extended = CoPurchase(
            indptr=np.concatenate([self.indptr, np.full(count, self.indptr[-1], dtype=np.int64)]),
            indices=self.indices, data=self.data,
            popularity=np.concatenate([self.popularity, np.zeros(count, dtype=np.float32)]),
            window=self.window, decay=self.decay,
            sums=np.concatenate([self.sums, np.zeros(count)]), trusted=True,  # type: ignore[list-item]
        )  # fmt: skip
        object.__setattr__(extended, "_file", self._file)
        object.__setattr__(extended, "_file_items", self._file_items)
        return extended

    def save(self, path: Path) -> None:
        """Write the statistics atomically (temp file beside ``path``, then rename)."""
        write_copurchase(Path(path), self.indptr, self.indices, self.data, self.popularity,
                         self.sums, self.window, self.decay)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: Path) -> CoPurchase:
        """Open a file written by :meth:`save`, memory-mapped (nothing is read until a row is asked for).

        Raises:
            InputError: If the file is missing, of another format (a format-1 ``.npz``), truncated or inconsistent.
        """
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such co-purchase file; {BUILD_HINT}")
        with open(check_input_file(path), "rb") as handle:
            if handle.read(2) == b"PK":  # a zip: the format-1 .npz
                raise InputError(f"{path}: co-purchase format 1 (a compressed .npz), expected {COPURCHASE_FORMAT} "
                                 f"(memory-mapped); {BUILD_HINT}")
        opened = open_array_file(path, "co-purchase file", BUILD_HINT)
        arrays, meta = opened.arrays, opened.meta
        version = meta.get("format_version")
        if version != COPURCHASE_FORMAT:
            raise InputError(f"{path}: co-purchase format {version!r}, expected {COPURCHASE_FORMAT}; {BUILD_HINT}")
        wrong = [n for n, dtype in ARRAYS.items() if n not in arrays or arrays[n].dtype != dtype or arrays[n].ndim != 1]
        if wrong or not isinstance(meta.get("window"), int) or not isinstance(meta.get("decay"), float):
            raise InputError(f"{path}: co-purchase file lacks or mistypes {wrong or ['window/decay']}; {BUILD_HINT}")
        stats = cls(indptr=arrays["indptr"], indices=arrays["indices"], data=arrays["data"],
                    popularity=arrays["popularity"], window=meta["window"], decay=meta["decay"],
                    sums=arrays["row_sums"], trusted=True)
        object.__setattr__(stats, "_file", opened)
        object.__setattr__(stats, "_file_items", stats.num_items)
        return stats

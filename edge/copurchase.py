"""Co-purchase statistics: item -> next-item transition counts in CSR form, plus item popularity.

The edge side of the format (read, check, look up); ``gloss.export.copurchase`` builds it.
"""

from __future__ import annotations

import io
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gloss.edge.errors import InputError
from gloss.edge.files import atomic_path

logger = logging.getLogger(__name__)

COPURCHASE_FORMAT = 1
BUILD_HINT = "rebuild it with gloss.export.copurchase.build_copurchase"


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
    """

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    popularity: np.ndarray
    window: int
    decay: float

    def __post_init__(self) -> None:
        num_items = len(self.popularity)
        if self.indptr.ndim != 1 or len(self.indptr) != num_items + 1:
            raise InputError(f"co-purchase: indptr has {len(self.indptr)} entries, expected {num_items + 1}; "
                             f"{BUILD_HINT}")
        if self.indptr[0] != 0 or np.any(np.diff(self.indptr) < 0) or self.indptr[-1] != len(self.indices):
            raise InputError(f"co-purchase: indptr is not a valid CSR row index; {BUILD_HINT}")
        if len(self.data) != len(self.indices):
            raise InputError(f"co-purchase: {len(self.indices)} indices but {len(self.data)} values; {BUILD_HINT}")
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= num_items):
            raise InputError(f"co-purchase: an index is outside 0..{num_items - 1}; {BUILD_HINT}")
        cumulative = np.concatenate([[0.0], np.cumsum(self.data, dtype=np.float64)])
        sums = cumulative[self.indptr[1:]] - cumulative[self.indptr[:-1]]
        object.__setattr__(self, "_row_sums", sums)

    @property
    def num_items(self) -> int:
        """Catalogue size."""
        return len(self.popularity)

    @property
    def nnz(self) -> int:
        """Number of stored (item, successor) pairs."""
        return len(self.data)

    def row(self, item: int, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Successors of ``item`` (strongest first) and their transition probabilities P(next | item)."""
        start, end = int(self.indptr[item]), int(self.indptr[item + 1])
        if limit is not None:
            end = min(end, start + limit)
        total = self._row_sums[item]  # type: ignore[attr-defined]
        probs = self.data[start:end] / total if total > 0 else self.data[start:end] * 0.0
        return self.indices[start:end], probs.astype(np.float64)

    def save(self, path: Path) -> None:
        """Write a compressed ``.npz`` atomically (temp file beside ``path``, then rename)."""
        path = Path(path)
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer, format_version=np.int64(COPURCHASE_FORMAT), indptr=self.indptr, indices=self.indices,
            data=self.data, popularity=self.popularity, window=np.int64(self.window), decay=np.float64(self.decay),
        )
        with atomic_path(path) as tmp:
            tmp.write_bytes(buffer.getvalue())
        logger.info("saved co-purchase %s (%d items, %d pairs)", path, self.num_items, self.nnz)

    @classmethod
    def load(cls, path: Path) -> CoPurchase:
        """Read a file written by :meth:`save`.

        Raises:
            InputError: If the file is missing, not an ``.npz`` of this format, or inconsistent.
        """
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such co-purchase file; {BUILD_HINT}")
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # BadZipFile: not an .npz at all
            raise InputError(f"{path}: not a co-purchase .npz ({exc}); {BUILD_HINT}") from exc
        version = arrays["format_version"].tolist() if "format_version" in arrays else None
        if version != COPURCHASE_FORMAT:
            raise InputError(f"{path}: co-purchase format {version!r}, expected {COPURCHASE_FORMAT}; {BUILD_HINT}")
        missing = [n for n in ("indptr", "indices", "data", "popularity", "window", "decay") if n not in arrays]
        if missing:
            raise InputError(f"{path}: co-purchase file lacks {missing}; {BUILD_HINT}")
        return cls(
            indptr=arrays["indptr"].astype(np.int64), indices=arrays["indices"].astype(np.int32),
            data=arrays["data"].astype(np.float32), popularity=arrays["popularity"].astype(np.float32),
            window=int(arrays["window"]), decay=float(arrays["decay"]),
        )

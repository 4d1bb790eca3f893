"""Nearest-neighbour search over catalogue embeddings (usearch file format, exact search by default).

The file stores the vectors as float32, float16 or int8 (usearch ``dtype``); search always runs in
float32 over the stored (possibly rounded) vectors, so a compact file changes similarities by the
rounding only (see ``benchmarks/footprint.py`` for the effect on Recall@5).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from gloss.edge.errors import InputError, require
from gloss.edge.files import atomic_path
from gloss.edge.logs import progress_enabled

logger = logging.getLogger(__name__)

METRIC = "ip"  # inner product on L2-normalised vectors == cosine similarity
# Random-vector benchmarks (MODELS.md): usearch's default expansion_search (64) gives poor recall;
# 512 reaches recall@10 >= 0.99 on 64-d random data; real title embeddings are easier than random ones.
DEFAULT_EXPANSION_SEARCH = 512
DEFAULT_EXPANSION_ADD = 256
DEFAULT_CONNECTIVITY = 32
ADD_CHUNK = 2048
EXACT_BLOCK_FLOATS = 1 << 24  # bound on the (queries x items) similarity block held at once
INDEX_DTYPES = ("f32", "f16", "i8")  # usearch scalar kinds for the stored vectors
# f16: 12 instead of 21 MiB for Beauty, same Recall@5 and NDCG@5 within noise on validation users
# (benchmarks/footprint.py); i8 (8 MiB) also stayed within noise but changes more users' hits.
DEFAULT_INDEX_DTYPE = "f16"


def _usearch_index() -> Any:
    # Workaround: importing onnxruntime (1.32) after usearch's (2.26) extension segfaults in
    # onnxruntime's pybind init (`python -c "import usearch.index; import onnxruntime"` exits 139 here);
    # the other order is fine, and every bundle user needs both.
    with contextlib.suppress(ImportError):
        importlib.import_module("onnxruntime")
    return require("usearch.index", "edge").Index


def check_vectors(vectors: Any, name: str, dim: int | None = None) -> np.ndarray:
    """Validate a 2-D finite float matrix and return it as contiguous float32.

    Args:
        vectors: Candidate matrix (one row per vector).
        name: What the rows are, for the error message (e.g. ``"queries"``).
        dim: Required number of columns, if known.

    Raises:
        InputError: If the array is not 2-D, is empty, has the wrong width, a non-numeric dtype or NaN/inf.
    """
    array = np.asarray(vectors)
    if array.ndim != 2:
        raise InputError(f"{name}: expected a 2-D array (rows x dim), got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(f"{name}: expected at least one row and one column, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise InputError(f"{name}: expected float vectors, got dtype {array.dtype}")
    if dim is not None and array.shape[1] != dim:
        raise InputError(
            f"{name}: vectors have dim {array.shape[1]} but the index has dim {dim}; "
            "embed with the embedder the index was built with (the same bundle)"
        )
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        bad = int(np.flatnonzero(~np.isfinite(array).all(axis=1))[0])
        raise InputError(f"{name}: row {bad} contains NaN or infinity")
    return array


def read_index_header(path: Path) -> dict[str, int]:
    """Read an index file's header (cheap: no vectors are loaded).

    Returns:
        ``{"dim": ..., "num_items": ..., "dtype": ...}`` (dtype: one of :data:`INDEX_DTYPES`).

    Raises:
        InputError: If the file is missing or is not a usearch index of inner-product vectors of a
            supported dtype.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such index file; build one with gloss-export bundle")
    try:
        meta = _usearch_index().metadata(path)
    except (ValueError, RuntimeError) as exc:
        raise InputError(f"{path}: not a usearch index ({exc}); rebuild it with gloss-export bundle") from exc
    if not meta:
        raise InputError(f"{path}: not a usearch index; rebuild it with gloss-export bundle")
    metric = getattr(meta["kind_metric"], "name", str(meta["kind_metric"])).lower()
    if metric != METRIC:
        raise InputError(f"{path}: index metric is {metric!r}, expected {METRIC!r}; rebuild the index")
    dtype = getattr(meta["kind_scalar"], "name", str(meta["kind_scalar"])).lower()
    if dtype not in INDEX_DTYPES:
        raise InputError(f"{path}: index stores {dtype!r} vectors, expected one of {INDEX_DTYPES}; rebuild the index")
    return {"dim": int(meta["dimensions"]), "num_items": int(meta["count_present"]), "dtype": dtype}


class ItemIndex:
    """Catalogue vectors keyed by catalogue position, searchable by inner product.

    The usearch file holds the vectors and an HNSW graph. ``search(exact=True)`` (the default) scans all
    vectors with a matrix product; ``exact=False`` walks the HNSW graph.

    A loaded index lets go of the usearch file once :meth:`vectors` has read the float32 matrix (exact search
    and fusion need only that), which keeps the mapped file out of the process's RSS; ``exact=False`` and
    :meth:`save` reopen it.

    Use :meth:`build` or :meth:`load`; the constructor wraps an existing ``usearch.index.Index``.
    """

    def __init__(self, index: Any, expansion_search: int = DEFAULT_EXPANSION_SEARCH) -> None:
        self._index: Any = index
        self._index.expansion_search = expansion_search
        self._expansion_search = expansion_search
        self._dim, self._len = int(index.ndim), len(index)
        self._dtype = str(getattr(index.dtype, "name", index.dtype)).lower()
        self._source: tuple[Path, bool] | None = None  # (path, view) to reopen a released file
        self._matrix: np.ndarray | None = None

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        show_progress: bool | None = None,
        connectivity: int = DEFAULT_CONNECTIVITY,
        expansion_add: int = DEFAULT_EXPANSION_ADD,
        expansion_search: int = DEFAULT_EXPANSION_SEARCH,
        dtype: str = DEFAULT_INDEX_DTYPE,
    ) -> ItemIndex:
        """Index ``vectors``; row ``i`` gets key ``i`` (its catalogue position).

        Args:
            vectors: (num_items, dim) L2-normalised embeddings.
            show_progress: Progress bar; None means on when logging is at INFO.
            connectivity: HNSW graph degree.
            expansion_add: HNSW candidate list size while adding.
            expansion_search: HNSW candidate list size while searching (``exact=False``).
            dtype: How the file stores the vectors: ``f32``, ``f16`` (half the vector bytes) or ``i8`` (a
                quarter; usearch truncates components toward zero to multiples of 1/127, so unit vectors
                shrink by a few percent). Search uses the stored vectors.

        Returns:
            The index.

        Raises:
            InputError: If ``vectors`` is not a finite non-empty 2-D float matrix or ``dtype`` is unknown.
        """
        if dtype not in INDEX_DTYPES:
            raise InputError(f"--index-dtype must be one of {', '.join(INDEX_DTYPES)}, got {dtype!r}")
        matrix = check_vectors(vectors, "catalogue vectors")
        num_items, dim = matrix.shape
        index = _usearch_index()(
            ndim=dim, metric=METRIC, dtype=dtype, connectivity=connectivity, expansion_add=expansion_add
        )
        disable = not progress_enabled(show_progress, logger)
        with tqdm(total=num_items, desc="index", unit="item", disable=disable) as bar:
            for start in range(0, num_items, ADD_CHUNK):
                chunk = matrix[start : start + ADD_CHUNK]
                index.add(np.arange(start, start + len(chunk), dtype=np.uint64), chunk)
                bar.update(len(chunk))
        logger.info("indexed %d vectors of dim %d as %s", num_items, dim, dtype)
        built = cls(index, expansion_search=expansion_search)
        if dtype == "f32":
            built._matrix = matrix  # else vectors() reads the rounded ones back, as a loaded index does
        return built

    @classmethod
    def load(
        cls, path: Path, view: bool = True, expansion_search: int = DEFAULT_EXPANSION_SEARCH
    ) -> ItemIndex:
        """Open an index file written by :meth:`save`.

        Args:
            path: The ``.usearch`` file.
            view: Memory-map the file instead of reading it into RAM.
            expansion_search: HNSW candidate list size for ``exact=False``.

        Raises:
            InputError: If the file is missing or is not a usearch index of inner-product vectors.
        """
        path = Path(path)
        read_index_header(path)
        index_cls = _usearch_index()
        try:
            index = index_cls.restore(path, view=view)
        except (ValueError, RuntimeError) as exc:
            raise InputError(
                f"{path}: cannot open the index ({exc}); rebuild it with gloss-export bundle"
            ) from exc
        if index is None:
            raise InputError(f"{path}: cannot open the index; rebuild it with gloss-export bundle")
        logger.debug("opened index %s: %d items, dim %d, view=%s", path, len(index), index.ndim, view)
        loaded = cls(index, expansion_search=expansion_search)
        loaded._source = (path, view)
        return loaded

    def _raw(self) -> Any:
        """The usearch index, reopened from its file if :meth:`vectors` released it."""
        if self._index is None:
            if self._source is None:
                raise RuntimeError("released index without a source file")  # unreachable: only loaded ones release
            path, view = self._source
            self._index = _usearch_index().restore(path, view=view)
            self._index.expansion_search = self._expansion_search
        return self._index

    @property
    def dim(self) -> int:
        """Vector width."""
        return self._dim

    def __len__(self) -> int:
        return self._len

    @property
    def dtype(self) -> str:
        """How the stored vectors are typed: one of :data:`INDEX_DTYPES`."""
        return self._dtype

    @property
    def expansion_search(self) -> int:
        """HNSW candidate list size used by ``search(exact=False)``."""
        return self._expansion_search

    def vectors(self) -> np.ndarray:
        """All item vectors as float32, row ``i`` = catalogue position ``i`` (read once, then cached).

        An f16 or i8 index gives its stored (rounded) vectors converted to float32 (i8 as value / 127).
        """
        if self._matrix is None:
            raw = self._raw()
            matrix = np.empty((len(self), self.dim), dtype=np.float32)
            for start in range(0, len(self), ADD_CHUNK):  # in chunks: no second full copy at any time
                keys = np.arange(start, min(start + ADD_CHUNK, len(self)), dtype=np.uint64)
                matrix[start : start + len(keys)] = np.vstack(raw.get(keys, dtype=np.float32))
            self._matrix = matrix
            if self._source is not None:
                self._index = None  # drop the mapped file; _raw() reopens it for HNSW search or save
        return self._matrix

    def search(self, queries: np.ndarray, k: int, exact: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Find the ``k`` items with the highest inner product for each query.

        Args:
            queries: (num_queries, dim) or (dim,) L2-normalised query vectors.
            k: Neighbours per query; if larger than the index, rows are padded.
            exact: Scan every item (exact top-k). False walks the HNSW graph (approximate).

        Returns:
            ``(positions, similarities)``: int64 and float32 arrays of shape (num_queries, k), best first;
            padding is position -1 with similarity -inf.

        Raises:
            InputError: If ``k < 1`` or the queries are not finite float vectors of the index's dim.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        matrix = np.asarray(queries)
        if matrix.ndim == 1:
            matrix = matrix[None, :]
        matrix = check_vectors(matrix, "queries", dim=self.dim)
        found = min(int(k), len(self))
        if exact:
            top_pos, top_sim = self._search_exact(matrix, found)
        else:
            top_pos, top_sim = self._search_hnsw(matrix, found)
        positions = np.full((len(matrix), int(k)), -1, dtype=np.int64)
        similarities = np.full((len(matrix), int(k)), -np.inf, dtype=np.float32)
        positions[:, :found] = top_pos
        similarities[:, :found] = top_sim
        return positions, similarities

    def _search_exact(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        # A BLAS matrix product over the stored vectors is ~20x faster here than usearch's exact scan.
        items = self.vectors()
        rows = max(1, EXACT_BLOCK_FLOATS // max(1, len(items)))
        out_pos, out_sim = [], []
        for start in range(0, len(queries), rows):
            sims = queries[start : start + rows] @ items.T
            if k < sims.shape[1]:
                part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            else:
                part = np.broadcast_to(np.arange(sims.shape[1]), sims.shape)
            # Sort by similarity desc, ties by position asc: positions ascending, then a stable sort.
            part = np.sort(part, axis=1)
            part_sim = np.take_along_axis(sims, part, axis=1)
            order = np.argsort(-part_sim, axis=1, kind="stable")
            out_pos.append(np.take_along_axis(part, order, axis=1))
            out_sim.append(np.take_along_axis(part_sim, order, axis=1))
        return np.vstack(out_pos).astype(np.int64), np.vstack(out_sim).astype(np.float32)

    def _search_hnsw(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        positions = np.full((len(queries), k), -1, dtype=np.int64)
        similarities = np.full((len(queries), k), -np.inf, dtype=np.float32)
        for start in range(0, len(queries), 1024):
            batch = queries[start : start + 1024]
            matches = self._raw().search(batch, k)
            # One query gives a Matches (1-D, valid rows only); several give padded BatchMatches.
            keys = np.atleast_2d(matches.keys)
            dists = np.atleast_2d(matches.distances)
            counts = np.atleast_1d(getattr(matches, "counts", [keys.shape[1]]))
            for row, count in enumerate(counts.tolist()):
                positions[start + row, :count] = keys[row, :count].astype(np.int64)
                similarities[start + row, :count] = 1.0 - dists[row, :count]  # usearch ip distance = 1 - dot
        return positions, similarities

    def save(self, path: Path) -> None:
        """Write the index file atomically (temp file beside ``path``, then rename)."""
        path = Path(path)
        with atomic_path(path) as tmp:
            self._raw().save(str(tmp))
        logger.info("saved index %s (%d items)", path, len(self))

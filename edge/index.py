"""Nearest-neighbour search over catalogue embeddings: exact over memory-mapped vectors, HNSW above a size.

An index is a :class:`~gloss.edge.vectors.VectorStore` (the vectors once, in their stored dtype, memory-mapped)
and, for catalogues of :data:`HNSW_MIN_ITEMS` items or more, an HNSW graph (:mod:`gloss.edge.hnsw`) that finds
candidates which are then scored on the stored vectors. Below that size every search is exact, as it always was;
``exact=True`` (``--exact``) forces exact search at any size. The kind is chosen at build time and recorded in
the bundle manifest (``index.kind``); ``benchmarks/ann_recall.py`` measures the threshold, the settings and the
recall.

Small catalogues (whose float32 matrix fits :data:`EXACT_CACHE_BYTES`) keep that matrix in memory after the first
search, exactly as before; larger ones are scanned a block at a time and never converted whole.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from gloss.edge.errors import InputError
from gloss.edge.files import atomic_path
from gloss.edge.hnsw import (
    HnswConfig,
    add_rows,
    build_graph,
    graph_candidates,
    open_graph,
    save_graph,
    usearch_index_class,
)
from gloss.edge.index_layout import (  # noqa: F401  (re-exported: the index's public surface)
    INDEX_DTYPES,
    KINDS,
    LEGACY_SUFFIX,
    index_facts,
    index_files,
    read_index_header,
    read_removed,
    save_removed,
)
from gloss.edge.topk import rank_candidates, top_k_blocked, top_k_rows
from gloss.edge.vectors import VectorStore, open_vectors, quantize, write_store

logger = logging.getLogger(__name__)

METRIC = "ip"  # inner product on L2-normalised vectors == cosine similarity
# f16: 12 instead of 21 MiB for Beauty, same Recall@5 and NDCG@5 within noise on validation users
# (benchmarks/footprint.py); i8 (8 MiB) also stayed within noise but changes more users' hits.
DEFAULT_INDEX_DTYPE = "f16"
# Exact search below this many items, HNSW + exact re-ranking from it: one exact query over 50k float32 vectors
# costs ~9 ms here, over 100k ~16 ms (against ~1 ms for HNSW), and the matrix kept in memory doubles too
# (benchmarks/results/ann_recall.md, "Exact search, one query").
HNSW_MIN_ITEMS = 50_000
EXACT_CACHE_BYTES = 160 << 20  # an exact index keeps its float32 matrix up to this size (50k x 768 = 147 MiB)
EXACT_BLOCK_FLOATS = 1 << 24  # bound on the (queries x items) similarity block of the in-memory path
VECTORS_FILE = "vectors.npy"
GRAPH_FILE = "graph.usearch"


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


def choose_kind(num_items: int) -> str:
    """``exact`` below :data:`HNSW_MIN_ITEMS` items, else ``hnsw``."""
    return "hnsw" if num_items >= HNSW_MIN_ITEMS else "exact"


class ItemIndex:
    """Catalogue vectors keyed by catalogue position, searchable by inner product.

    Use :meth:`build` (vectors in memory), :meth:`create` (a store, e.g. a file just written) or :meth:`open`
    (a saved index described by its manifest section).

    Args:
        store: The vectors.
        kind: ``exact`` or ``hnsw`` (what ``search`` does by default).
        hnsw: Graph settings (for ``hnsw``, or for ``exact=False`` on an exact index).
        graph: An open usearch graph over the first ``graph_rows`` physical rows, or None (built on first use).
        graph_rows: Physical rows the graph covers; later rows (added by updates) are searched exactly.
        exact: Override ``kind``: True searches exactly by default (``--exact``).
    """

    def __init__(self, store: VectorStore, kind: str = "exact", hnsw: HnswConfig | None = None,
                 graph: Any = None, graph_rows: int = 0, exact: bool | None = None) -> None:
        if kind not in KINDS:
            raise InputError(f"index kind must be one of {', '.join(KINDS)}, got {kind!r}")
        self.store, self.kind, self.hnsw = store, kind, hnsw or HnswConfig()
        self._graph, self.graph_rows = graph, int(graph_rows)
        self.exact_default = (kind == "exact") if exact is None else bool(exact)
        self._graph_path: Path | None = None
        self._view = True
        self._cache: np.ndarray | None = None
        self._tail: tuple[int, np.ndarray] | None = None  # (first position, float32 rows) after the graph
        self.files: dict[str, Any] = {}  # relative paths of the saved files: segments, removed, graph

    @classmethod
    def create(cls, store: VectorStore, kind: str | None = None, hnsw: HnswConfig | None = None, threads: int = 0,
               show_progress: bool | None = None) -> ItemIndex:
        """An index over ``store``; the kind follows the size unless given, and an ``hnsw`` graph is built now."""
        kind = kind or choose_kind(len(store))
        index = cls(store, kind, hnsw)
        if kind == "hnsw":
            index._build_graph(threads, show_progress)
        return index

    @classmethod
    def build(cls, vectors: np.ndarray, show_progress: bool | None = None, dtype: str = DEFAULT_INDEX_DTYPE,
              kind: str | None = None, hnsw: HnswConfig | None = None, threads: int = 0) -> ItemIndex:
        """Index ``vectors`` held in memory; row ``i`` gets position ``i``.

        Args:
            vectors: (num_items, dim) L2-normalised embeddings.
            show_progress: Progress bar of the graph build; None means on when logging is at INFO.
            dtype: How the vectors are stored: ``f32``, ``f16`` (half the bytes) or ``i8`` (a quarter; components
                rounded to multiples of 1/127). Search uses the stored vectors.
            kind: ``exact``, ``hnsw`` or None (by size).
            hnsw: Graph settings.
            threads: Graph build threads (0: all cores).

        Raises:
            InputError: If ``vectors`` is not a finite non-empty 2-D float matrix or ``dtype`` is unknown.
        """
        if dtype not in INDEX_DTYPES:
            raise InputError(f"--index-dtype must be one of {', '.join(INDEX_DTYPES)}, got {dtype!r}")
        matrix = check_vectors(vectors, "catalogue vectors")
        return cls.create(VectorStore([quantize(matrix, dtype)]), kind, hnsw, threads, show_progress)

    def _build_graph(self, threads: int = 0, show_progress: bool | None = None) -> Any:
        self._graph, self.hnsw = build_graph(self.store, self.hnsw, threads, show_progress)
        self.graph_rows = self.store.num_physical
        return self._graph

    # --- saving and opening ---

    def save(self, root: Path, folder: str = "index", entries: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write the live vectors as one segment (and the graph of an ``hnsw`` index) under ``root / folder``.

        Args:
            root: The bundle (or any) folder; the section's paths are relative to it.
            folder: Subfolder for the files.
            entries: If given, receives ``{relative path: {"size", "sha256"}}`` of the vectors file (hashed while
                written, not read back).

        Returns:
            The manifest's ``index`` section of the saved index.
        """
        root = Path(root)
        (root / folder).mkdir(parents=True, exist_ok=True)
        rel = f"{folder}/{VECTORS_FILE}"
        entry = write_store(root / rel, self.store)
        if entries is not None:
            entries[rel] = entry
        saved = ItemIndex(VectorStore([open_vectors(root / rel)]), self.kind, self.hnsw)
        saved.files = {"segments": [rel]}
        if saved.kind == "hnsw":
            if self._graph is not None and self.graph_rows == self.store.num_physical and not len(self.store.removed):
                saved._graph, saved.graph_rows = self._graph, self.graph_rows  # same rows, same keys
            saved.write_graph(root, f"{folder}/{GRAPH_FILE}")
        return saved.section()

    def write_graph(self, root: Path, rel: str) -> None:
        """Save the graph (built now if there is none) as ``root / rel``."""
        graph = self._graph_or_build()
        with atomic_path(Path(root) / rel) as tmp:
            save_graph(graph, tmp)
        self.files["graph"] = rel

    def section(self) -> dict[str, Any]:
        """The manifest's ``index`` section of this index as saved (:attr:`files` names its files)."""
        segments = self.files["segments"]
        out: dict[str, Any] = {
            "file": segments[0], "kind": self.kind, "dim": self.dim, "metric": METRIC, "dtype": self.dtype,
            "num_items": len(self),
            "segments": [{"file": f, "rows": len(s)} for f, s in zip(segments, self.store.segments, strict=True)],
        }  # fmt: skip
        if self.files.get("removed"):
            out["removed"] = {"file": self.files["removed"], "rows": len(self.store.removed)}
        if self.files.get("graph"):
            out["graph"] = {"file": self.files["graph"], "rows": self.graph_rows, **self.hnsw.to_dict()}
        return out

    @classmethod
    def open(cls, root: Path, section: dict[str, Any], view: bool = True, exact: bool | None = None) -> ItemIndex:
        """Open a saved index from its manifest section (vectors memory-mapped; the graph mapped on first use).

        Args:
            root: Folder the section's paths are relative to (the bundle).
            section: The manifest's ``index`` section.
            view: Memory-map the graph (False reads it into memory).
            exact: Search exactly by default whatever the kind (``--exact``).

        Raises:
            InputError: If a file is missing or its header disagrees with the section.
        """
        root = Path(root)
        if "segments" not in section:  # a bundle of gloss <= issue 15
            legacy = cls.open_legacy(root / section["file"], exact=exact)
            legacy.files = {"legacy": section["file"]}
            return legacy
        facts = index_facts(root, section)
        store = VectorStore([open_vectors(root / seg["file"]) for seg in section["segments"]],
                            read_removed(root, section))
        index = cls(store, facts["kind"], facts["hnsw"], exact=exact)
        index.files = {"segments": [seg["file"] for seg in section["segments"]],
                       "removed": (section.get("removed") or {}).get("file"), "graph": facts["graph_file"]}
        if facts["graph_file"] is not None:
            index._graph_path, index.graph_rows, index._view = root / facts["graph_file"], facts["graph_rows"], view
        return index

    @classmethod
    def open_legacy(cls, path: Path, exact: bool | None = None) -> ItemIndex:
        """Read an ``index.usearch`` of gloss <= issue 15 (vectors copied into memory as float32, exact search)."""
        header = read_index_header(path)
        raw = usearch_index_class().restore(str(path), view=True)
        if raw is None:
            raise InputError(f"{path}: cannot open the index; rebuild it with gloss-export bundle")
        matrix = np.empty((header["num_items"], header["dim"]), dtype=np.float32)
        for start in range(0, len(matrix), 1 << 14):
            keys = np.arange(start, min(start + (1 << 14), len(matrix)), dtype=np.uint64)
            matrix[start : start + len(keys)] = np.vstack(raw.get(keys, dtype=np.float32))
        return cls(VectorStore([matrix]), "exact", exact=exact)

    def _graph_or_build(self) -> Any:
        if self._graph is None and self._graph_path is not None:
            self._graph = open_graph(self._graph_path, self.hnsw, view=self._view)
        if self._graph is None:
            logger.info("building an HNSW graph over %d vectors for approximate search", self.store.num_physical)
            self._build_graph(show_progress=False)
        return self._graph

    def extend_graph(self, threads: int = 0, show_progress: bool | None = None) -> None:
        """Add the rows the graph does not cover yet (e.g. appended by an update) to it, in memory; builds the
        graph when there is none."""
        if self._graph is None and self._graph_path is None:
            self._build_graph(threads, show_progress)
            return
        if self._graph_path is not None and (self._graph is None or self._view):  # a mapped graph is read-only
            self._graph = open_graph(self._graph_path, self.hnsw, view=False)
            self._view = False
        add_rows(self._graph, self.store, self.graph_rows, self.store.num_physical, self.hnsw, threads,
                 show_progress)
        logger.info("hnsw graph: %d rows added (%d in all)", self.store.num_physical - self.graph_rows,
                    self.store.num_physical)
        self.graph_rows = self.store.num_physical

    def with_store(self, store: VectorStore, kind: str | None = None) -> ItemIndex:
        """This index's settings and graph (file) over another store that extends this one's physical rows."""
        other = ItemIndex(store, kind or self.kind, self.hnsw, graph=self._graph, graph_rows=self.graph_rows)
        other._graph_path, other._view = self._graph_path, self._view
        other.files = {key: (list(value) if isinstance(value, list) else value) for key, value in self.files.items()}
        return other

    # --- facts ---

    @property
    def dim(self) -> int:
        """Vector width."""
        return self.store.dim

    def __len__(self) -> int:
        return len(self.store)

    @property
    def dtype(self) -> str:
        """How the stored vectors are typed: one of :data:`INDEX_DTYPES`."""
        return self.store.stored_dtype

    @property
    def expansion_search(self) -> int:
        """HNSW candidate list size used by approximate search."""
        return self.hnsw.expansion_search

    def vectors(self) -> Any:
        """Item vectors by catalogue position: the in-memory float32 matrix of a small catalogue, else the
        memory-mapped :class:`~gloss.edge.vectors.VectorStore` (``v[positions]`` gives float32 rows)."""
        return self._cached() if self._cache_fits() else self.store

    def _cache_fits(self) -> bool:
        # Only an exact index keeps the float32 matrix: an HNSW one never converts it whole (--exact scans blocks).
        return self.kind == "exact" and len(self) * self.dim * 4 <= EXACT_CACHE_BYTES

    def _cached(self) -> np.ndarray:
        if self._cache is None:
            self._cache = np.asarray(self.store)
        return self._cache

    # --- search ---

    def search(self, queries: np.ndarray, k: int, exact: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Find the ``k`` items with the highest inner product for each query.

        Args:
            queries: (num_queries, dim) or (dim,) L2-normalised query vectors.
            k: Neighbours per query; if larger than the index, rows are padded.
            exact: True scans every item; False uses the HNSW graph (built in memory on first use for an exact
                index); None follows the index (its kind, or ``exact`` given at open).

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
        exact = self.exact_default if exact is None else exact
        if not exact:
            top_pos, top_sim = self._search_hnsw(matrix, found)
        elif self._cache_fits():
            top_pos, top_sim = self._search_cached(matrix, found)
        else:
            top_pos, top_sim = top_k_blocked(self.store, matrix, found)
        positions = np.full((len(matrix), int(k)), -1, dtype=np.int64)
        similarities = np.full((len(matrix), int(k)), -np.inf, dtype=np.float32)
        positions[:, :found] = top_pos
        similarities[:, :found] = top_sim
        return positions, similarities

    def _search_cached(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        # The path of every bundle before issue 16, kept as it was so small catalogues rank exactly as before.
        items = self._cached()
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
        graph = self._graph_or_build()
        store = self.store
        removed_in_graph = int(np.searchsorted(store.removed, self.graph_rows))
        count = max(self.hnsw.candidates, k) + min(removed_in_graph, max(self.hnsw.candidates, k))
        candidates = graph_candidates(graph, queries, count, self.hnsw, store.positions_of)
        tail_start = self.graph_rows - removed_in_graph  # first position the graph does not cover
        if tail_start < len(store):
            # Rows an update appended after the graph (at most TAIL_MAX_ROWS): scanned exactly, kept as float32.
            if self._tail is None or self._tail[0] != tail_start:
                self._tail = (tail_start, store.rows(np.arange(tail_start, len(store))))
            tail, _ = top_k_rows(queries @ self._tail[1].T, min(k, len(store) - tail_start), offset=tail_start)
            candidates = np.hstack([candidates, tail])
        return rank_candidates(store, queries, candidates, k)

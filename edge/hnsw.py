"""An HNSW graph (usearch) over a vector store's rows, for approximate search above a catalogue size.

The graph finds ``candidates`` rows per query; :func:`gloss.edge.topk.rank_candidates` then scores them on the
stored vectors, so approximate results carry exact similarities and only *which* items come back can differ from
exact search (measured as Recall@10 against it: ``benchmarks/ann_recall.py``).

The graph's own copy of the vectors is int8 by default (``round(x * scale)``, ``scale`` = 127 / the largest
component), a quarter of float32 and half of the stored float16 rows: it is only used to walk the graph, and the
re-ranking makes up for its rounding. Keys are physical rows of the store.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from gloss.edge.errors import InputError, require
from gloss.edge.logs import progress_enabled
from gloss.edge.vectors import VectorStore

logger = logging.getLogger(__name__)

METRIC = "ip"
GRAPH_DTYPES = ("i8", "f16")
ADD_CHUNK = 1 << 14


def usearch_index_class() -> Any:
    """usearch's ``Index`` class (onnxruntime imported first: the other order crashes)."""
    # Workaround: importing onnxruntime (1.32) after usearch's (2.26) extension segfaults in
    # onnxruntime's pybind init (`python -c "import usearch.index; import onnxruntime"` exits 139 here);
    # the other order is fine, and every bundle user needs both.
    with contextlib.suppress(ImportError):
        importlib.import_module("onnxruntime")
    return require("usearch.index", "edge").Index


def usearch_exact_search() -> Any:
    """usearch's brute-force ``search(dataset, queries, count, metric, exact=True)`` (SIMD float16 kernels)."""
    usearch_index_class()  # onnxruntime first (see above)
    return require("usearch.index", "edge").search


@dataclass(frozen=True)
class HnswConfig:
    """How the graph is built and searched (recorded in the bundle manifest).

    Attributes:
        connectivity: Graph degree (usearch ``connectivity``, HNSW's M).
        expansion_add: Candidate list while adding (``ef_construction``).
        expansion_search: Candidate list while searching (``ef``).
        candidates: Rows the graph returns per query, re-ranked on the stored vectors (at least ``k``).
        dtype: The graph's copy of the vectors: ``i8`` (scaled) or ``f16``.
        scale: ``i8`` only: vectors are stored as ``round(x * scale)``; 0 = choose from the data at build.
    """

    # Chosen from the sweeps in benchmarks/results/ann_recall.md (expansion_search 256 lifted Recall@10 at 200k to
    # 0.9989 / 0.9976; candidates beyond 16 changed no result) and at 1M synthetic items: expansion_add 128 left
    # Recall@10 at 0.981 (scale.md, scale_recall_1m.md: a wider search only reached 0.992 at 1024, ~5 ms more);
    # expansion_add 256 gives 0.991 at the same search settings (scale_recall_1m_add256.md) for 1.82x the graph's
    # build time; connectivity 24-32 with a smaller expansion_add built faster but lost recall (graph_build_200k.md).
    connectivity: int = 16
    expansion_add: int = 256
    expansion_search: int = 256
    candidates: int = 32
    dtype: str = "i8"
    scale: float = 0.0

    def __post_init__(self) -> None:
        for name in ("connectivity", "expansion_add", "expansion_search", "candidates"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise InputError(f"hnsw.{name} must be an integer >= 2, got {value!r}")
        if self.dtype not in GRAPH_DTYPES:
            raise InputError(f"hnsw.dtype must be one of {', '.join(GRAPH_DTYPES)}, got {self.dtype!r}")
        if not isinstance(self.scale, (int, float)) or self.scale < 0:
            raise InputError(f"hnsw.scale must be >= 0, got {self.scale!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> HnswConfig:
        """Parse a manifest's ``graph`` settings.

        Raises:
            InputError: On unknown keys or bad values, naming ``where``.
        """
        if not isinstance(data, dict):
            raise InputError(f"{where}: graph settings should be an object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise InputError(f"{where}: unknown graph settings {unknown}")
        return cls(**data)


def load_graph_config(path: Path) -> HnswConfig:
    """Read :class:`HnswConfig` fields from a JSON or YAML file (missing fields keep their defaults).

    Raises:
        InputError: If the file is missing or unreadable, or has unknown keys or bad values.
    """
    from gloss.edge.files import read_yaml  # JSON is YAML, so one parser reads both

    data = read_yaml(Path(path), what="graph config file")
    return HnswConfig.from_dict({} if data is None else data, where=str(path))


def choose_scale(store: VectorStore, rows: int) -> float:
    """127 / the largest absolute component of the first ``rows`` physical rows (one pass over them)."""
    largest = 0.0
    for seg, start in zip(store.segments, store.starts[:-1].tolist(), strict=True):
        take = max(0, min(len(seg), rows - start))
        for begin in range(0, take, ADD_CHUNK):
            block = np.asarray(seg[begin : min(begin + ADD_CHUNK, take)], dtype=np.float32)
            largest = max(largest, float(np.abs(block).max()) if block.size else 0.0)
    if store.stored_dtype == "i8":
        largest /= 127.0
    return 127.0 / largest if largest > 0 else 127.0


def graph_rows(block: np.ndarray, config: HnswConfig) -> np.ndarray:
    """Float32 rows as the graph stores (and is queried with) them."""
    if config.dtype == "f16":
        return np.asarray(block, dtype=np.float16)
    return np.clip(np.rint(block * config.scale), -127, 127).astype(np.int8)


def build_graph(
    store: VectorStore, config: HnswConfig, threads: int = 0, show_progress: bool | None = None
) -> tuple[Any, HnswConfig]:
    """Add every physical row of ``store`` (removed ones too: they are filtered at search) to a new graph.

    Returns:
        The usearch index and the config with the ``i8`` scale filled in.
    """
    if config.dtype == "i8" and not config.scale:
        config = HnswConfig(**{**config.to_dict(), "scale": choose_scale(store, store.num_physical)})
    index = usearch_index_class()(ndim=store.dim, metric=METRIC, dtype=config.dtype,
                                  connectivity=config.connectivity, expansion_add=config.expansion_add,
                                  expansion_search=config.expansion_search)
    add_rows(index, store, 0, store.num_physical, config, threads, show_progress)
    logger.info("hnsw graph over %d rows (%s, M=%d, ef_add=%d)", store.num_physical, config.dtype,
                config.connectivity, config.expansion_add)
    return index, config


def add_rows(graph: Any, store: VectorStore, start: int, stop: int, config: HnswConfig, threads: int = 0,
             show_progress: bool | None = None) -> None:
    """Add physical rows ``start..stop - 1`` of ``store`` to ``graph`` (keys = row numbers), a chunk at a time."""
    disable = not progress_enabled(show_progress, logger)
    with tqdm(total=stop - start, desc="index", unit="item", disable=disable) as bar:  # the graph is the index build
        for begin in range(start, stop, ADD_CHUNK):
            rows = np.arange(begin, min(begin + ADD_CHUNK, stop), dtype=np.int64)
            block = np.asarray(store.stored_rows(rows), dtype=np.float32)
            if store.stored_dtype == "i8":
                block /= 127.0
            graph.add(rows.astype(np.uint64), graph_rows(block, config), threads=threads)
            bar.update(len(rows))


def open_graph(path: Path, config: HnswConfig, view: bool = True) -> Any:
    """Memory-map (``view``) or load a saved graph.

    Raises:
        InputError: If the file is not a usearch index of this metric and dtype.
    """
    path = Path(path)
    facts = read_graph_header(path)
    if facts["dtype"] != config.dtype:
        raise InputError(f"{path}: graph stores {facts['dtype']} vectors, the manifest says {config.dtype}")
    try:
        index = usearch_index_class().restore(str(path), view=view, enable_key_lookups=False)
    except (ValueError, RuntimeError) as exc:
        raise InputError(f"{path}: cannot open the graph ({exc})") from None
    if index is None:
        raise InputError(f"{path}: cannot open the graph")
    index.expansion_search = config.expansion_search
    return index


def read_graph_header(path: Path) -> dict[str, Any]:
    """``{"dim", "rows", "dtype"}`` from a usearch file's header (nothing else is read).

    Raises:
        InputError: If the file is missing or not a usearch index of inner-product vectors.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such graph file")
    try:
        meta = usearch_index_class().metadata(str(path))
    except (ValueError, RuntimeError) as exc:
        raise InputError(f"{path}: not a usearch index ({exc})") from None
    if not meta:
        raise InputError(f"{path}: not a usearch index")
    metric = getattr(meta["kind_metric"], "name", str(meta["kind_metric"])).lower()
    if metric != METRIC:
        raise InputError(f"{path}: index metric is {metric!r}, expected {METRIC!r}")
    dtype = getattr(meta["kind_scalar"], "name", str(meta["kind_scalar"])).lower()
    return {"dim": int(meta["dimensions"]), "rows": int(meta["count_present"]), "dtype": dtype}


def graph_candidates(graph: Any, queries: np.ndarray, count: int, config: HnswConfig,
                     to_positions: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """(num_queries, count) catalogue positions the graph finds (-1: none, or a removed row)."""
    count = min(count, len(graph))
    out = np.full((len(queries), count), -1, dtype=np.int64)
    if count == 0:
        return out
    matches = graph.search(graph_rows(queries, config), count)
    keys = np.atleast_2d(matches.keys)
    counts = np.atleast_1d(getattr(matches, "counts", [keys.shape[1]]))
    for row, found in enumerate(counts.tolist()):
        out[row, :found] = to_positions(keys[row, :found].astype(np.int64))
    return out


def save_graph(graph: Any, path: Path) -> None:
    """Write the graph file (the caller makes the write atomic)."""
    graph.save(str(path))

"""How a saved index lies in a bundle: its manifest section, its files, and the cheap checks of their headers.

The ``index`` section of the manifest::

    {"file": "index/vectors.npy", "kind": "exact" | "hnsw", "dim", "metric": "ip", "dtype", "num_items",
     "segments": [{"file": "index/vectors.npy", "rows": n}, {"file": "index/vectors.v2.npy", "rows": m}, ...],
     "removed": {"file": "index/removed.v3.npy", "rows": r},                     (after an update that retired items)
     "graph": {"file": "index/graph.usearch", "rows": n, "connectivity", ...}}   (kind hnsw)

A section without ``segments`` is a bundle of gloss before issue 16 (``file`` is a usearch file with the vectors).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from gloss.edge.errors import InputError
from gloss.edge.files import atomic_path
from gloss.edge.hnsw import HnswConfig, read_graph_header
from gloss.edge.vectors import STORE_DTYPES, read_vectors_header

logger = logging.getLogger(__name__)

KINDS = ("exact", "hnsw")
INDEX_DTYPES = tuple(STORE_DTYPES)  # how the vectors are stored: f32, f16, i8
LEGACY_SUFFIX = ".usearch"  # gloss <= issue 15: one usearch file holding the vectors and an unused graph


def read_removed(root: Path, section: dict[str, Any]) -> np.ndarray | None:
    removed = section.get("removed")
    if not removed:
        return None
    path = root / removed["file"]
    try:
        rows = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"{path}: not a removed-rows .npy ({exc})") from None
    if rows.ndim != 1 or rows.dtype != np.int64 or len(rows) != removed.get("rows"):
        raise InputError(f"{path}: expected {removed.get('rows')} int64 row numbers, got {rows.shape} {rows.dtype}")
    return rows


def save_removed(path: Path, rows: np.ndarray) -> None:
    """Write the sorted physical rows of retired items (int64 ``.npy``), atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.asarray(rows, dtype=np.int64))


def index_facts(root: Path, section: dict[str, Any]) -> dict[str, Any]:
    """Check a saved index's files against its section, reading headers only (cheap enough for every load).

    Returns:
        ``{"dim", "num_items", "dtype", "kind", "hnsw", "graph_file", "graph_rows"}``.

    Raises:
        InputError: If a file is missing, or a header disagrees with the section (dim, dtype, rows).
    """
    root = Path(root)
    if "segments" not in section:
        header = read_index_header(root / section["file"])
        return {**header, "kind": "exact", "hnsw": None, "graph_file": None, "graph_rows": 0}
    kind, segments = section.get("kind"), section.get("segments")
    if kind not in KINDS or not isinstance(segments, list) or not segments:
        raise InputError(f"index section: kind {kind!r} or segments {segments!r} are not valid")
    dims, dtypes, rows = set(), set(), 0
    for seg in segments:
        if not isinstance(seg, dict) or not isinstance(seg.get("file"), str):
            raise InputError(f"index section: a segment has no 'file': {seg!r}")
        (num, dim), dtype, _ = read_vectors_header(root / seg["file"])
        if num != seg.get("rows"):
            raise InputError(f"{root / seg['file']}: {num} rows, the manifest says {seg.get('rows')}")
        dims.add(dim), dtypes.add(dtype)
        rows += num
    if len(dims) != 1 or len(dtypes) != 1:
        raise InputError(f"index segments disagree on dim {sorted(dims)} or dtype {sorted(dtypes)}")
    removed = section.get("removed") or {}
    num_items = rows - int(removed.get("rows", 0))
    graph, hnsw, graph_rows = section.get("graph"), None, 0
    if graph is not None:
        settings = {key: value for key, value in graph.items() if key not in ("file", "rows")}
        hnsw = HnswConfig.from_dict(settings, "index.graph")
        header = read_graph_header(root / graph["file"])
        graph_rows = int(graph.get("rows", -1))
        if header["rows"] != graph_rows or header["dim"] != dims.pop() or header["dtype"] != hnsw.dtype:
            raise InputError(f"{root / graph['file']}: graph of {header['rows']} x {header['dim']} {header['dtype']}, "
                             f"the manifest says {graph_rows} rows of {hnsw.dtype}")
        dims.add(header["dim"])
    elif kind == "hnsw":
        raise InputError("index section: kind hnsw without a graph")
    return {"dim": dims.pop(), "num_items": num_items, "dtype": dtypes.pop(), "kind": kind, "hnsw": hnsw,
            "graph_file": graph["file"] if graph else None, "graph_rows": graph_rows}


def read_index_header(path: Path) -> dict[str, Any]:
    """Read one index file's header: a vectors ``.npy`` or a (legacy) usearch file.

    Returns:
        ``{"dim": ..., "num_items": ..., "dtype": ...}`` (dtype: one of :data:`INDEX_DTYPES`).

    Raises:
        InputError: If the file is missing or is not a vectors file / usearch index of a supported dtype.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such index file; build one with gloss-export bundle")
    if path.suffix != LEGACY_SUFFIX:
        (rows, dim), dtype, _ = read_vectors_header(path)
        return {"dim": dim, "num_items": rows, "dtype": dtype}
    try:
        header = read_graph_header(path)
    except InputError as exc:
        raise InputError(f"{exc}; rebuild it with gloss-export bundle") from None
    if header["dtype"] not in INDEX_DTYPES:
        raise InputError(f"{path}: index stores {header['dtype']!r} vectors, expected one of {INDEX_DTYPES}; "
                         "rebuild the index")
    return {"dim": header["dim"], "num_items": header["rows"], "dtype": header["dtype"]}


def index_files(section: dict[str, Any]) -> list[str]:
    """Every file a manifest's ``index`` section names (segments, removed rows, graph)."""
    files = [section["file"]]
    for seg in section.get("segments") or []:
        if isinstance(seg, dict) and isinstance(seg.get("file"), str) and seg["file"] not in files:
            files.append(seg["file"])
    for part in ("removed", "graph"):
        value = section.get(part)
        if isinstance(value, dict) and isinstance(value.get("file"), str):
            files.append(value["file"])
    return files

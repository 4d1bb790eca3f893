"""A bundle's item index, built as a stream: every title embedded once into the vectors file, then the graph by size.

Memory stays flat in the catalogue size: titles are tokenised and embedded a chunk at a time
(:meth:`gloss.edge.embed.OnnxEmbedder.embed_stream`) and written to ``index/vectors.npy`` in the stored dtype as
they come (hashed while written); the HNSW graph, built only for catalogues of
:data:`gloss.edge.index.HNSW_MIN_ITEMS` items or more, reads the memory-mapped file back a block at a time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gloss.edge.bundle import GRAPH_FILE, INDEX_DIR, INDEX_FILE, ITEM_TEXT, Bundle
from gloss.edge.embed import OnnxEmbedder
from gloss.edge.errors import InputError
from gloss.edge.hnsw import HnswConfig
from gloss.edge.index import ItemIndex, choose_kind, index_files, save_removed
from gloss.edge.vectors import VectorStore, open_vectors, quantize, write_vectors
from gloss.export.embedder import EmbedRun, embed_to_file

logger = logging.getLogger(__name__)


def write_index(
    bundle_dir: Path, titles: Sequence[str], embedder: OnnxEmbedder, dtype: str, run: EmbedRun | None = None,
    kind: str | None = None, hnsw: HnswConfig | None = None, show_progress: bool | None = None,
    known: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Embed every title as ``ITEM_TEXT`` into ``bundle_dir / index/`` and build the index; return its manifest
    section (with the build's timings under ``build``).

    Args:
        bundle_dir: The (temporary) bundle folder.
        titles: Catalogue titles in catalogue order.
        embedder: The bundle's embedder, loaded for the run (:func:`gloss.export.embedder.open_run_embedder`).
        dtype: Stored dtype of the vectors (``f32``, ``f16``, ``i8``).
        run: Threads, batch size, device.
        kind: ``exact``, ``hnsw`` or None (by size).
        hnsw: Graph settings.
        show_progress: Progress bars; None means on when logging is at INFO.
        known: Receives ``{path: {"size", "sha256"}}`` of the vectors file (hashed while written).
    """
    run = run or EmbedRun()
    (Path(bundle_dir) / INDEX_DIR).mkdir(parents=True, exist_ok=True)
    texts = (ITEM_TEXT.format(title=title) for title in titles)
    entry = embed_to_file(texts, len(titles), embedder, Path(bundle_dir) / INDEX_FILE, dtype, run, show_progress)
    stats = entry.pop("stats")
    if known is not None:
        known[INDEX_FILE] = entry
    started = time.perf_counter()
    index = ItemIndex.create(VectorStore([open_vectors(Path(bundle_dir) / INDEX_FILE)]), kind, hnsw,
                             threads=run.num_threads, show_progress=show_progress)
    index.files = {"segments": [INDEX_FILE]}
    if hnsw is not None and index.kind != "hnsw":
        logger.warning("graph settings unused: %d items are searched exactly (--index-kind hnsw builds a graph)",
                       len(index))
    if index.kind == "hnsw":
        index.write_graph(Path(bundle_dir), GRAPH_FILE)
    index_s = time.perf_counter() - started
    logger.info("saved index %s: %s search over %d items (%.1f s after embedding)", INDEX_DIR, index.kind, len(index),
                index_s)
    return {**index.section(), "item_text": ITEM_TEXT, "build": {"embed": stats, "index_s": round(index_s, 3)}}


# --- update: append a segment, list removed rows, extend or rebuild the graph only when the policy says so ---

MAX_SEGMENTS = 16  # more appended segments than this: the vectors are rewritten as one file
REMOVED_MAX_FRACTION = 0.1  # more removed rows than this: vectors and graph are rewritten without them
TAIL_MAX_ROWS = 10_000  # rows after the graph searched exactly; beyond this the graph takes them in


def update_index(
    index: ItemIndex, bundle_dir: Path, removed: np.ndarray, new_vectors: np.ndarray, version: int,
    run: EmbedRun | None = None, known: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], set[str]]:
    """Write what an update changes in the index into a new bundle folder; the caller reuses the other files.

    New vectors become a new segment ``index/vectors.v<version>.npy``; retired items' rows are listed in
    ``index/removed.v<version>.npy``; old segments and the graph stay as they are (hard-linked by the caller), so
    the cost follows the items added. Only when a limit is passed is more rewritten: more than
    :data:`MAX_SEGMENTS` segments or :data:`REMOVED_MAX_FRACTION` removed rows rewrite the vectors (and graph)
    as one file, more than :data:`TAIL_MAX_ROWS` rows outside an HNSW graph add them to it, and an exact index
    that grows past :data:`gloss.edge.index.HNSW_MIN_ITEMS` gets its graph.

    Args:
        index: The bundle's index as opened.
        bundle_dir: The new (temporary) bundle folder.
        removed: Catalogue positions (in the old catalogue) of retired items.
        new_vectors: float32 vectors of the added items, in catalogue order.
        version: The new catalogue version (names the new files).
        run: Threads for a graph build.
        known: Receives hashes of files written while hashing.

    Returns:
        The new ``index`` section and the old index files the new bundle does not use.
    """
    run = run or EmbedRun()
    store = index.store
    dropped_rows = store.physical(np.asarray(removed, dtype=np.int64))
    all_removed = np.union1d(store.removed, dropped_rows).astype(np.int64)
    segments = list(store.segments)
    if len(new_vectors):
        segments.append(quantize(np.asarray(new_vectors, dtype=np.float32), store.stored_dtype))
    updated = VectorStore(segments, all_removed)
    kind = "hnsw" if index.kind == "hnsw" or choose_kind(len(updated)) == "hnsw" else "exact"
    legacy = "segments" not in index.files  # an index.usearch of gloss <= issue 15: rewritten in this layout
    old_files = {index.files["legacy"]} if legacy else set(index_files(index.section()))
    compact = legacy or len(segments) > MAX_SEGMENTS or len(all_removed) > REMOVED_MAX_FRACTION * updated.num_physical
    if compact:
        logger.info("index: rewriting the vectors as one file (%d segments, %d removed rows)", len(segments),
                    len(all_removed))
        fresh = ItemIndex(updated, kind, index.hnsw if index.kind == "hnsw" else None)
        section = fresh.save(Path(bundle_dir), INDEX_DIR, entries=known)
        return section, old_files - set(index_files(section))
    result = index.with_store(updated, kind)
    if len(new_vectors):
        rel = f"{INDEX_DIR}/vectors.v{version}.npy"
        entry = write_vectors(Path(bundle_dir) / rel, new_vectors, store.stored_dtype)
        result.files["segments"].append(rel)
        if known is not None:
            known[rel] = entry
    if len(all_removed) > len(store.removed):
        result.files["removed"] = f"{INDEX_DIR}/removed.v{version}.npy"
        save_removed(Path(bundle_dir) / result.files["removed"], all_removed)
    if kind == "hnsw" and (index.kind != "hnsw" or updated.num_physical - index.graph_rows > TAIL_MAX_ROWS):
        result.extend_graph(threads=run.num_threads)
        result.write_graph(Path(bundle_dir), f"{INDEX_DIR}/graph.v{version}.usearch")
    return result.section(), old_files - set(index_files(result.section()))


# --- regraph: a new HNSW graph over the stored vectors (no title embedded again) ---


def regraph_section(bundle: Bundle, bundle_dir: Path, hnsw: HnswConfig | None = None, threads: int = 0,
                    show_progress: bool | None = None) -> dict[str, Any]:
    """Build a graph with ``hnsw`` (default :class:`HnswConfig`) over every stored row of ``bundle``'s index, save it
    in ``bundle_dir`` (the new, temporary bundle folder) and return the new ``index`` section.

    Raises:
        InputError: If the index is of the layout before segments (``gloss-export update`` rewrites it).
    """
    index = bundle.open_index()
    if "segments" not in index.files:
        raise InputError(f"{bundle.dir}: an index of the old single-file layout; run gloss-export update on it first")
    started = time.perf_counter()
    fresh = ItemIndex.create(index.store, "hnsw", hnsw or HnswConfig(), threads=threads, show_progress=show_progress)
    fresh.files = {key: list(value) if isinstance(value, list) else value for key, value in index.files.items()
                   if key != "graph"}
    fresh.write_graph(Path(bundle_dir), GRAPH_FILE)  # a new folder: the old graph file is not carried over
    index_s = time.perf_counter() - started
    logger.info("new graph over %d rows (%.1f s)", index.store.num_physical, index_s)
    old = bundle.manifest["index"]
    return {**{k: v for k, v in old.items() if k in ("item_text", "build")}, **fresh.section(),
            "build": {**old.get("build", {}), "index_s": round(index_s, 3)}}

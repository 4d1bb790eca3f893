"""Exact top-k over a :class:`~gloss.edge.vectors.VectorStore`: block-wise scans, and the scoring of candidates.

Ties are broken by the lower catalogue position everywhere, and blocks follow positions (not files), so an
updated bundle and its rebuild rank identically.
"""

from __future__ import annotations

import logging

import numpy as np

from gloss.edge.vectors import VectorStore, dequantize

logger = logging.getLogger(__name__)

BLOCK_ROWS = 1 << 15  # rows scored at once by an exact scan (48 MiB as float32 at dim 384)


def top_k_blocked(store: VectorStore, queries: np.ndarray, k: int, start: int = 0,
                  block_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` by inner product over the live rows from position ``start``, one block at a time.

    Blocks follow catalogue positions, so two stores with the same live rows (an updated bundle and its rebuild)
    compute bit-identical similarities; ties are broken by the lower position. Float16 blocks are scanned by
    usearch's SIMD brute force (numpy's float16 -> float32 cast costs ~10x the matrix product), which proposes
    ``2 k`` rows per query that are then scored here in float32; a block where the ``k``-th score comes within
    :data:`TIE_MARGIN` of the last proposed one is scored in full instead, so the result stays exact.

    Returns:
        ``(positions int64, similarities float32)`` of shape (num_queries, k), best first.
    """
    block_rows = block_rows or BLOCK_ROWS
    best_pos = np.zeros((len(queries), 0), dtype=np.int64)
    best_sim = np.zeros((len(queries), 0), dtype=np.float32)
    buffer = np.empty((min(block_rows, max(len(store) - start, 0)), store.dim), dtype=np.float32)
    for first, stored in store.stored_blocks(block_rows, start):
        found = _top_k_simd(stored, queries, k, first) if stored.dtype == np.float16 else None
        if found is None:
            sims = queries @ dequantize(stored, buffer[: len(stored)]).T
            found = top_k_rows(sims, min(k, sims.shape[1]), offset=first)
        best_pos, best_sim = _merge(best_pos, best_sim, *found, k)
    return best_pos, best_sim


TIE_MARGIN = 1e-4  # float32 vs usearch's float16 kernel differ by ~1e-6; closer scores at the cut: score in full


def _top_k_simd(stored: np.ndarray, queries: np.ndarray, k: int, offset: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Top-``k`` of a float16 block via usearch's brute force + float32 re-scoring, or None to score it in full."""
    from gloss.edge.hnsw import usearch_exact_search  # lazy: usearch only where a float16 block is scanned

    count = min(2 * k, len(stored))
    matches = usearch_exact_search()(np.ascontiguousarray(stored), queries.astype(np.float16), count,
                                     metric="ip", exact=True)
    cols = np.atleast_2d(matches.keys).astype(np.int64)
    if cols.shape != (len(queries), count) or (cols < 0).any() or (cols >= len(stored)).any():
        return None  # fewer matches than asked (or a sentinel): not worth special-casing
    rows = np.asarray(stored[cols.reshape(-1)], dtype=np.float32).reshape(len(queries), count, -1)
    sims = np.einsum("qd,qcd->qc", queries, rows).astype(np.float32)
    if count < len(stored):
        ordered = -np.sort(-sims, axis=1)
        if np.any(ordered[:, k - 1] - ordered[:, -1] < TIE_MARGIN):
            return None
    query_rows = np.repeat(np.arange(len(queries)), count)
    return _first_k(query_rows, cols.reshape(-1) + offset, sims.reshape(-1), len(queries), min(k, len(stored)))


def top_k_rows(sims: np.ndarray, k: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` columns (+ ``offset``) per row of a similarity block, similarity descending then column ascending."""
    kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1]
    rows, cols = np.nonzero(sims >= kth[:, None])
    return _first_k(rows, cols + offset, sims[rows, cols], len(sims), k)


def _first_k(rows: np.ndarray, cols: np.ndarray, sims: np.ndarray, num_rows: int,
             k: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((cols, -sims, rows))
    rows, cols, sims = rows[order], cols[order], sims[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")
    keep = rank < k
    out_pos = np.full((num_rows, k), -1, dtype=np.int64)
    out_sim = np.full((num_rows, k), -np.inf, dtype=np.float32)
    out_pos[rows[keep], rank[keep]] = cols[keep]
    out_sim[rows[keep], rank[keep]] = sims[keep]
    return out_pos, out_sim


def _merge(pos_a: np.ndarray, sim_a: np.ndarray, pos_b: np.ndarray, sim_b: np.ndarray,
           k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge two per-row candidate lists (padding: position -1) into the top ``k``."""
    pos, sim = np.hstack([pos_a, pos_b]), np.hstack([sim_a, sim_b])
    rows, cols = np.nonzero(pos >= 0)
    return _first_k(rows, pos[rows, cols], sim[rows, cols], len(pos), k)


def rank_candidates(store: VectorStore, queries: np.ndarray, candidates: np.ndarray,
                    k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact similarities of candidate positions (per query, -1 = none) and the top ``k`` of them.

    Each query's candidates are scored against its own stored rows, so an approximate search's results carry
    the same similarities as exact search (up to float summation order).
    """
    candidates = np.asarray(candidates, dtype=np.int64)
    rows, cols = np.nonzero(candidates >= 0)
    positions = candidates[rows, cols]
    unique, inverse = np.unique(positions, return_inverse=True)
    vectors = store.rows(unique) if len(unique) else np.zeros((0, store.dim), dtype=np.float32)
    sims = np.einsum("ij,ij->i", queries[rows], vectors[inverse]).astype(np.float32)
    # A position listed twice for one query (graph + tail) keeps one entry: drop repeats per (row, position).
    key = rows * (len(store) + 1) + positions
    _, first = np.unique(key, return_index=True)
    return _first_k(rows[first], positions[first], sims[first], len(candidates), k)

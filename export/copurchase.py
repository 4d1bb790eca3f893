"""Co-purchase statistics for fusion re-ranking: item -> next-items counts learned from purchase sequences.

Leakage rule: build from the part of each sequence *before* the items being evaluated. Tuning on the
validation split uses ``holdout=2`` (each user's ``items[:-2]``), evaluating the test split
``holdout=1`` (``items[:-1]``); a deployed model may use every item (``holdout=0``).

Scale: the sequences are streamed into two flat int32/int64 arrays (:func:`gloss.edge.sequences.read_sequence_arrays`)
and the pairs are counted block by block of source items (:func:`count_blocks`): each block's pairs are generated,
sorted and summed on their own, so the working memory is one block's (``MAX_BLOCK_PAIRS``), not every pair of the
catalogue at once, and the file is written from the blocks without joining them first.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gloss.edge.catalog import Catalog
from gloss.edge.copurchase import CoPurchase, row_sums, write_copurchase
from gloss.edge.errors import InputError
from gloss.edge.sequences import SequenceArrays, read_sequence_arrays
from gloss.edge.splits import UserSequence

logger = logging.getLogger(__name__)

DEFAULT_WINDOW = 8  # tuned on Beauty and Toys (benchmarks/quality.py)
DEFAULT_DECAY = 0.7
MAX_BLOCK_PAIRS = 8_000_000  # candidate pairs per block: ~50 bytes each while the block is summed (~400 MB)


@dataclass(frozen=True)
class Block:
    """The finished CSR rows ``first .. first + len(counts) - 1``."""

    first: int
    counts: np.ndarray  # pairs per row, int64
    indices: np.ndarray  # int32, each row strongest first
    data: np.ndarray  # float32
    sums: np.ndarray  # float64 row totals


def check_settings(num_items: int, window: int, decay: float) -> None:
    """Raise InputError for a bad catalogue size, window or decay."""
    if num_items < 1:
        raise InputError(f"num_items must be >= 1, got {num_items}")
    if window < 1:
        raise InputError(f"--window must be >= 1, got {window}")
    if not 0 < decay <= 1:
        raise InputError(f"--decay must be in (0, 1], got {decay}")


def _check_positions(items: np.ndarray, num_items: int) -> None:
    if len(items) and (items.min() < 0 or items.max() >= num_items):
        bad = int(items[(items < 0) | (items >= num_items)][0])
        raise InputError(f"sequence item position {bad} is outside the catalogue (0..{num_items - 1})")


def _room(sequences: SequenceArrays, window: int, users_per_chunk: int = 1 << 20) -> np.ndarray:
    """For every position, how many later items of the same user fall in the window (0..window)."""
    room = np.empty(len(sequences.items), dtype=np.uint8 if window < 256 else np.int32)
    offsets = sequences.offsets
    for first in range(0, len(sequences), users_per_chunk):
        ends = offsets[first + 1 : first + users_per_chunk + 1]
        start, stop = int(offsets[first]), int(ends[-1])
        end_of = np.repeat(ends, np.diff(offsets[first : first + users_per_chunk + 1]))
        room[start:stop] = np.minimum(end_of - np.arange(start, stop) - 1, window)
    return room


def count_blocks(
    sequences: SequenceArrays, num_items: int, window: int = DEFAULT_WINDOW, decay: float = DEFAULT_DECAY,
    max_block_pairs: int = MAX_BLOCK_PAIRS,
) -> Iterator[Block]:
    """Count the decayed successor pairs block by block of source items, in row order.

    An item ``g`` steps after ``a`` in one sequence adds ``decay ** (g - 1)`` to ``M[a, item]``; an item never
    counts as its own successor. Within a block the weights of one pair are summed in the order a one-shot count
    meets them (every 1-step pair before every 2-step pair ...), so the result does not depend on the block size.

    Args:
        sequences: Catalogue positions per user (already cut before held-out items).
        num_items: Catalogue size.
        window: How many steps ahead count as "bought next".
        decay: Weight factor per extra step, in (0, 1].
        max_block_pairs: Candidate pairs per block (a bound on the working memory); rows are never split.

    Yields:
        :class:`Block` s covering rows ``0 .. num_items - 1`` in order.
    """
    items = sequences.items
    room = _room(sequences, window)
    by_item = np.argsort(items, kind="stable")  # occurrences grouped by source item, in sequence order
    item_ptr = np.concatenate([[0], np.cumsum(np.bincount(items, minlength=num_items))])
    per_block = max(1, max_block_pairs // window)
    cuts = np.unique(np.searchsorted(item_ptr, np.arange(0, len(items), per_block), side="right") - 1)
    bounds = [*(int(c) for c in cuts if 0 < c < num_items), num_items]
    first = 0
    for last in bounds:
        yield _count_rows(items, room, by_item[item_ptr[first] : item_ptr[last]], first, last, num_items, window,
                          decay)
        first = last


def _count_rows(
    items: np.ndarray, room: np.ndarray, positions: np.ndarray, first: int, last: int, num_items: int, window: int,
    decay: float,
) -> Block:
    """The CSR rows ``first .. last - 1`` from the occurrences (``positions``) of those items."""
    src = items[positions].astype(np.int64)
    space = room[positions]
    keys = []
    for gap in range(1, window + 1):
        ok = space >= gap
        s, d = src[ok], items[positions[ok] + gap].astype(np.int64)
        differ = s != d
        # (pair, gap) in one sortable key: sorting it puts a pair's occurrences in gap order
        keys.append(((s[differ] - first) * num_items + d[differ]) * window + (gap - 1))
    ordered = np.sort(np.concatenate(keys))
    pairs, gaps = np.divmod(ordered, window)
    new = np.ones(len(pairs), dtype=bool)
    new[1:] = pairs[1:] != pairs[:-1]
    weights = np.array([decay ** g for g in range(window)])  # Python's pow, as the one-shot count used
    # bincount adds each pair's weights one by one in gap order: the float64 sums of the one-shot count
    data = np.bincount(np.cumsum(new) - 1, weights=weights[gaps]) if len(pairs) else np.zeros(0)
    rows, cols = np.divmod(pairs[new], num_items)
    ranked = np.lexsort((-data, rows))  # stable: equal counts keep the lower position first
    counts = np.bincount(rows, minlength=last - first).astype(np.int64)
    values = data[ranked].astype(np.float32)
    return Block(first, counts, cols[ranked].astype(np.int32), values,
                 row_sums(np.concatenate([[0], np.cumsum(counts)]), values))


def _as_arrays(sequences: Iterable[Sequence[int]] | SequenceArrays) -> SequenceArrays:
    return sequences if isinstance(sequences, SequenceArrays) else SequenceArrays.from_lists(sequences)


def build_copurchase(
    sequences: Iterable[Sequence[int]] | SequenceArrays, num_items: int, window: int = DEFAULT_WINDOW,
    decay: float = DEFAULT_DECAY, max_block_pairs: int = MAX_BLOCK_PAIRS,
) -> CoPurchase:
    """Count, for every item, the items bought after it within ``window`` steps (in memory).

    An item ``g`` steps after ``a`` in one sequence adds ``decay ** (g - 1)`` to ``M[a, item]``;
    an item never counts as its own successor. Popularity is each item's number of occurrences.

    Args:
        sequences: Catalogue positions per user, in time order (already cut before held-out items), as lists
            or as :class:`~gloss.edge.splits.SequenceArrays`.
        num_items: Catalogue size.
        window: How many steps ahead count as "bought next".
        decay: Weight factor per extra step, in (0, 1].
        max_block_pairs: Working-memory bound of :func:`count_blocks` (the result does not depend on it).

    Returns:
        The statistics; each CSR row is sorted by count, strongest first (ties: lower position first).

    Raises:
        InputError: On a bad ``window``/``decay``/``num_items`` or a position outside the catalogue.
    """
    check_settings(num_items, window, decay)
    seqs = _as_arrays(sequences)
    _check_positions(seqs.items, num_items)
    blocks = list(count_blocks(seqs, num_items, window, decay, max_block_pairs))
    stats = _assemble(blocks, seqs, num_items, window, decay)
    logger.info("co-purchase: %d sequences, %d items, %d pairs (window %d, decay %g)",
                len(seqs), num_items, stats.nnz, window, decay)
    return stats


def _assemble(blocks: list[Block], seqs: SequenceArrays, num_items: int, window: int, decay: float) -> CoPurchase:
    indptr = np.concatenate([[0], np.cumsum(np.concatenate([b.counts for b in blocks]))]).astype(np.int64)
    return CoPurchase(
        indptr=indptr, indices=np.concatenate([b.indices for b in blocks]),
        data=np.concatenate([b.data for b in blocks]), popularity=_popularity(seqs, num_items), window=window,
        decay=float(decay), sums=np.concatenate([b.sums for b in blocks]),
    )  # fmt: skip


def _popularity(seqs: SequenceArrays, num_items: int) -> np.ndarray:
    return np.bincount(seqs.items, minlength=num_items).astype(np.float32)


def training_prefixes(sequences: Sequence[UserSequence], catalog: Catalog, holdout: int) -> list[list[int]]:
    """Each user's catalogue positions without the last ``holdout`` items (small data: tests, benchmarks).

    Args:
        sequences: Users' items in time order.
        catalog: Maps item ids to positions.
        holdout: Items cut from the end: 2 to tune on the validation split, 1 to evaluate on the test
            split, 0 to serve.

    Raises:
        InputError: If ``holdout`` is negative or an item is not in the catalogue.
    """
    if holdout < 0:
        raise InputError(f"--holdout must be >= 0, got {holdout}")
    out = []
    for seq in sequences:
        items = seq.items[: len(seq.items) - holdout] if holdout else seq.items
        try:
            out.append([catalog.position(a) for a in items])
        except InputError as exc:
            raise InputError(f"user {seq.user}: {exc}; use the catalogue the sequences were built with") from None
    return out


def read_prefixes(sequences_path: Path, catalog: Catalog, holdout: int) -> SequenceArrays:
    """Every user's catalogue positions without the last ``holdout`` items, streamed into flat arrays.

    Raises:
        InputError: Naming the line of a malformed row or of an item not in ``catalog``.
    """
    positions = {asin: i for i, asin in enumerate(catalog.asins)}  # build side: a dict is the fast bulk lookup
    return read_sequence_arrays(Path(sequences_path), positions, holdout)


def build_copurchase_file(
    sequences_path: Path, catalog: Catalog, out_path: Path, holdout: int,
    window: int = DEFAULT_WINDOW, decay: float = DEFAULT_DECAY, max_block_pairs: int = MAX_BLOCK_PAIRS,
    prefixes: SequenceArrays | None = None,
) -> CoPurchase:
    """Stream sequences, count the statistics of their prefixes block by block and save them atomically.

    Args:
        sequences_path: ``{"user", "items"}`` JSONL(.gz).
        catalog: The catalogue the sequences name items of.
        out_path: The statistics file.
        holdout: Items cut from the end of every sequence (0 serve, 1 test, 2 validation).
        window: Successors counted up to this many steps ahead.
        decay: Weight of a successor ``g`` steps ahead: ``decay ** (g - 1)``.
        max_block_pairs: Working-memory bound of :func:`count_blocks`.
        prefixes: :func:`read_prefixes` of the same file and holdout, if the caller read them already (a bundle
            build reads them before embedding, to fail early); None reads them here.

    Returns:
        The saved statistics, opened memory-mapped from ``out_path``.

    Raises:
        InputError: On unreadable sequences, unknown items or bad settings.
    """
    check_settings(len(catalog), window, decay)
    seqs = prefixes if prefixes is not None else read_prefixes(Path(sequences_path), catalog, holdout)
    blocks = list(count_blocks(seqs, len(catalog), window, decay, max_block_pairs))
    counts = np.concatenate([b.counts for b in blocks])
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    popularity = _popularity(seqs, len(catalog))
    del seqs
    write_copurchase(Path(out_path), indptr, [b.indices for b in blocks], [b.data for b in blocks], popularity,
                     [b.sums for b in blocks], window, decay)
    logger.info("co-purchase %s: %d items, %d pairs (window %d, decay %g, holdout %d)", out_path, len(catalog),
                int(indptr[-1]), window, decay, holdout)
    return CoPurchase.load(out_path)

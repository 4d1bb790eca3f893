"""Co-purchase statistics for fusion re-ranking: item -> next-items counts learned from purchase sequences.

Leakage rule: build from the part of each sequence *before* the items being evaluated. Tuning on the
validation split uses ``holdout=2`` (each user's ``items[:-2]``), evaluating the test split
``holdout=1`` (``items[:-1]``); a deployed model may use every item (``holdout=0``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from gloss.edge.catalog import Catalog
from gloss.edge.errors import InputError
from gloss.edge.fusion import CoPurchase
from gloss.edge.splits import UserSequence, load_sequences

logger = logging.getLogger(__name__)

DEFAULT_WINDOW = 8  # tuned on Beauty and Toys (benchmarks/quality.py)
DEFAULT_DECAY = 0.7


def build_copurchase(
    sequences: Iterable[Sequence[int]], num_items: int, window: int = DEFAULT_WINDOW, decay: float = DEFAULT_DECAY
) -> CoPurchase:
    """Count, for every item, the items bought after it within ``window`` steps.

    An item ``g`` steps after ``a`` in one sequence adds ``decay ** (g - 1)`` to ``M[a, item]``;
    an item never counts as its own successor. Popularity is each item's number of occurrences.

    Args:
        sequences: Catalogue positions per user, in time order (already cut before held-out items).
        num_items: Catalogue size.
        window: How many steps ahead count as "bought next".
        decay: Weight factor per extra step, in (0, 1].

    Returns:
        The statistics; each CSR row is sorted by count, strongest first (ties: lower position first).

    Raises:
        InputError: On a bad ``window``/``decay``/``num_items`` or a position outside the catalogue.
    """
    if num_items < 1:
        raise InputError(f"num_items must be >= 1, got {num_items}")
    if window < 1:
        raise InputError(f"--window must be >= 1, got {window}")
    if not 0 < decay <= 1:
        raise InputError(f"--decay must be in (0, 1], got {decay}")
    arrays = [np.asarray(seq, dtype=np.int64).reshape(-1) for seq in sequences]
    flat = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
    if len(flat) and (flat.min() < 0 or flat.max() >= num_items):
        bad = int(flat[(flat < 0) | (flat >= num_items)][0])
        raise InputError(f"sequence item position {bad} is outside the catalogue (0..{num_items - 1})")
    owner = np.repeat(np.arange(len(arrays)), [len(a) for a in arrays])
    keys, weights = [], []
    for gap in range(1, window + 1):
        src, dst = flat[:-gap], flat[gap:]
        keep = (owner[:-gap] == owner[gap:]) & (src != dst)
        keys.append(src[keep] * num_items + dst[keep])
        weights.append(np.full(int(keep.sum()), decay ** (gap - 1)))
    all_keys = np.concatenate(keys) if keys else np.zeros(0, dtype=np.int64)
    unique, inverse = np.unique(all_keys, return_inverse=True)
    data = np.bincount(inverse, weights=np.concatenate(weights), minlength=len(unique)) if len(unique) else np.zeros(0)
    rows, cols = unique // num_items, unique % num_items
    order = np.lexsort((cols, -data, rows))
    indptr = np.zeros(num_items + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=num_items), out=indptr[1:])
    popularity = np.bincount(flat, minlength=num_items).astype(np.float32)
    logger.info("co-purchase: %d sequences, %d items, %d pairs (window %d, decay %g)",
                len(arrays), num_items, len(unique), window, decay)
    return CoPurchase(indptr=indptr, indices=cols[order].astype(np.int32), data=data[order].astype(np.float32),
                      popularity=popularity, window=window, decay=float(decay))


def training_prefixes(sequences: Sequence[UserSequence], catalog: Catalog, holdout: int) -> list[list[int]]:
    """Each user's catalogue positions without the last ``holdout`` items.

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


def build_copurchase_file(
    sequences_path: Path, catalog: Catalog, out_path: Path, holdout: int,
    window: int = DEFAULT_WINDOW, decay: float = DEFAULT_DECAY,
) -> CoPurchase:
    """Read sequences, build the statistics from their prefixes and save them atomically to ``out_path``.

    Raises:
        InputError: On unreadable sequences, unknown items or bad settings.
    """
    prefixes = training_prefixes(load_sequences(sequences_path), catalog, holdout)
    copurchase = build_copurchase(prefixes, len(catalog), window=window, decay=decay)
    copurchase.save(out_path)
    return copurchase

"""Users' purchase sequences and the paper's leave-one-out splits."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

from gloss.edge.errors import InputError
from gloss.edge.files import read_jsonl

logger = logging.getLogger(__name__)

MIN_SEQUENCE_LENGTH = 3
VALIDATION_FRACTION = 0.05
DEFAULT_SEED = 42


class Split(str, Enum):
    """Which held-out item a user's example predicts."""

    train = "train"
    validation = "validation"
    test = "test"


@dataclass(frozen=True)
class Example:
    """One user's history (ASINs, oldest first) and the item to predict."""

    user: str
    history: tuple[str, ...]
    target: str


@dataclass(frozen=True)
class UserSequence:
    """A user's items in time order."""

    user: str
    items: tuple[str, ...]


def load_sequences(path: Path) -> list[UserSequence]:
    """Read ``{"user", "items": [asin, ...]}`` rows (time order) from JSONL(.gz).

    Raises:
        InputError: If a row is malformed.
    """
    out = []
    for number, row in enumerate(read_jsonl(path), start=1):
        user, items = row.get("user"), row.get("items")
        if not isinstance(user, str) or not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise InputError(f"{path}: row {number} needs 'user' (string) and 'items' (list of item ids)")
        out.append(UserSequence(user, tuple(items)))
    if not out:
        raise InputError(f"{path}: no user sequences")
    logger.info("sequences %s: %d users", path, len(out))
    return out


def validation_users(
    users: Sequence[str], fraction: float = VALIDATION_FRACTION, seed: int = DEFAULT_SEED
) -> frozenset[str]:
    """A seeded random ``fraction`` of users (at least one) who also get a validation example."""
    if not 0 < fraction < 1:
        raise InputError(f"--validation-fraction must be in (0, 1), got {fraction}")
    ordered = sorted(users)
    count = max(1, round(len(ordered) * fraction))
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(ordered), size=count, replace=False)
    return frozenset(ordered[i] for i in chosen)


def make_examples(
    sequences: Sequence[UserSequence], split: Split, held_out: frozenset[str]
) -> Iterator[Example]:
    """The paper's examples for one split.

    Test: every user, history = all but the last item. Validation: users in ``held_out``, history =
    all but the last two. Train: one example per user, the item before the held-out ones.
    Users with fewer than 3 items are skipped (the paper's filter).
    """
    for seq in sequences:
        items = seq.items
        if len(items) < MIN_SEQUENCE_LENGTH:
            continue
        if split is Split.test:
            cut = len(items) - 1
        elif split is Split.validation:
            if seq.user not in held_out:
                continue
            cut = len(items) - 2
        else:
            cut = len(items) - (3 if seq.user in held_out else 2)
            if cut < 1:
                continue
        yield Example(seq.user, items[:cut], items[cut])

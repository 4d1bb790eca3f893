"""Types that several edge modules share, kept below all of them so that imports run one way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class SearchIndex(Protocol):
    """What retrieval needs from an index (gloss.edge.index.ItemIndex implements it)."""

    def search(self, queries: np.ndarray, k: int, exact: bool = True) -> tuple[np.ndarray, np.ndarray]: ...

    def vectors(self) -> np.ndarray: ...

    def __len__(self) -> int: ...


@dataclass(frozen=True)
class ScoredItem:
    """A recommended catalogue item: its position in the catalogue and its best similarity to a query."""

    position: int
    score: float

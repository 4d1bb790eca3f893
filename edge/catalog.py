"""The item catalogue: ASINs and titles, and resolving a user's history against it."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gloss.edge.errors import InputError
from gloss.edge.files import read_jsonl, write_jsonl_atomic

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Catalog:
    """Catalogue items in a fixed order; an item's position is its key in the index.

    Attributes:
        asins: Item ids, unique.
        titles: Item titles, same order.
    """

    asins: tuple[str, ...]
    titles: tuple[str, ...]
    _position: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.asins) != len(self.titles):
            raise InputError(f"catalogue has {len(self.asins)} ids but {len(self.titles)} titles")
        if not self.asins:
            raise InputError("catalogue is empty")
        position = {asin: i for i, asin in enumerate(self.asins)}
        if len(position) != len(self.asins):
            raise InputError("catalogue has duplicate item ids")
        object.__setattr__(self, "_position", position)

    def __len__(self) -> int:
        return len(self.asins)

    def __contains__(self, asin: object) -> bool:
        return asin in self._position

    def position(self, asin: str) -> int:
        """Index of an item id.

        Raises:
            InputError: If the id is not in the catalogue.
        """
        try:
            return self._position[asin]
        except KeyError:
            raise InputError(f"unknown item {asin!r}: not in the catalogue") from None

    def title(self, asin: str) -> str:
        """Title of an item id (raises ``InputError`` for an unknown id)."""
        return self.titles[self.position(asin)]

    def titles_of(self, asins: Iterable[str]) -> list[str]:
        """Titles of several item ids, in order."""
        return [self.title(asin) for asin in asins]

    def resolve_history(self, items: Sequence[str]) -> list[str]:
        """Map a history given as ASINs or titles to catalogue ASINs.

        A value that is a catalogue id is taken as one; otherwise it must equal a catalogue title
        (optionally with the ``Title: `` prefix).

        Raises:
            InputError: If the history is empty or an item is neither an id nor a title.
        """
        if not items:
            raise InputError("empty history: give at least one item")
        by_title = self._title_index()
        out = []
        for item in items:
            key = str(item).strip()
            if key in self._position:
                out.append(key)
                continue
            title = key.removeprefix("Title:").strip()
            if title in by_title:
                out.append(by_title[title])
            else:
                raise InputError(f"unknown item {key[:80]!r}: neither an item id nor a catalogue title")
        return out

    def _title_index(self) -> dict[str, str]:
        cached = self.__dict__.get("_by_title")
        if cached is None:
            cached = {}
            for asin, title in zip(self.asins, self.titles, strict=True):
                cached.setdefault(title, asin)
            object.__setattr__(self, "_by_title", cached)
        return cached


def load_catalog(path: Path) -> Catalog:
    """Read ``{"asin", "title"}`` rows from JSONL(.gz).

    Raises:
        InputError: If a row lacks a field or the file is unreadable.
    """
    asins, titles = [], []
    for number, row in enumerate(read_jsonl(path), start=1):
        asin, title = row.get("asin"), row.get("title")
        if not isinstance(asin, str) or not isinstance(title, str):
            raise InputError(f"{path}: row {number} needs string fields 'asin' and 'title'")
        asins.append(asin)
        titles.append(title)
    if not asins:
        raise InputError(f"{path}: no items")
    logger.info("catalogue %s: %d items", path, len(asins))
    return Catalog(tuple(asins), tuple(titles))


def save_catalog(catalog: Catalog, path: Path) -> None:
    """Write the catalogue as JSONL(.gz), atomically."""
    write_jsonl_atomic(
        path, ({"asin": a, "title": t} for a, t in zip(catalog.asins, catalog.titles, strict=True))
    )

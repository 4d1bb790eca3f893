"""The item catalogue: ASINs and titles, and resolving a user's history against it."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gloss.edge.errors import InputError
from gloss.edge.files import read_jsonl_lines, write_jsonl_atomic

logger = logging.getLogger(__name__)

MAX_LISTED = 5  # duplicates named in one error line; the rest are counted


@dataclass(frozen=True)
class Catalog:
    """Catalogue items in a fixed order; an item's position is its key in the index.

    Attributes:
        asins: Item ids, unique and non-empty.
        titles: Item titles, same order, non-empty (an empty title would match any empty query).
    """

    asins: tuple[str, ...]
    titles: tuple[str, ...]
    _position: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.asins) != len(self.titles):
            raise InputError(f"catalogue has {len(self.asins)} ids but {len(self.titles)} titles")
        if not self.asins:
            raise InputError("catalogue is empty")
        check_items(self.asins, self.titles, "catalogue", "row")
        object.__setattr__(self, "_position", {asin: i for i, asin in enumerate(self.asins)})

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
            InputError: If the history is empty or an item is empty or neither an id nor a title.
        """
        if not items:
            raise InputError("empty history: give at least one item")
        by_title = self._title_index()
        out = []
        for number, item in enumerate(items, start=1):
            key = str(item).strip()
            if not key.removeprefix("Title:").strip():
                raise InputError(f"history item {number} is empty; give an item id or a catalogue title")
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


def check_items(
    asins: Sequence[str], titles: Sequence[str], name: str, unit: str, numbers: Sequence[int] | None = None
) -> None:
    """Refuse empty ids, empty titles and duplicate ids, naming the rows.

    Args:
        asins: Item ids.
        titles: Their titles.
        name: What holds them, for the message (a file name or "catalogue").
        unit: "line" or "row".
        numbers: The line/row number of each item (default: 1, 2, ...).

    Raises:
        InputError: Naming the first empty field, or up to ``MAX_LISTED`` duplicate ids with their rows.
    """
    numbers = list(numbers) if numbers is not None else list(range(1, len(asins) + 1))
    for number, asin, title in zip(numbers, asins, titles, strict=True):
        if not asin.strip():
            raise InputError(f"{name}: {unit} {number} has an empty 'asin'; every item needs an id")
        if not title.strip():
            raise InputError(
                f"{name}: {unit} {number} (asin {asin!r}) has an empty 'title'; every item needs a title"
            )
    rows: dict[str, list[int]] = {}
    for number, asin in zip(numbers, asins, strict=True):
        rows.setdefault(asin, []).append(number)
    duplicates = [(asin, found) for asin, found in rows.items() if len(found) > 1]
    if duplicates:
        shown = "; ".join(
            f"{asin!r} ({unit}s {', '.join(map(str, found))})" for asin, found in duplicates[:MAX_LISTED]
        )
        more = f"; and {len(duplicates) - MAX_LISTED} more" if len(duplicates) > MAX_LISTED else ""
        raise InputError(f"{name}: {len(duplicates)} duplicate item id(s): {shown}{more}; ids must be unique")


def load_catalog(path: Path) -> Catalog:
    """Read ``{"asin", "title"}`` rows from JSONL(.gz).

    Raises:
        InputError: If the file is unreadable, a row lacks a field, has an empty id or title, or an id repeats
            (naming the line numbers).
    """
    asins, titles, lines = [], [], []
    for number, row in read_jsonl_lines(path):
        asin, title = row.get("asin"), row.get("title")
        if not isinstance(asin, str) or not isinstance(title, str):
            raise InputError(f"{path}: line {number} needs string fields 'asin' and 'title'")
        asins.append(asin)
        titles.append(title)
        lines.append(number)
    if not asins:
        raise InputError(f"{path}: no items")
    check_items(asins, titles, str(path), "line", lines)
    logger.info("catalogue %s: %d items", path, len(asins))
    return Catalog(tuple(asins), tuple(titles))


def save_catalog(catalog: Catalog, path: Path) -> None:
    """Write the catalogue as JSONL(.gz), atomically."""
    write_jsonl_atomic(
        path, ({"asin": a, "title": t} for a, t in zip(catalog.asins, catalog.titles, strict=True))
    )

"""The item catalogue: ASINs and titles, and resolving a user's history against it.

A catalogue holds its ids and titles as two :class:`~gloss.edge.strings.StringArray` columns (one UTF-8 blob +
offsets each) with hash lookups from an id or a title to its row, so a million items cost ~100 MB of text rather
than ~600 MB of Python strings and dicts. A bundle stores the same columns in ``catalog.bin`` beside the
readable ``catalog.jsonl.gz``; :func:`open_catalog` maps that file, so a cold start neither parses nor checks the
JSONL again (the build checked it, the manifest's sizes and hashes guard the file).
"""

from __future__ import annotations

import gzip
import json
import logging
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

import numpy as np

from gloss.edge.arrays import open_array_file, save_arrays
from gloss.edge.errors import InputError
from gloss.edge.files import atomic_path, read_jsonl_lines, sha256_file
from gloss.edge.strings import KEY_HASH, KeyLookup, StringArray, StringArrayBuilder

logger = logging.getLogger(__name__)

MAX_LISTED = 5  # duplicates named in one error line; the rest are counted
ARRAYS_FORMAT = 1
GZIP_LEVEL = 6
ARRAYS_HINT = "rebuild the bundle with gloss-export bundle"
TITLE_PREFIX = "Title:"


class Catalog:
    """Catalogue items in a fixed order; an item's position is its key in the index.

    Args:
        asins: Item ids, unique and non-empty (any sequence of ``str``; stored as a :class:`StringArray`).
        titles: Item titles, same order, non-empty (an empty title would match any empty query).

    Raises:
        InputError: If the lengths differ, the catalogue is empty, or an id or title is empty or an id repeats.
    """

    asins: StringArray
    titles: StringArray

    def __init__(self, asins: Sequence[str], titles: Sequence[str]) -> None:
        if len(asins) != len(titles):
            raise InputError(f"catalogue has {len(asins)} ids but {len(titles)} titles")
        if not len(asins):
            raise InputError("catalogue is empty")
        asin_array, title_array = as_string_array(asins), as_string_array(titles)
        lookup = check_items(asin_array, title_array, "catalogue", "row")
        self._set(asin_array, title_array, lookup, None)

    @classmethod
    def trusted(
        cls, asins: StringArray, titles: StringArray, asin_lookup: KeyLookup | None = None,
        title_lookup: KeyLookup | None = None,
    ) -> Catalog:
        """A catalogue from columns already checked (a saved catalogue, a derived one); lookups built on demand."""
        catalog = cls.__new__(cls)
        catalog._set(asins, titles, asin_lookup, title_lookup)
        return catalog

    def _set(self, asins: StringArray, titles: StringArray, asin_lookup: KeyLookup | None,
             title_lookup: KeyLookup | None) -> None:
        self.asins, self.titles = asins, titles
        self._asin_lookup, self._title_lookup = asin_lookup, title_lookup

    def __len__(self) -> int:
        return len(self.asins)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Catalog):
            return NotImplemented
        return self.asins == other.asins and self.titles == other.titles

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Catalog({len(self)} items)"

    def __contains__(self, asin: object) -> bool:
        return isinstance(asin, str) and self.find(asin) >= 0

    def asin_lookup(self) -> KeyLookup:
        """The id -> row hash lookup (built on first use)."""
        if self._asin_lookup is None:
            self._asin_lookup = KeyLookup.build(self.asins)
        return self._asin_lookup

    def title_lookup(self) -> KeyLookup:
        """The title -> first row hash lookup (built on first use)."""
        if self._title_lookup is None:
            self._title_lookup = KeyLookup.build(self.titles)
        return self._title_lookup

    def find(self, asin: str) -> int:
        """Position of an item id, or -1."""
        return self.asin_lookup().find(self.asins, asin)

    def find_title(self, title: str) -> int:
        """Position of the first item with exactly this title, or -1."""
        return self.title_lookup().find(self.titles, title)

    def position(self, asin: str) -> int:
        """Index of an item id.

        Raises:
            InputError: If the id is not in the catalogue.
        """
        found = self.find(asin) if isinstance(asin, str) else -1
        if found < 0:
            raise InputError(f"unknown item {asin!r}: not in the catalogue")
        return found

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
        out = []
        for number, item in enumerate(items, start=1):
            key = str(item).strip()
            title = key.removeprefix(TITLE_PREFIX).strip()
            if not title:
                raise InputError(f"history item {number} is empty; give an item id or a catalogue title")
            if self.find(key) >= 0:
                out.append(key)
                continue
            row = self.find_title(title)
            if row < 0:
                raise InputError(f"unknown item {key[:80]!r}: neither an item id nor a catalogue title")
            out.append(self.asins[row])
        return out


class ItemTexts(Mapping[str, int]):
    """Item text as embedded (``prefix + title``) -> position of the first item with that title, answered by the
    catalogue's title lookup: a view that builds nothing (a dict of a million texts would cost ~1 s and ~150 MB
    at every start).

    Args:
        catalog: The catalogue.
        prefix: What every item text starts with (``"Title: "``).
    """

    def __init__(self, catalog: Catalog, prefix: str) -> None:
        self.catalog, self.prefix = catalog, prefix

    def __getitem__(self, text: str) -> int:
        row = self.catalog.find_title(text[len(self.prefix):]) if isinstance(text, str) and \
            text.startswith(self.prefix) else -1
        if row < 0:
            raise KeyError(text)
        return row

    def __contains__(self, text: object) -> bool:
        return isinstance(text, str) and text.startswith(self.prefix) and \
            self.catalog.find_title(text[len(self.prefix):]) >= 0

    def __iter__(self) -> Iterator[str]:
        seen: set[str] = set()
        for title in self.catalog.titles:
            if title not in seen:
                seen.add(title)
                yield self.prefix + title

    def __len__(self) -> int:
        return sum(1 for _ in self)


def as_string_array(strings: Sequence[str]) -> StringArray:
    """``strings`` as a :class:`StringArray` (itself if it already is one)."""
    if isinstance(strings, StringArray):
        return strings
    bad = next((s for s in strings if not isinstance(s, str)), None)
    if bad is not None:
        raise InputError(f"catalogue ids and titles must be strings, got {type(bad).__name__} {bad!r}")
    return StringArray.from_strings(strings)


def check_items(
    asins: Sequence[str], titles: Sequence[str], name: str, unit: str, numbers: Sequence[int] | None = None
) -> KeyLookup:
    """Refuse empty ids, empty titles and duplicate ids, naming the rows.

    Args:
        asins: Item ids.
        titles: Their titles.
        name: What holds them, for the message (a file name or "catalogue").
        unit: "line" or "row".
        numbers: The line/row number of each item (default: 1, 2, ...).

    Returns:
        The id lookup, built while looking for duplicates.

    Raises:
        InputError: Naming the first empty field, or up to ``MAX_LISTED`` duplicate ids with their rows.
    """
    asins, titles = as_string_array(asins), as_string_array(titles)
    number_of = (lambda i: int(numbers[i])) if numbers is not None else (lambda i: i + 1)
    blank = _first_blank(asins, titles)
    if blank is not None:
        row, field = blank
        where = f"{unit} {number_of(row)}"
        if field == "asin":
            raise InputError(f"{name}: {where} has an empty 'asin'; every item needs an id")
        raise InputError(f"{name}: {where} (asin {asins[row]!r}) has an empty 'title'; every item needs a title")
    lookup = KeyLookup.build(asins)
    duplicates = lookup.duplicates(asins)
    if duplicates:
        shown = "; ".join(
            f"{asins[rows[0]]!r} ({unit}s {', '.join(str(number_of(r)) for r in rows)})"
            for rows in duplicates[:MAX_LISTED]
        )
        more = f"; and {len(duplicates) - MAX_LISTED} more" if len(duplicates) > MAX_LISTED else ""
        raise InputError(f"{name}: {len(duplicates)} duplicate item id(s): {shown}{more}; ids must be unique")
    return lookup


def _first_blank(asins: StringArray, titles: StringArray) -> tuple[int, str] | None:
    """Row and field of the first id or title that is empty or only whitespace, or None."""
    row = 0
    for asin_chunk, title_chunk in zip(asins.chunks(), titles.chunks(), strict=True):
        for asin, title in zip(asin_chunk, title_chunk, strict=True):
            if not asin.strip():
                return row, "asin"
            if not title.strip():
                return row, "title"
            row += 1
    return None


def load_catalog(path: Path) -> Catalog:
    """Read ``{"asin", "title"}`` rows from JSONL(.gz) into compact columns.

    Raises:
        InputError: If the file is unreadable, a row lacks a field, has an empty id or title, or an id repeats
            (naming the line numbers).
    """
    asins, titles, lines = StringArrayBuilder(), StringArrayBuilder(), array("q")
    for number, row in read_jsonl_lines(path):
        asin, title = row.get("asin"), row.get("title")
        if not isinstance(asin, str) or not isinstance(title, str):
            raise InputError(f"{path}: line {number} needs string fields 'asin' and 'title'")
        asins.add(asin)
        titles.add(title)
        lines.append(number)
    if not lines:
        raise InputError(f"{path}: no items")
    asin_array, title_array = asins.build(), titles.build()
    lookup = check_items(asin_array, title_array, str(path), "line", lines)
    logger.info("catalogue %s: %d items", path, len(lines))
    return Catalog.trusted(asin_array, title_array, asin_lookup=lookup)


def save_catalog(catalog: Catalog, path: Path) -> None:
    """Write the catalogue as JSONL(.gz: gzip level 6, a third faster than 9 for 1% more bytes), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        raw: IO[bytes] = gzip.GzipFile(tmp, "wb", compresslevel=GZIP_LEVEL, mtime=0) if path.suffix == ".gz" \
            else open(tmp, "wb")
        with raw:
            for asin_chunk, title_chunk in zip(catalog.asins.chunks(), catalog.titles.chunks(), strict=True):
                raw.write("".join(json.dumps({"asin": a, "title": t}, ensure_ascii=False) + "\n"
                                  for a, t in zip(asin_chunk, title_chunk, strict=True)).encode("utf-8"))


def save_catalog_arrays(catalog: Catalog, path: Path, source_path: Path | None = None) -> None:
    """Write the compact columns and both lookups to ``path`` (:mod:`gloss.edge.arrays` layout), atomically.

    Args:
        catalog: The catalogue.
        path: The file (``catalog.bin`` in a bundle).
        source_path: The JSONL written for the same catalogue; its SHA-256 is recorded, so that a compact file
            left beside another JSONL is noticed (:func:`open_catalog`).
    """
    from gloss.edge.trie import catalog_fingerprint  # the trie owns what a catalogue fingerprint is

    asin_blob, asin_offsets = catalog.asins.compact()
    title_blob, title_offsets = catalog.titles.compact()
    asin_lookup, title_lookup = catalog.asin_lookup(), catalog.title_lookup()
    meta = {
        "format": ARRAYS_FORMAT, "num_items": len(catalog), "key_hash": KEY_HASH,
        "titles_sha256": catalog_fingerprint(catalog.titles),
        "source_sha256": sha256_file(source_path) if source_path is not None else None,
    }  # fmt: skip
    save_arrays(path, {
        "asin_blob": asin_blob, "asin_offsets": asin_offsets, "title_blob": title_blob, "title_offsets": title_offsets,
        "asin_hashes": asin_lookup.hashes, "asin_rows": asin_lookup.rows, "asin_fence": asin_lookup.fence(),
        "title_hashes": title_lookup.hashes, "title_rows": title_lookup.rows, "title_fence": title_lookup.fence(),
    }, meta)  # fmt: skip


def open_catalog_arrays(path: Path, source_sha256: str | None = None) -> Catalog:
    """Map a file written by :func:`save_catalog_arrays` (O(1): rows are read when asked for).

    Args:
        path: The compact catalogue file.
        source_sha256: If given, the SHA-256 its JSONL must have (as the bundle manifest records it).

    Raises:
        InputError: If the file is missing, truncated, of another format or inconsistent, or was made from
            another JSONL than ``source_sha256`` names.
    """
    opened = open_array_file(Path(path), "compact catalogue", ARRAYS_HINT)
    arrays, meta = opened.arrays, opened.meta
    if meta.get("format") != ARRAYS_FORMAT or meta.get("key_hash") != KEY_HASH:
        raise InputError(f"{path}: compact catalogue format {meta.get('format')!r} / {meta.get('key_hash')!r}, "
                         f"expected {ARRAYS_FORMAT} / {KEY_HASH}; {ARRAYS_HINT}")
    if source_sha256 is not None and meta.get("source_sha256") != source_sha256:
        raise InputError(f"{path}: built from another catalogue file than the bundle's; {ARRAYS_HINT}")
    num = meta.get("num_items")
    shapes_ok = isinstance(num, int) and num > 0 and all(name in arrays for name in _ARRAY_NAMES) and all(
        len(arrays[f"{c}_offsets"]) == num + 1 and len(arrays[f"{c}_hashes"]) == len(arrays[f"{c}_rows"]) == num
        and int(arrays[f"{c}_offsets"][-1]) == len(arrays[f"{c}_blob"]) for c in ("asin", "title")
    )
    if not shapes_ok:
        raise InputError(f"{path}: compact catalogue arrays do not fit together; {ARRAYS_HINT}")
    # single rows and lookups read the file (a few KB each) rather than map pages around every access
    columns, lookups = {}, {}
    for c in ("asin", "title"):
        columns[c] = StringArray(arrays[f"{c}_blob"], arrays[f"{c}_offsets"],
                                 source=(opened, f"{c}_blob", f"{c}_offsets"))
        fence = np.array(arrays[f"{c}_fence"]) if f"{c}_fence" in arrays else None  # 16 KB a million items
        source = (opened, fence, f"{c}_hashes", f"{c}_rows") if fence is not None else None
        lookups[c] = KeyLookup(arrays[f"{c}_hashes"], arrays[f"{c}_rows"], source)
    columns["title"].fingerprint = meta.get("titles_sha256")
    return Catalog.trusted(columns["asin"], columns["title"], lookups["asin"], lookups["title"])


_ARRAY_NAMES = tuple(f"{c}_{a}" for c in ("asin", "title") for a in ("blob", "offsets", "hashes", "rows"))


def open_catalog(path: Path, arrays_path: Path | None = None, source_sha256: str | None = None) -> Catalog:
    """The catalogue of a bundle: its compact file when there is one, else the JSONL parsed and checked.

    Args:
        path: The ``{"asin", "title"}`` JSONL(.gz).
        arrays_path: Its compact twin (:func:`save_catalog_arrays`), or None (a bundle built before it existed).
        source_sha256: The JSONL's SHA-256 from the manifest, checked against the compact file's record.

    Raises:
        InputError: As :func:`load_catalog` or :func:`open_catalog_arrays`.
    """
    if arrays_path is None:
        return load_catalog(path)
    return open_catalog_arrays(arrays_path, source_sha256)

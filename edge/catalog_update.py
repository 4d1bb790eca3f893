"""Changing a catalogue at the cost of the change: drop and append rows of compact columns, append JSONL rows.

``gloss-export update`` adds a thousand items to a million-item catalogue; rebuilding its columns, its lookups and its
gzipped JSONL from Python strings would cost seconds. These reuse what is there: the kept text is copied run by run,
the kept rows' lookups are renumbered, only the new items are hashed, and new JSONL rows become one more gzip member.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gloss.edge.catalog import MAX_LISTED, Catalog, as_string_array, check_items
from gloss.edge.errors import InputError
from gloss.edge.files import atomic_path, write_jsonl_atomic
from gloss.edge.strings import concat, take_rows

logger = logging.getLogger(__name__)


def subset_and_extend(catalog: Catalog, keep: np.ndarray, asins: Sequence[str], titles: Sequence[str]) -> Catalog:
    """The catalogue with only the rows where ``keep`` is True, then new items appended.

    Costs a copy of the kept text and the hashing of the new items only: the kept rows' lookups are renumbered,
    not rebuilt.

    Args:
        catalog: The current catalogue.
        keep: (len(catalog),) bool, False for a retired item.
        asins: New ids, appended in order.
        titles: Their titles.

    Raises:
        InputError: If a new id or title is empty, a new id repeats or is already kept, or nothing remains.
    """
    keep = np.asarray(keep, dtype=bool)
    if len(keep) != len(catalog):
        raise InputError(f"keep mask of {len(keep)} rows for a catalogue of {len(catalog)}")
    if not keep.any() and not len(asins):
        raise InputError("catalogue is empty")
    new_asins, new_titles = as_string_array(list(asins)), as_string_array(list(titles))
    if len(new_asins) != len(new_titles):
        raise InputError(f"{len(new_asins)} new ids but {len(new_titles)} titles")
    if len(new_asins):
        check_items(new_asins, new_titles, "new items", "row")
    kept_rows = np.flatnonzero(keep)
    old_to_new = np.full(len(catalog), -1, dtype=np.int64)
    old_to_new[kept_rows] = np.arange(len(kept_rows))
    asin_lookup = catalog.asin_lookup().renumbered(old_to_new, new_asins)
    title_lookup = catalog.title_lookup().renumbered(old_to_new, new_titles)
    result = Catalog.trusted(concat(take_rows(catalog.asins, kept_rows), new_asins),
                             concat(take_rows(catalog.titles, kept_rows), new_titles), asin_lookup, title_lookup)
    duplicates = asin_lookup.duplicates(result.asins)
    if duplicates:
        shown = ", ".join(repr(result.asins[rows[0]]) for rows in duplicates[:MAX_LISTED])
        raise InputError(f"{len(duplicates)} new item id(s) already in the catalogue: {shown}")
    return result


def append_catalog(source_path: Path, out_path: Path, asins: Sequence[str], titles: Sequence[str]) -> None:
    """Write ``source_path``'s rows followed by new ones to ``out_path``, atomically, without re-encoding the old
    rows: a ``.gz`` file gets one more gzip member (readers take concatenated members as one stream)."""
    with atomic_path(Path(out_path)) as tmp:
        shutil.copyfile(source_path, tmp)
        new = Path(str(tmp) + ".new" + (".gz" if Path(out_path).suffix == ".gz" else ""))
        try:
            write_jsonl_atomic(new, ({"asin": a, "title": t} for a, t in zip(asins, titles, strict=True)))
            with open(tmp, "ab") as handle, open(new, "rb") as extra:
                shutil.copyfileobj(extra, handle)
        finally:
            new.unlink(missing_ok=True)

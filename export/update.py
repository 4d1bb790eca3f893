"""Living catalogues: add and retire items in a bundle without retraining anything or re-embedding old titles.

``update_bundle`` embeds only the new titles with the bundle's own ONNX embedder, appends their vectors as a new
index segment, drops retired items from everything that can return them (catalogue, index, co-purchase successors
and popularity, the constrained-decoding trie when the bundle has one), keeps the statistics of the remaining
items, and swaps in a new bundle folder with a new manifest (catalogue version, counts, checksums) in which every
unchanged file is a hard link of the old one (:mod:`gloss.export.rewrite`): the index's earlier segments and
graph, the embedder and the generator are neither copied nor hashed again. An update that only adds items keeps
the co-purchase file too: the manifest counts the items appended after its rows (``fusion.appended_items``), which
load with empty rows and zero popularity (:meth:`gloss.edge.bundle.Bundle.open_copurchase`); only a removal
rewrites the statistics.

Positions stay compact (row ``i`` of the catalogue is index position ``i``): kept items keep their order, new
items are appended, so an update gives the same catalogue, vectors and exact search results as a full rebuild
from the updated ``catalog.jsonl.gz``; retired items' vector rows stay on disk, listed as removed, until
:func:`gloss.export.index.update_index` compacts them.

New items have no co-purchase row and zero popularity; fusion ranks them through its text paths and its
cold-start prior (see :mod:`gloss.edge.fusion`).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gloss.edge.bundle import (
    CATALOG_ARRAYS_FILE,
    CATALOG_FILE,
    COPURCHASE_FILE,
    GENERATOR_FILE,
    ITEM_TEXT,
    TRIE_FILE,
    Bundle,
    load_bundle,
)
from gloss.edge.catalog import Catalog, save_catalog, save_catalog_arrays
from gloss.edge.catalog_update import append_catalog, subset_and_extend
from gloss.edge.copurchase import CoPurchase
from gloss.edge.errors import InputError
from gloss.edge.files import read_jsonl
from gloss.edge.prompt import MAX_TITLE_WORDS, clean_title
from gloss.export.bundle import embed_catalog
from gloss.export.embedder import EmbedRun, open_run_embedder
from gloss.export.index import update_index
from gloss.export.rewrite import rewrite_bundle

logger = logging.getLogger(__name__)

MAX_SHOWN = 5  # ids named in one error message


@dataclass(frozen=True)
class UpdateResult:
    """What an update did.

    Attributes:
        bundle_dir: The rewritten bundle.
        num_added: Items appended.
        num_removed: Items dropped.
        num_items: Catalogue size afterwards.
        version: Catalogue version written to the manifest (1 = as built, +1 per update).
    """

    bundle_dir: Path
    num_added: int
    num_removed: int
    num_items: int
    version: int


def read_new_items(path: Path) -> tuple[list[str], list[str]]:
    """Read ``{"asin", "title"}`` rows (the catalogue format) to add; whitespace in titles is normalised.

    Raises:
        InputError: On a row without string fields, an empty id, an empty title, a title over
            ``MAX_TITLE_WORDS`` words, a repeated id, or an empty file.
    """
    asins: list[str] = []
    titles: list[str] = []
    first_row: dict[str, int] = {}
    for number, row in enumerate(read_jsonl(path), start=1):
        asin, title = row.get("asin"), row.get("title")
        if not isinstance(asin, str) or not isinstance(title, str):
            raise InputError(f"{path}: row {number} needs string fields 'asin' and 'title'")
        asin = asin.strip()
        if not asin:
            raise InputError(f"{path}: row {number} has an empty 'asin'")
        if asin in first_row:
            raise InputError(f"{path}: row {number} repeats item id {asin!r} (first on row {first_row[asin]})")
        num_words = len(title.split())
        if num_words == 0:
            raise InputError(f"{path}: row {number} ({asin}) has an empty title")
        if num_words > MAX_TITLE_WORDS:
            raise InputError(
                f"{path}: row {number} ({asin}) has a title of {num_words} words; the catalogue rule is at most "
                f"{MAX_TITLE_WORDS} words (the length the model was trained on); shorten it"
            )
        first_row[asin] = number
        asins.append(asin)
        titles.append(clean_title(title))
    if not asins:
        raise InputError(f"{path}: no items to add")
    return asins, titles


def read_removed_ids(path: Path) -> list[str]:
    """Read item ids to remove: one per line; blank lines and lines starting with ``#`` are skipped.

    Raises:
        InputError: If the file is missing, not UTF-8 text, or names no id.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file; give a text file with one item id per line")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start}); give one item id per line") from None
    ids = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not ids:
        raise InputError(f"{path}: no item ids to remove")
    return list(dict.fromkeys(ids))


def _shown(ids: list[str]) -> str:
    more = f" and {len(ids) - MAX_SHOWN} more" if len(ids) > MAX_SHOWN else ""
    return ", ".join(repr(i) for i in ids[:MAX_SHOWN]) + more


def plan_catalog(catalog: Catalog, add_asins: list[str], add_titles: list[str], remove: list[str]) -> tuple[
    Catalog, np.ndarray
]:
    """The updated catalogue (kept items in order, then new ones) and the old -> new position map (-1: removed).

    An id may be removed and added in one update (its title is replaced; its statistics are dropped).

    Raises:
        InputError: If a removed id is unknown, an added id already exists, or nothing would remain.
    """
    unknown = [asin for asin in remove if asin not in catalog]
    if unknown:
        raise InputError(f"cannot remove {_shown(unknown)}: not in the catalogue ({len(catalog)} items)")
    removed = set(remove)
    existing = [asin for asin in add_asins if asin in catalog and asin not in removed]
    if existing:
        raise InputError(
            f"cannot add {_shown(existing)}: already in the catalogue; to change an item, --remove it and --add it"
        )
    keep = np.ones(len(catalog), dtype=bool)
    keep[[catalog.position(asin) for asin in removed]] = False
    if not keep.any() and not add_asins:
        raise InputError("the update would leave the catalogue empty")
    old_to_new = np.full(len(catalog), -1, dtype=np.int64)
    old_to_new[keep] = np.arange(int(keep.sum()))
    return subset_and_extend(catalog, keep, add_asins, add_titles), old_to_new


def remap_copurchase(copurchase: CoPurchase, old_to_new: np.ndarray, num_items: int) -> CoPurchase:
    """Co-purchase statistics over the updated catalogue.

    Rows and successor entries of removed items are dropped, the rest keep their counts under their new
    positions (so P(next | item) is renormalised over the successors that remain), and new items get an
    empty row and zero popularity. Positions are renumbered monotonically, so every row keeps its order.

    Args:
        copurchase: Statistics over the old catalogue.
        old_to_new: Old position -> new position, -1 for a removed item.
        num_items: Size of the updated catalogue (kept + new items).
    """
    if len(old_to_new) != copurchase.num_items:
        raise InputError(
            f"co-purchase statistics cover {copurchase.num_items} items, the catalogue {len(old_to_new)}"
        )
    rows = np.repeat(np.arange(copurchase.num_items), np.diff(copurchase.indptr))
    new_rows, new_cols = old_to_new[rows], old_to_new[copurchase.indices]
    keep = (new_rows >= 0) & (new_cols >= 0)
    indptr = np.zeros(num_items + 1, dtype=np.int64)
    np.cumsum(np.bincount(new_rows[keep], minlength=num_items), out=indptr[1:])
    popularity = np.zeros(num_items, dtype=np.float32)
    kept = old_to_new >= 0
    popularity[old_to_new[kept]] = copurchase.popularity[kept]
    return CoPurchase(
        indptr=indptr, indices=new_cols[keep].astype(np.int32), data=copurchase.data[keep].astype(np.float32),
        popularity=popularity, window=copurchase.window, decay=copurchase.decay,
    )  # fmt: skip


def _generator_section(bundle: Bundle, tmp: Path, catalog: Catalog) -> dict[str, Any] | None:
    """The generator section with its catalogue trie rebuilt for the new titles (None: no trie to rebuild).

    The trie's own builder (:func:`gloss.export.trie.write_trie`, llama.cpp tokenising from the bundle's
    GGUF) keeps its format in one place; a retired title leaves the trie, so no constrained beam can write it.
    """
    generator = bundle.manifest.get("generator")
    if not isinstance(generator, dict) or not generator.get("trie"):
        return None
    from gloss.export.trie import write_trie  # lazy: loads llama.cpp

    # The GGUF itself is reused (linked into the new folder after this); the trie only needs its vocabulary.
    return {**generator, "trie": write_trie(catalog.titles, bundle.dir / GENERATOR_FILE, tmp / TRIE_FILE, TRIE_FILE)}


def update_bundle(
    bundle_dir: Path,
    add_path: Path | None = None,
    remove_path: Path | None = None,
    show_progress: bool | None = None,
    embed_run: EmbedRun | None = None,
) -> UpdateResult:
    """Add and/or remove catalogue items in a bundle, atomically, writing only the parts that change.

    All inputs are checked before anything is written; on any error the bundle is left as it was. The new
    folder hard-links every unchanged file of the old one (the embedder, the generator, the index's earlier
    vector segments and graph); new vectors go to a new segment (:func:`gloss.export.index.update_index`).

    Args:
        bundle_dir: An existing bundle (output of ``gloss-export bundle``).
        add_path: ``{"asin", "title"}`` JSONL(.gz) of new items.
        remove_path: Text file of item ids to retire, one per line.
        show_progress: Progress bar while embedding; None means on when logging is at INFO.
        embed_run: Threads, batch size and device for embedding the new titles.

    Returns:
        What changed.

    Raises:
        InputError: On a bad bundle, nothing to do, an existing id to add, an unknown id to remove, an empty
            or too long title, or an update that empties the catalogue.
    """
    if add_path is None and remove_path is None:
        raise InputError("nothing to update: pass --add ITEMS.jsonl and/or --remove IDS.txt")
    add_asins, add_titles = read_new_items(Path(add_path)) if add_path is not None else ([], [])
    remove = read_removed_ids(Path(remove_path)) if remove_path is not None else []
    bundle = load_bundle(Path(bundle_dir), verify=True)  # hashes only files changed since their last check
    catalog, old_to_new = plan_catalog(bundle.catalog, add_asins, add_titles, remove)
    # Opened (memory-mapped) before the embedding: statistics that cannot be read (a format-1 .npz of a bundle
    # from before issue 16) fail in one line before any work.
    stats = None
    if bundle.fusion_meta is not None and bundle.paths.copurchase is not None:
        stats = bundle.open_copurchase()  # over the whole catalogue (items appended before included)
    run = embed_run or EmbedRun()
    new_vectors = np.zeros((0, int(bundle.manifest["index"]["dim"])), dtype=np.float32)
    if add_asins:
        embedder = open_run_embedder(bundle.paths.embedder_dir, run)
        new_vectors = embed_catalog(Catalog(add_asins, add_titles), embedder, show_progress)
    version = int(bundle.manifest["catalog"].get("version", 1)) + 1
    index = bundle.open_index()
    known: dict[str, Any] = {}

    def write(tmp: Path, _: Bundle) -> dict[str, Any]:
        write_catalog(bundle, tmp, catalog, add_asins, add_titles, appended=not remove)
        index_section, _dropped = update_index(index, tmp, np.flatnonzero(old_to_new < 0), new_vectors, version,
                                               run, known)
        history = list(bundle.manifest["catalog"].get("updates", []))
        history.append({
            "version": version, "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "added": len(add_asins), "removed": len(remove),
            "add_file": Path(add_path).name if add_path else None,
            "remove_file": Path(remove_path).name if remove_path else None,
        })  # fmt: skip
        sections: dict[str, Any] = {
            "catalog": {**bundle.manifest["catalog"], "arrays": CATALOG_ARRAYS_FILE, "num_items": len(catalog),
                        "version": version, "updates": history},
            "index": {**index_section, "item_text": bundle.manifest["index"].get("item_text", ITEM_TEXT)},
        }
        if stats is not None:
            fusion = {key: value for key, value in bundle.fusion_meta.items() if key != "appended_items"}
            if remove:
                updated = remap_copurchase(stats, old_to_new, len(catalog))
                updated.save(tmp / COPURCHASE_FILE)
                sections["fusion"] = {**fusion, "nnz": updated.nnz, "remapped_to_catalog_version": version}
            else:  # only additions: the file stays (hard-linked); the new items get empty rows at load
                appended = int(bundle.fusion_meta.get("appended_items", 0)) + len(add_asins)
                sections["fusion"] = {**fusion, "appended_items": appended}
        generator = _generator_section(bundle, tmp, catalog)
        if generator is not None:
            sections["generator"] = generator
        return sections

    rewrite_bundle(bundle, write, known=known)
    logger.info("bundle %s: +%d -%d items -> %d (catalogue version %d)", bundle_dir, len(add_asins), len(remove),
                len(catalog), version)
    return UpdateResult(Path(bundle_dir), len(add_asins), len(remove), len(catalog), version)


def write_catalog(bundle: Bundle, tmp: Path, catalog: Catalog, add_asins: list[str], add_titles: list[str],
                  appended: bool) -> None:
    """The updated catalogue's JSONL (old rows copied as bytes when items were only added) and compact file."""
    if appended and bundle.paths.catalog.name == CATALOG_FILE:
        append_catalog(bundle.paths.catalog, tmp / CATALOG_FILE, add_asins, add_titles)
    else:
        save_catalog(catalog, tmp / CATALOG_FILE)
    save_catalog_arrays(catalog, tmp / CATALOG_ARRAYS_FILE, tmp / CATALOG_FILE)

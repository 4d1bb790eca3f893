"""Data preparation: raw Amazon 2014 files or JSONL catalogue + histories -> the paper's splits.

Outputs in ``out_dir``: ``items.jsonl.gz`` ``{asin, title}``, ``sequences.jsonl.gz`` ``{user, items}``,
``{train,validation,test}.jsonl.gz`` ``{user, history: [asin], target: asin, num_interactions}`` and
``gloss_manifest.json`` (written last: its presence marks a finished run).
"""

from __future__ import annotations

import ast
import gzip
import json
import logging
import os
import re
import shutil
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gloss.edge.catalog import Catalog, load_catalog, save_catalog
from gloss.edge.errors import GlossError, InputError
from gloss.edge.files import atomic_path, sha256_file, write_json_atomic, write_jsonl_atomic
from gloss.edge.outdir import atomic_dir, check_replaceable
from gloss.edge.prompt import MAX_TITLE_WORDS, clean_title
from gloss.edge.splits import (
    DEFAULT_SEED,
    MIN_SEQUENCE_LENGTH,
    VALIDATION_FRACTION,
    Split,
    UserSequence,
    load_sequences,
    make_examples,
    validation_users,
)

logger = logging.getLogger(__name__)

MANIFEST_NAME = "gloss_manifest.json"
RAW_DIR = "raw"  # downloads of --category, kept inside the output folder
SPLIT_FILES = {split: f"{split.value}.jsonl.gz" for split in Split}
RAW_URL = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/{name}"
# Short names for the paper's three categories; any other 2014 category name is used as given.
CATEGORY_ALIASES = {"beauty": "Beauty", "toys": "Toys_and_Games", "sports": "Sports_and_Outdoors"}
_ASIN_RE = re.compile(r"""['"]asin['"]\s*:\s*['"]([^'"]+)['"]""")


@dataclass(frozen=True)
class PrepareConfig:
    """Resolved inputs and options of one ``prepare_data`` run (recorded in the manifest)."""

    mode: str
    items_path: str | None
    sequences_path: str | None
    reviews_path: str | None
    meta_path: str | None
    category: str | None
    validation_fraction: float
    seed: int
    max_title_words: int
    drop_unknown: bool


def raw_file_names(category: str) -> tuple[str, str]:
    """File names of a 2014 category's 5-core reviews and its metadata."""
    name = CATEGORY_ALIASES.get(category.lower(), category)
    return f"reviews_{name}_5.json.gz", f"meta_{name}.json.gz"


def download_raw(category: str, raw_dir: Path) -> tuple[Path, Path]:
    """Fetch a category's raw 2014 files from SNAP/UCSD into ``raw_dir`` (kept if already there).

    Raises:
        GlossError: If a download fails.
    """
    paths = []
    for name in raw_file_names(category):
        path = Path(raw_dir) / name
        if not path.is_file():
            url = RAW_URL.format(name=name)
            logger.info("downloading %s", url)
            try:
                with atomic_path(path) as tmp, urllib.request.urlopen(url, timeout=60) as response:
                    with open(tmp, "wb") as handle:
                        while chunk := response.read(1 << 20):
                            handle.write(chunk)
            except (urllib.error.URLError, OSError) as exc:
                raise GlossError(
                    f"could not download {url}: {exc}; fetch it by hand and pass --reviews/--meta"
                ) from exc
        paths.append(path)
    return paths[0], paths[1]


def read_meta_titles(meta_path: Path, wanted: set[str], max_title_words: int) -> dict[str, str]:
    """Titles of the ``wanted`` items from a 2014 metadata file (one Python dict literal per line).

    Items without a (non-empty) title are left out.

    Raises:
        InputError: If a needed line is not a dict literal with an ``asin``.
    """
    titles: dict[str, str] = {}
    for number, line in enumerate(_raw_lines(meta_path), start=1):
        if not line.strip():
            continue
        hint = _ASIN_RE.search(line)
        if hint is not None and hint.group(1) not in wanted:
            continue  # parsing every literal is slow; skip lines for items nobody reviewed
        try:
            row = ast.literal_eval(line)
        except (ValueError, SyntaxError) as exc:
            raise InputError(f"{meta_path}:{number}: not a Python dict literal ({exc})") from exc
        except (RecursionError, MemoryError):  # the parser's limits: MemoryError is its stack overflowing
            raise InputError(f"{meta_path}:{number}: not a Python dict literal (nested too deeply)") from None
        if not isinstance(row, dict) or not isinstance(row.get("asin"), str):
            raise InputError(f"{meta_path}:{number}: expected a dict with an 'asin'")
        title = clean_title(row.get("title") or "", max_title_words)
        if row["asin"] in wanted and title:
            titles[row["asin"]] = title
    return titles


def read_reviews(reviews_path: Path) -> dict[str, list[str]]:
    """Each reviewer's items in time order (ties keep file order) from a 2014 reviews file.

    Raises:
        InputError: If a line is not a JSON object with reviewerID, asin and unixReviewTime.
    """
    events: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    for number, line in enumerate(_raw_lines(reviews_path), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            events[str(row["reviewerID"])].append((int(row["unixReviewTime"]), number, str(row["asin"])))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise InputError(
                f"{reviews_path}:{number}: expected JSON with reviewerID, asin, unixReviewTime ({exc})"
            ) from exc
    if not events:
        raise InputError(f"{reviews_path}: no reviews")
    return {user: [asin for _, _, asin in sorted(rows)] for user, rows in events.items()}


def _raw_lines(path: Path) -> Iterator[str]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            yield from handle
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot be read: {exc}") from exc


def sequences_from_raw(
    reviews_path: Path, meta_path: Path, max_title_words: int = MAX_TITLE_WORDS
) -> tuple[Catalog, list[UserSequence]]:
    """Build the catalogue and the users' sequences from raw 2014 reviews + metadata.

    Items without a title are dropped from every sequence; users left with fewer than 3 items are dropped.
    The catalogue holds every reviewed item with a title, sorted by ASIN; sequences are sorted by user.
    """
    by_user = read_reviews(reviews_path)
    reviewed = {asin for items in by_user.values() for asin in items}
    titles = read_meta_titles(meta_path, reviewed, max_title_words)
    logger.info("raw: %d users, %d items, %d without a title", len(by_user), len(reviewed),
                len(reviewed - titles.keys()))
    asins = tuple(sorted(titles))
    if not asins:
        raise InputError(f"{meta_path}: none of the reviewed items has a title")
    catalog = Catalog(asins, tuple(titles[a] for a in asins))
    sequences = []
    for user in sorted(by_user):
        items = tuple(a for a in by_user[user] if a in titles)
        if len(items) >= MIN_SEQUENCE_LENGTH:
            sequences.append(UserSequence(user, items))
    return catalog, sequences


def sequences_from_jsonl(
    items_path: Path, sequences_path: Path, max_title_words: int = MAX_TITLE_WORDS, drop_unknown: bool = False
) -> tuple[Catalog, list[UserSequence]]:
    """Read a custom catalogue and histories; cut titles; keep users with at least 3 items.

    An item with an empty title counts as untitled and is dropped from the sequences (as in the raw path).

    Raises:
        InputError: If a sequence names an item that is not in the catalogue (unless ``drop_unknown``).
    """
    raw = load_catalog(items_path)
    cleaned = [(a, clean_title(t, max_title_words)) for a, t in zip(raw.asins, raw.titles, strict=True)]
    untitled = {a for a, t in cleaned if not t}
    kept = [(a, t) for a, t in cleaned if t]
    if not kept:
        raise InputError(f"{items_path}: no item has a title")
    catalog = Catalog(tuple(a for a, _ in kept), tuple(t for _, t in kept))
    sequences = []
    for seq in load_sequences(sequences_path):
        items = []
        for asin in seq.items:
            if asin in catalog:
                items.append(asin)
            elif asin not in untitled and not drop_unknown:
                raise InputError(
                    f"{sequences_path}: user {seq.user}: item {asin!r} is not in {items_path}; "
                    "add it to the catalogue or pass --drop-unknown"
                )
        if len(items) >= MIN_SEQUENCE_LENGTH:
            sequences.append(UserSequence(seq.user, tuple(items)))
    if not sequences:
        raise InputError(f"{sequences_path}: no user has {MIN_SEQUENCE_LENGTH} or more known, titled items")
    return catalog, sequences


def split_rows(
    sequences: list[UserSequence], validation_fraction: float = VALIDATION_FRACTION, seed: int = DEFAULT_SEED
) -> dict[Split, list[dict[str, Any]]]:
    """The three splits as rows; num_interactions = len(history) + 1, as ``gloss-edge eval`` counts."""
    held_out = validation_users([s.user for s in sequences], validation_fraction, seed)
    return {
        split: [
            {"user": ex.user, "history": list(ex.history), "target": ex.target,
             "num_interactions": len(ex.history) + 1}
            for ex in make_examples(sequences, split, held_out)
        ]
        for split in Split
    }


def prepare_data(
    out_dir: Path,
    items_path: Path | None = None,
    sequences_path: Path | None = None,
    reviews_path: Path | None = None,
    meta_path: Path | None = None,
    category: str | None = None,
    download: bool = False,
    validation_fraction: float = VALIDATION_FRACTION,
    seed: int = DEFAULT_SEED,
    max_title_words: int = MAX_TITLE_WORDS,
    drop_unknown: bool = False,
) -> Path:
    """Prepare the catalogue, sequences and the paper's train/validation/test splits.

    Give either ``items_path`` + ``sequences_path`` (JSONL), or ``reviews_path`` + ``meta_path`` (raw 2014
    files), or ``category`` (raw files looked up in ``out_dir/raw``, fetched there with ``download=True``).

    Args:
        out_dir: Output folder: new, empty, or an earlier prepare output, which is replaced whole (built beside
            it and swapped in; its ``raw/`` download folder is kept).
        items_path: ``{asin, title}`` JSONL(.gz).
        sequences_path: ``{user, items: [asin]}`` JSONL(.gz), items in time order.
        reviews_path: ``reviews_<Cat>_5.json.gz``.
        meta_path: ``meta_<Cat>.json.gz``.
        category: 2014 category (``Beauty``, ``Toys_and_Games``, ... or ``beauty``/``toys``/``sports``).
        download: Fetch the category's raw files if missing.
        validation_fraction: Share of users that also get a validation example.
        seed: Seed of the validation user draw.
        max_title_words: Titles are cut to this many words.
        drop_unknown: Drop sequence items missing from ``items_path`` instead of failing.

    Returns:
        ``out_dir``.

    Raises:
        InputError: For missing/contradictory inputs, malformed files, or an output folder that is not a prepare
            output or cannot be created.
        GlossError: If a download fails.
    """
    out_dir = Path(out_dir)
    if not 0 < validation_fraction < 1:
        raise InputError(f"--validation-fraction must be in (0, 1), got {validation_fraction}")
    if max_title_words < 1:
        raise InputError(f"--max-title-words must be >= 1, got {max_title_words}")
    check_prepare_dir(out_dir)  # before any download or slow read
    mode, inputs = _resolve_inputs(out_dir, items_path, sequences_path, reviews_path, meta_path, category,
                                   download)
    if mode == "jsonl":
        catalog, sequences = sequences_from_jsonl(inputs[0], inputs[1], max_title_words, drop_unknown)
    else:
        catalog, sequences = sequences_from_raw(inputs[0], inputs[1], max_title_words)
    splits = split_rows(sequences, validation_fraction, seed)
    jsonl_paths = [str(p) for p in inputs] if mode == "jsonl" else [None, None]
    raw_paths = [str(p) for p in inputs] if mode == "raw" else [None, None]
    config = PrepareConfig(mode, *jsonl_paths, *raw_paths, category, validation_fraction, seed,
                           max_title_words, drop_unknown)
    counts = {"items": len(catalog), "users": len(sequences),
              "interactions": sum(len(s.items) for s in sequences),
              **{split.value: len(rows) for split, rows in splits.items()}}
    files = ["items.jsonl.gz", "sequences.jsonl.gz", *SPLIT_FILES.values()]
    with atomic_dir(out_dir, marker=MANIFEST_NAME, ignore=(RAW_DIR,)) as tmp:
        _link_tree(out_dir / RAW_DIR, tmp / RAW_DIR)
        save_catalog(catalog, tmp / "items.jsonl.gz")
        write_jsonl_atomic(tmp / "sequences.jsonl.gz", ({"user": s.user, "items": list(s.items)} for s in sequences))
        for split, rows in splits.items():
            write_jsonl_atomic(tmp / SPLIT_FILES[split], rows)
        write_json_atomic(tmp / MANIFEST_NAME, {
            "stage": "prepare", "gloss_version": gloss_version(), "config": asdict(config), "counts": counts,
            "inputs": {str(p): sha256_file(p) for p in inputs},
            "files": {name: sha256_file(tmp / name) for name in files},
        })
    logger.info("prepared %s: %s", out_dir, counts)
    return out_dir


def check_prepare_dir(out_dir: Path) -> None:
    """Raise InputError unless ``out_dir`` may take prepare's output: absent, empty, holding only its ``raw/``
    download folder, or an earlier prepare output (a folder of another stage or of the user is never replaced)."""
    out_dir = Path(out_dir)
    ancestor = out_dir.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():  # e.g. a/file/sub: fail now, not after reading the inputs
        raise InputError(f"{out_dir}: cannot create the folder there: {ancestor} is not a folder")
    manifest = out_dir / MANIFEST_NAME
    if out_dir.is_dir() and manifest.is_file():
        try:
            stage = json.loads(manifest.read_text(encoding="utf-8")).get("stage")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            stage = None
        if stage != "prepare":
            raise InputError(f"{out_dir}: holds the output of stage {stage!r}, not of gloss-train prepare; "
                             "choose a new or empty output folder")
    check_replaceable(out_dir, MANIFEST_NAME, ignore=(RAW_DIR,))


def _link_tree(source: Path, target: Path) -> None:
    """Hard-link every file of ``source`` into ``target`` (a copy where links are impossible); nothing if absent.

    Links keep a large download in place until the new folder is swapped in, and cost no space or time.
    """
    if not source.is_dir():
        return
    for path in sorted(source.rglob("*")):
        dest = target / path.relative_to(source)
        if path.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, dest)
        except OSError:
            shutil.copy2(path, dest)


def _resolve_inputs(
    out_dir: Path, items_path: Path | None, sequences_path: Path | None, reviews_path: Path | None,
    meta_path: Path | None, category: str | None, download: bool,
) -> tuple[str, tuple[Path, Path]]:
    jsonl = items_path is not None or sequences_path is not None
    raw = reviews_path is not None or meta_path is not None
    if jsonl and (raw or category):
        raise InputError("give either --items/--sequences or --reviews/--meta/--category, not both")
    if jsonl:
        if items_path is None or sequences_path is None:
            raise InputError("--items and --sequences go together: pass both JSONL files")
        return "jsonl", (Path(items_path), Path(sequences_path))
    if raw:
        if reviews_path is None or meta_path is None:
            raise InputError("--reviews and --meta go together: pass both raw 2014 files")
        return "raw", (Path(reviews_path), Path(meta_path))
    if category is None:
        raise InputError("no input: pass --items/--sequences, --reviews/--meta, or --category [--download]")
    raw_dir = out_dir / "raw"
    if download:
        return "raw", download_raw(category, raw_dir)
    paths = tuple(raw_dir / name for name in raw_file_names(category))
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"{', '.join(missing)}: not found; add --download to fetch category {category!r}")
    return "raw", (paths[0], paths[1])


def read_manifest(data_dir: Path, stage: str = "prepare") -> dict[str, Any]:
    """Read a stage's ``gloss_manifest.json``.

    Raises:
        InputError: If it is missing or from another stage.
    """
    path = Path(data_dir) / MANIFEST_NAME
    if not path.is_file():
        hint = "gloss-train prepare" if stage == "prepare" else "gloss-train fit"
        raise InputError(f"{data_dir}: no {MANIFEST_NAME}; pass the out dir of a finished `{hint}` run")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc.msg})") from exc
    if manifest.get("stage") != stage:
        raise InputError(f"{path}: stage is {manifest.get('stage')!r}, expected {stage!r}")
    return manifest


def gloss_version() -> str:
    """Installed version of the gloss distribution (``unknown`` when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gloss")
    except PackageNotFoundError:
        return "unknown"

"""The edge bundle: one folder with the catalogue, the embedder, the index and (optionally) the generator.

Layout (all paths relative to the bundle folder)::

    gloss_bundle.json        manifest, written last (see below)
    catalog.jsonl.gz         {"asin", "title"} rows; row i is index key i (gloss.edge.catalog)
    embedder/                model.onnx, tokenizer.json, gloss_embedder.json (gloss.edge.embed)
    index.usearch            item vectors of ``ITEM_TEXT`` per title (gloss.edge.index)
    generator/model.gguf     optional: the query generator for llama.cpp
    generator/trie.npz       with the generator: token trie of the catalogue's titles (gloss.edge.trie)
    fusion/copurchase.npz    optional: co-purchase statistics for the fusion re-ranker (gloss.edge.fusion)

The manifest records the format version, creation time, package versions, the prompt template, one section
per part and the size and SHA-256 of every file, so that a truncated or edited bundle fails to load with
one clear line instead of a crash deep inside onnxruntime or usearch.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

from gloss.edge.catalog import Catalog, load_catalog
from gloss.edge.embed import CONFIG_NAME, EMBEDDER_FILES, OnnxEmbedder
from gloss.edge.errors import InputError
from gloss.edge.files import (
    WRITER_FILE,
    make_temp_dir,
    read_text,
    release_temp_dir,
    sha256_file,
    write_json_atomic,
)
from gloss.edge.fusion import CoPurchase, FusionConfig, FusionRanker
from gloss.edge.index import METRIC, ItemIndex, read_index_header
from gloss.edge.manifest import check_manifest_shape, shown
from gloss.edge.prompt import ITEM_PREFIX, PROMPT_TEMPLATE
from gloss.edge.trie import TokenTrie, catalog_fingerprint

logger = logging.getLogger(__name__)

MANIFEST_NAME = "gloss_bundle.json"
FORMAT_VERSION = 1
CATALOG_FILE = "catalog.jsonl.gz"
EMBEDDER_DIR = "embedder"
INDEX_FILE = "index.usearch"
GENERATOR_FILE = "generator/model.gguf"
TRIE_FILE = "generator/trie.npz"  # manifest: generator.trie (rebuilt whenever the generator is)
COPURCHASE_FILE = "fusion/copurchase.npz"
OPTIONAL_SECTIONS = ("generator", "fusion")
ITEM_TEXT = ITEM_PREFIX + "{title}"  # items are embedded like the queries: "Title: <title>"
SECTIONS = ("catalog", "embedder", "index")
VERSIONED_PACKAGES = (
    "gloss", "numpy", "onnxruntime", "tokenizers", "usearch", "llama-cpp-python",
    "torch", "transformers", "optimum", "optimum-onnx", "onnx", "gguf",
)  # fmt: skip
BUILD_HINT = "rebuild it with gloss-export bundle"


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape a bundle (absent ones are left out)."""
    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


@contextmanager
def atomic_dir(path: Path, marker: str) -> Iterator[Path]:
    """Build a directory in a temp folder beside ``path``; swap it into place only if the block succeeds.

    An existing ``path`` is replaced only if it is empty or holds ``marker`` (the file that shows it was
    written by gloss), so a mistyped ``--out-dir`` never deletes an unrelated folder. Temp folders that an
    interrupted build of the same ``path`` left behind are removed first (only if their writer is gone),
    and the result follows the user's umask (:func:`gloss.edge.files.make_temp_dir`).

    Raises:
        InputError: If ``path`` is a file, or a non-empty folder without ``marker``.
    """
    path = Path(path)
    check_replaceable(path, marker)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(path)
    try:
        yield tmp
        check_replaceable(path, marker)
        release_temp_dir(tmp)
        _swap_dir(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def check_replaceable(path: Path, marker: str) -> None:
    """Raise InputError unless ``path`` is absent, an empty folder, or a folder holding ``marker``."""
    if path.is_file():
        raise InputError(f"{path}: is a file; give a folder path for the output")
    if path.is_dir() and any(path.iterdir()) and not (path / marker).is_file():
        raise InputError(
            f"{path}: folder exists and has no {marker}, so it was not written by gloss; "
            "choose a new or empty output folder"
        )


def _swap_dir(new: Path, path: Path) -> None:
    """Rename ``new`` onto ``path``, moving an old ``path`` aside first and deleting it afterwards."""
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
        os.replace(path, old / "content")
    try:
        os.replace(new, path)
    except OSError:
        if old is not None:
            os.replace(old / "content", path)  # put the previous version back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def file_entries(bundle_dir: Path) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of every file under ``bundle_dir`` except the manifest (and a temp folder's writer
    record), by POSIX relative path."""
    entries = {}
    for path in sorted(p for p in Path(bundle_dir).rglob("*") if p.is_file()):
        rel = path.relative_to(bundle_dir).as_posix()
        if rel not in (MANIFEST_NAME, WRITER_FILE):
            entries[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return entries


def write_manifest(bundle_dir: Path, sections: dict[str, Any]) -> dict[str, Any]:
    """Write ``gloss_bundle.json`` for the files now in ``bundle_dir``; call it after every other file.

    Args:
        bundle_dir: The (temporary) bundle folder.
        sections: ``catalog``, ``embedder``, ``index`` and optionally ``generator`` / ``fusion`` dicts.

    Returns:
        The manifest written.

    Raises:
        InputError: If a section is missing or not JSON-serialisable.
    """
    missing = [name for name in SECTIONS if name not in sections]
    if missing:
        raise InputError(f"bundle manifest: missing sections {missing}")
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "gloss_version": package_versions().get("gloss", "unknown"),
        "packages": package_versions(),
        "prompt_template": PROMPT_TEMPLATE,
        **{name: sections[name] for name in SECTIONS},
    }
    for name in OPTIONAL_SECTIONS:
        if sections.get(name) is not None:
            manifest[name] = sections[name]
    manifest["files"] = file_entries(bundle_dir)
    try:
        json.dumps(manifest)
    except (TypeError, ValueError) as exc:
        raise InputError(f"bundle manifest: a value is not JSON-serialisable ({exc})") from exc
    write_json_atomic(Path(bundle_dir) / MANIFEST_NAME, manifest)
    return manifest


@dataclass(frozen=True)
class BundlePaths:
    """Absolute paths of a bundle's parts."""

    catalog: Path
    embedder_dir: Path
    index: Path
    generator: Path | None
    copurchase: Path | None = None
    trie: Path | None = None


@dataclass(frozen=True)
class Bundle:
    """A loaded, checked bundle.

    Attributes:
        dir: The bundle folder.
        manifest: Parsed ``gloss_bundle.json``.
        catalog: The catalogue (row ``i`` is index key ``i``).
        paths: Where the parts are.
    """

    dir: Path
    manifest: dict[str, Any]
    catalog: Catalog
    paths: BundlePaths

    @property
    def name(self) -> str:
        """Catalogue name given at build time."""
        return str(self.manifest["catalog"].get("name") or self.dir.name)

    @property
    def generator_meta(self) -> dict[str, Any] | None:
        """The manifest's generator section, or None if the bundle has no generator."""
        return self.manifest.get("generator")

    def verify(self) -> None:
        """Check every file's SHA-256 against the manifest (for a bundle loaded with ``verify=False``).

        Raises:
            InputError: If a file is missing, truncated or changed.
        """
        _check_files(self.dir, self.manifest, verify=True)

    def open_embedder(self, num_threads: int | None = None) -> OnnxEmbedder:
        """Load the bundle's ONNX embedder."""
        return OnnxEmbedder.load(self.paths.embedder_dir, num_threads=num_threads)

    def open_trie(self) -> TokenTrie:
        """The token trie of the catalogue's titles, for catalogue-constrained beams of the generator.

        Raises:
            InputError: If the bundle has no trie, or its trie was built for another catalogue.
        """
        if self.paths.trie is None:
            raise InputError(f"{self.dir}: bundle has no catalogue trie (it is built with the generator); "
                             f"{BUILD_HINT}, or use free beams")
        return TokenTrie.load(self.paths.trie, catalog_sha256=catalog_fingerprint(self.catalog.titles))

    def open_index(self, view: bool = True) -> ItemIndex:
        """Open the bundle's item index (memory-mapped by default)."""
        return ItemIndex.load(self.paths.index, view=view)

    @property
    def fusion_meta(self) -> dict[str, Any] | None:
        """The manifest's fusion section (co-purchase statistics and tuned weights), or None."""
        return self.manifest.get("fusion")

    def open_fusion(self, index: ItemIndex | None = None) -> FusionRanker:
        """The fusion re-ranker over this bundle's index and co-purchase statistics.

        Raises:
            InputError: If the bundle has no fusion section (add one with ``gloss-export fusion``).
        """
        meta = self.fusion_meta
        if meta is None or self.paths.copurchase is None:
            raise InputError(f"{self.dir}: bundle has no co-purchase statistics; add them with gloss-export fusion")
        try:
            config = FusionConfig(**meta.get("config", {}))
        except TypeError as exc:
            raise InputError(f"{self.dir / MANIFEST_NAME}: bad fusion config ({exc}); {BUILD_HINT}") from None
        copurchase = CoPurchase.load(self.paths.copurchase)
        return FusionRanker(self.catalog, index or self.open_index(), copurchase, config)


def load_bundle(bundle_dir: Path, verify: bool = True) -> Bundle:
    """Open a bundle folder and check it against its manifest before anything heavy is loaded.

    Args:
        bundle_dir: Output of ``gloss-export bundle``.
        verify: Also check every file's SHA-256 (sizes are always checked).

    Returns:
        The bundle, with its catalogue loaded.

    Raises:
        InputError: If the folder is not a bundle, has another format version, a file is missing, truncated
            or changed, the embedder and index disagree on dim, the catalogue and index on size, or the
            prompt template differs from this version's.
    """
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    _check_files(bundle_dir, manifest, verify)
    paths = BundlePaths(
        catalog=bundle_dir / manifest["catalog"]["file"],
        embedder_dir=bundle_dir / manifest["embedder"]["dir"],
        index=bundle_dir / manifest["index"]["file"],
        generator=bundle_dir / manifest["generator"]["file"] if manifest.get("generator") else None,
        copurchase=bundle_dir / manifest["fusion"]["file"] if manifest.get("fusion") else None,
        trie=bundle_dir / trie_file if (trie_file := _trie_file(manifest)) else None,
    )
    _check_dims(bundle_dir, manifest, paths)
    if manifest["prompt_template"] != PROMPT_TEMPLATE:
        raise InputError(
            f"{bundle_dir}: built with a different prompt template (gloss {manifest.get('gloss_version')}); "
            f"{BUILD_HINT} using this version"
        )
    catalog = load_catalog(paths.catalog)
    num_indexed = read_index_header(paths.index)["num_items"]
    if len(catalog) != num_indexed:
        raise InputError(
            f"{bundle_dir}: catalogue has {len(catalog)} items but the index has {num_indexed}; {BUILD_HINT}"
        )
    if manifest["catalog"]["num_items"] != num_indexed or manifest["index"]["num_items"] != num_indexed:
        raise InputError(
            f"{bundle_dir}: manifest item counts differ from the files ({num_indexed}); {BUILD_HINT}"
        )
    logger.info("bundle %s: %d items, generator: %s", bundle_dir, len(catalog), paths.generator is not None)
    return Bundle(dir=bundle_dir, manifest=manifest, catalog=catalog, paths=paths)


def read_manifest(bundle_dir: Path) -> dict[str, Any]:
    """Parse and structurally check ``gloss_bundle.json`` (no file contents are read).

    Raises:
        InputError: If the folder or manifest is missing, unreadable, of another version or incomplete.
    """
    if not bundle_dir.exists():
        raise InputError(f"{bundle_dir}: no such folder; build a bundle with gloss-export bundle")
    if not bundle_dir.is_dir():
        raise InputError(f"{bundle_dir}: not a directory but a file; a bundle is the folder gloss-export bundle "
                         "writes")
    path = bundle_dir / MANIFEST_NAME
    if not path.is_file():
        raise InputError(
            f"{bundle_dir}: no {MANIFEST_NAME}, not a gloss bundle; build one with gloss-export bundle"
        )
    text = read_text(path, hint=BUILD_HINT)  # non-UTF-8 bytes: one line naming the byte offset
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc}); {BUILD_HINT}") from None
    if not isinstance(manifest, dict):
        raise InputError(f"{path}: expected a JSON object; {BUILD_HINT}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise InputError(
            f"{path}: bundle format_version {version!r}, this gloss reads version {FORMAT_VERSION}; "
            f"{BUILD_HINT} or use the gloss version that wrote it"
        )
    check_manifest_shape(path, manifest, OPTIONAL_SECTIONS, BUILD_HINT)
    return manifest


def _trie_file(manifest: dict[str, Any]) -> str | None:
    """The trie's path from the manifest's ``generator.trie`` section, or None if the bundle has none.

    Raises:
        InputError: If the section exists without a ``file`` string.
    """
    section = (manifest.get("generator") or {}).get("trie")
    if section is None:
        return None
    if not isinstance(section, dict) or not isinstance(section.get("file"), str):
        raise InputError(f"generator.trie in {MANIFEST_NAME} has no 'file'; {BUILD_HINT}")
    return section["file"]


def _safe_relative(bundle_dir: Path, rel: str) -> Path:
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        raise InputError(f"{bundle_dir / MANIFEST_NAME}: file path {rel!r} leaves the bundle; {BUILD_HINT}")
    return bundle_dir.joinpath(*pure.parts)


def _check_files(bundle_dir: Path, manifest: dict[str, Any], verify: bool) -> None:
    """Every listed file exists with its size (and hash); every part the manifest names is listed."""
    files: dict[str, Any] = manifest["files"]
    needed = [manifest["catalog"]["file"], manifest["index"]["file"]]
    needed += [f"{manifest['embedder']['dir']}/{name}" for name in EMBEDDER_FILES]
    needed += [manifest[name]["file"] for name in OPTIONAL_SECTIONS if manifest.get(name)]
    needed += [trie_file] if (trie_file := _trie_file(manifest)) else []
    unlisted = [rel for rel in needed if rel not in files]
    if unlisted:
        raise InputError(f"{bundle_dir}: manifest has no checksum for {unlisted}; {BUILD_HINT}")
    for rel, entry in files.items():
        path = _safe_relative(bundle_dir, rel)
        if not path.is_file():
            raise InputError(f"{path}: missing from the bundle; {BUILD_HINT}")
        size = path.stat().st_size
        if size != entry.get("size"):
            raise InputError(
                f"{path}: size {size} bytes, manifest says {entry.get('size')} (truncated or replaced); "
                f"{BUILD_HINT}"
            )
        if verify and sha256_file(path) != entry.get("sha256"):
            raise InputError(
                f"{path}: SHA-256 differs from the manifest (file changed or corrupt); {BUILD_HINT}"
            )


def _check_dims(bundle_dir: Path, manifest: dict[str, Any], paths: BundlePaths) -> None:
    """The embedder's dim (manifest and its own config) must equal the index's dim."""
    embedder_dim = manifest["embedder"]["dim"]
    index_dim = read_index_header(paths.index)["dim"]
    if manifest["index"]["dim"] != index_dim:
        raise InputError(
            f"{paths.index}: dim {index_dim}, manifest says {manifest['index']['dim']}; {BUILD_HINT}"
        )
    config_path = paths.embedder_dir / CONFIG_NAME
    try:
        own = json.loads(read_text(config_path, hint=BUILD_HINT))  # non-UTF-8: names the byte offset
    except json.JSONDecodeError as exc:
        raise InputError(f"{config_path}: not valid JSON ({exc}); {BUILD_HINT}") from None
    if not isinstance(own, dict):
        raise InputError(f"{config_path}: expected a JSON object, got {shown(own)}; {BUILD_HINT}")
    own_dim = own.get("dim")
    if embedder_dim != index_dim or own_dim != index_dim:
        raise InputError(
            f"{bundle_dir}: embedder dim {own_dim} (manifest: {embedder_dim}) != index dim {index_dim}; "
            f"the index was built with another embedder; {BUILD_HINT}"
        )
    metric = manifest["index"].get("metric", METRIC)
    if metric != METRIC:
        raise InputError(f"{bundle_dir}: index metric {metric!r}, expected {METRIC!r}; {BUILD_HINT}")

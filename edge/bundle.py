"""The edge bundle: one folder with the catalogue, the embedder, the index and (optionally) the generator.

Layout (all paths relative to the bundle folder)::

    gloss_bundle.json        manifest, written last (see below)
    catalog.jsonl.gz         {"asin", "title"} rows; row i is index key i (gloss.edge.catalog)
    catalog.bin              the same catalogue as compact columns + id/title lookups, memory-mapped at load
    embedder/                model.onnx, tokenizer.json, gloss_embedder.json (gloss.edge.embed)
    index/vectors.npy        item vectors of ``ITEM_TEXT`` per title, memory-mapped (gloss.edge.index, .vectors)
    index/vectors.vN.npy     items added by update N (one segment per update; removed rows listed apart)
    index/graph.usearch      from 50k items:  the HNSW graph for approximate search (gloss.edge.hnsw)
    generator/model.gguf     optional: the query generator for llama.cpp
    generator/trie.bin       with the generator: token trie of the catalogue's titles, memory-mapped (gloss.edge.trie)
    fusion/copurchase.bin    optional: co-purchase statistics for the fusion re-ranker (gloss.edge.copurchase)

The manifest (gloss.edge.manifest) records the size and SHA-256 of every file, so that a truncated or edited
bundle fails to load with one clear line instead of a crash deep inside onnxruntime or usearch; the folder
is written through gloss.edge.outdir, so its path always holds a whole bundle. Sizes and headers are checked at
every load, hashes when the files changed since they were last hashed (gloss.edge.verified). Bundles of gloss
before issue 16 (one ``index.usearch``, no ``catalog.bin``) still load, searched exactly (their vectors read into
memory); their co-purchase ``fusion/copurchase.npz`` is refused in one line that names ``gloss-export fusion``,
which rewrites it (``--no-fusion`` ranks without it meanwhile); after that (or without fusion) the next
``gloss-export update`` writes the index and catalogue in the current layout.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from gloss.edge.catalog import Catalog, open_catalog
from gloss.edge.embed import CONFIG_NAME, EMBEDDER_FILES, OnnxEmbedder
from gloss.edge.errors import InputError
from gloss.edge.files import read_text, sha256_file
from gloss.edge.fusion import CoPurchase, FusionConfig, FusionRanker
from gloss.edge.index import METRIC, ItemIndex, index_facts, index_files
from gloss.edge.manifest import BUILD_HINT, MANIFEST_NAME, OPTIONAL_SECTIONS, read_manifest, shown
from gloss.edge.prompt import ITEM_PREFIX, PROMPT_TEMPLATE
from gloss.edge.trie import TokenTrie, catalog_fingerprint
from gloss.edge.verified import is_verified, record_verified

logger = logging.getLogger(__name__)

CATALOG_FILE = "catalog.jsonl.gz"
CATALOG_ARRAYS_FILE = "catalog.bin"  # manifest: catalog.arrays (bundles built before issue 16 have none)
EMBEDDER_DIR = "embedder"
INDEX_DIR = "index"
INDEX_FILE = "index/vectors.npy"  # the manifest's index.file: the first (or only) vectors segment
GRAPH_FILE = "index/graph.usearch"
LEGACY_INDEX_FILE = "index.usearch"
GENERATOR_FILE = "generator/model.gguf"
TRIE_FILE = "generator/trie.bin"  # manifest: generator.trie (rebuilt with the generator; format 1 was trie.npz)
COPURCHASE_FILE = "fusion/copurchase.bin"  # format 2, memory-mapped (format 1 was fusion/copurchase.npz)
ITEM_TEXT = ITEM_PREFIX + "{title}"  # items are embedded like the queries: "Title: <title>"



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

    def verify(self, rehash: bool = False) -> None:
        """Check every file's SHA-256 against the manifest (for a bundle loaded with ``verify=False``), unless
        the files are unchanged since they were last hashed (:mod:`gloss.edge.verified`) and not ``rehash``.

        Raises:
            InputError: If a file is missing, truncated or changed.
        """
        _check_files(self.dir, self.manifest, verify=True, rehash=rehash)

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

    def open_index(self, view: bool = True, exact: bool | None = None) -> ItemIndex:
        """Open the bundle's item index: vectors memory-mapped, the HNSW graph (if any) mapped (``view``) or read.

        Args:
            view: Memory-map the graph rather than read it into memory.
            exact: True searches exactly by default even with a graph (``--exact``).
        """
        return ItemIndex.open(self.dir, self.manifest["index"], view=view, exact=exact)

    @property
    def fusion_meta(self) -> dict[str, Any] | None:
        """The manifest's fusion section (co-purchase statistics and tuned weights), or None."""
        return self.manifest.get("fusion")

    def open_fusion(self, index: ItemIndex | None = None) -> FusionRanker:
        """The fusion re-ranker over this bundle's index and co-purchase statistics.

        Raises:
            InputError: If the bundle has no fusion section (add one with ``gloss-export fusion``).
        """
        copurchase = self.open_copurchase()  # raises first when the bundle has no statistics
        try:
            config = FusionConfig.from_dict(self.fusion_meta.get("config", {}),
                                            f"{self.dir / MANIFEST_NAME}: fusion.config")
        except InputError as exc:
            raise InputError(f"{exc}; add the statistics again with gloss-export fusion") from None
        return FusionRanker(self.catalog, index or self.open_index(), copurchase, config)

    def open_copurchase(self) -> CoPurchase:
        """The co-purchase statistics over the whole catalogue, memory-mapped.

        Items an update appended after the statistics were written (``fusion.appended_items`` in the manifest)
        have no row and zero popularity: the file is kept as it is and covers them at load, so adding items
        never rewrites it.

        Raises:
            InputError: If the bundle has no statistics, or they and the manifest do not cover the catalogue.
        """
        meta = self.fusion_meta
        if meta is None or self.paths.copurchase is None:
            raise InputError(f"{self.dir}: bundle has no co-purchase statistics; add them with gloss-export fusion")
        stats = CoPurchase.load(self.paths.copurchase)
        appended = meta.get("appended_items", 0)
        if isinstance(appended, bool) or not isinstance(appended, int) or appended < 0 \
                or stats.num_items + appended != len(self.catalog):
            raise InputError(f"{self.paths.copurchase}: co-purchase statistics cover {stats.num_items} items and the "
                             f"manifest appends {appended!r}, the catalogue has {len(self.catalog)}; add them again "
                             "with gloss-export fusion")
        return stats.with_new_items(appended) if appended else stats


def load_bundle(bundle_dir: Path, verify: bool = True, rehash: bool = False) -> Bundle:
    """Open a bundle folder and check it against its manifest before anything heavy is loaded.

    Args:
        bundle_dir: Output of ``gloss-export bundle``.
        verify: Also check every file's SHA-256 (sizes and headers are always checked); files unchanged since
            they were last hashed are not hashed again (:mod:`gloss.edge.verified`).
        rehash: Hash every file even if unchanged since the last check (``gloss-edge inspect``).

    Returns:
        The bundle, with its catalogue loaded.

    Raises:
        InputError: If the folder is not a bundle, has another format version, a file is missing, truncated
            or changed, the embedder and index disagree on dim, the catalogue and index on size, or the
            prompt template differs from this version's.
    """
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    _check_files(bundle_dir, manifest, verify, rehash)
    paths = BundlePaths(
        catalog=bundle_dir / manifest["catalog"]["file"],
        embedder_dir=bundle_dir / manifest["embedder"]["dir"],
        index=bundle_dir / manifest["index"]["file"],
        generator=bundle_dir / manifest["generator"]["file"] if manifest.get("generator") else None,
        copurchase=bundle_dir / manifest["fusion"]["file"] if manifest.get("fusion") else None,
        trie=bundle_dir / trie_file if (trie_file := _trie_file(manifest)) else None,
    )
    num_indexed = _check_dims(bundle_dir, manifest, paths)
    if manifest["prompt_template"] != PROMPT_TEMPLATE:
        raise InputError(
            f"{bundle_dir}: built with a different prompt template (gloss {manifest.get('gloss_version')}); "
            f"{BUILD_HINT} using this version"
        )
    arrays = manifest["catalog"].get("arrays")  # the compact twin: mapped, not parsed and checked again
    catalog = open_catalog(paths.catalog, _safe_relative(bundle_dir, arrays) if isinstance(arrays, str) else None,
                           manifest["files"][manifest["catalog"]["file"]]["sha256"])
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
    """``bundle_dir / rel`` for a manifest path that stays in the folder: relative, no ``..``, no symbolic link
    on the way (a bundle holds its own files; a link could point anywhere once the bundle is copied or served)."""
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        raise InputError(f"{bundle_dir / MANIFEST_NAME}: file path {rel!r} leaves the bundle; {BUILD_HINT}")
    path = bundle_dir
    for part in pure.parts:
        path = path / part
        if path.is_symlink():
            raise InputError(f"{path}: a symbolic link; a bundle holds its own files, not links; {BUILD_HINT}")
    if not path.resolve().is_relative_to(bundle_dir.resolve()):  # belt and braces: nothing above may escape
        raise InputError(f"{path}: resolves outside the bundle folder; {BUILD_HINT}")
    return path


def part_files(sections: dict[str, Any]) -> list[str]:
    """Every file the manifest's sections name (catalogue, embedder, index, optional parts, trie)."""
    needed = [sections["catalog"]["file"], *index_files(sections["index"])]
    needed += [sections["catalog"]["arrays"]] if isinstance(sections["catalog"].get("arrays"), str) else []
    needed += [f"{sections['embedder']['dir']}/{name}" for name in EMBEDDER_FILES]
    needed += [sections[name]["file"] for name in OPTIONAL_SECTIONS if sections.get(name)]
    needed += [trie_file] if (trie_file := _trie_file(sections)) else []
    return needed


def _check_files(bundle_dir: Path, manifest: dict[str, Any], verify: bool, rehash: bool = False) -> None:
    """Every listed file exists with its size (and hash, unless unchanged since the last full check and not
    ``rehash``); every part the manifest names is listed."""
    files: dict[str, Any] = manifest["files"]
    unlisted = [rel for rel in part_files(manifest) if rel not in files]
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
    if not verify or (not rehash and is_verified(bundle_dir, files)):
        return
    for rel, entry in files.items():
        if sha256_file(bundle_dir / rel) != entry.get("sha256"):
            raise InputError(
                f"{bundle_dir / rel}: SHA-256 differs from the manifest (file changed or corrupt); {BUILD_HINT}"
            )
    record_verified(bundle_dir, files)


def _check_dims(bundle_dir: Path, manifest: dict[str, Any], paths: BundlePaths) -> int:
    """The embedder's dim (manifest and its own config) must equal the index's dim; returns the indexed items."""
    embedder_dim = manifest["embedder"]["dim"]
    try:
        facts = index_facts(bundle_dir, manifest["index"])
    except InputError as exc:
        raise InputError(f"{exc}; {BUILD_HINT}") from None
    index_dim = facts["dim"]
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
    return int(facts["num_items"])

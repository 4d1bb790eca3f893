"""Build an edge bundle (catalogue + ONNX embedder + item index + optional GGUF generator) in one folder."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gloss.edge.bundle import (
    CATALOG_ARRAYS_FILE,
    CATALOG_FILE,
    COPURCHASE_FILE,
    EMBEDDER_DIR,
    GENERATOR_FILE,
    ITEM_TEXT,
    TRIE_FILE,
    Bundle,
    load_bundle,
)
from gloss.edge.catalog import Catalog, load_catalog, save_catalog, save_catalog_arrays
from gloss.edge.embed import EMBEDDER_FILES, OnnxEmbedder
from gloss.edge.errors import InputError
from gloss.edge.files import check_input_file, sha256_file
from gloss.edge.fusion import FusionConfig
from gloss.edge.generation.gguf_header import check_gguf
from gloss.edge.hnsw import HnswConfig
from gloss.edge.index import DEFAULT_INDEX_DTYPE, INDEX_DTYPES, KINDS
from gloss.edge.manifest import MANIFEST_NAME, write_manifest
from gloss.edge.outdir import atomic_dir
from gloss.edge.sequences import SequenceArrays
from gloss.edge.trie import check_titles
from gloss.edge.verified import record_verified
from gloss.export.copurchase import DEFAULT_DECAY, DEFAULT_WINDOW, build_copurchase_file, read_prefixes
from gloss.export.embedder import EmbedRun, open_run_embedder
from gloss.export.index import regraph_section, write_index
from gloss.export.rewrite import rewrite_bundle

logger = logging.getLogger(__name__)

# Footprint defaults (benchmarks/footprint.py, Beauty validation users): the int8 embedder and the f16 index keep
# Recall@5/NDCG@5 within noise of fp32 / f32 at a quarter / half the size. The generator stays Q8_0: every type that
# brings the bundle under 150 MB (Q5_K_M, IQ4_NL, Q4_0) raised the true next title's NLL by 0.19-0.30 nats/token
# against F16 (Q8_0: 0.003), since SmolLM2's 576-wide rows leave K-quants to fall back to 4/5-bit legacy types.
DEFAULT_METHOD = "Q8_0"
DEFAULT_EMBEDDER_INT8 = True

def _generator_section(gguf_path: Path, generator_meta: dict[str, Any] | None) -> dict[str, Any]:
    meta = dict(generator_meta or {})
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as exc:
        raise InputError(f"generator metadata is not JSON-serialisable: {exc}") from exc
    return {**meta, "file": GENERATOR_FILE, "source": meta.get("source", gguf_path.name)}


def _trie_section(bundle_dir: Path, catalog: Catalog) -> dict[str, Any]:
    """Build the catalogue trie of the bundle's generator GGUF in ``bundle_dir``; return its manifest section."""
    from gloss.export.trie import write_trie  # lazy: loads llama.cpp

    return write_trie(catalog.titles, bundle_dir / GENERATOR_FILE, bundle_dir / TRIE_FILE, TRIE_FILE)


def _copy_generator(bundle_dir: Path, gguf_path: Path) -> None:
    target = bundle_dir / GENERATOR_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(gguf_path, target)


def _copy_embedder(embedder_dir: Path, target: Path) -> None:
    target.mkdir(parents=True)
    for name in EMBEDDER_FILES:
        shutil.copyfile(embedder_dir / name, target / name)


def embed_catalog(catalog: Catalog, embedder: OnnxEmbedder, show_progress: bool | None = None) -> Any:
    """Embed every catalogue item as ``ITEM_TEXT`` (``Title: <title>``, the form queries take), a chunk at a time.

    Returns:
        float32 (len(catalog), dim); for a whole catalogue that belongs in a bundle, :func:`write_index` writes
        the vectors to disk as they come instead.
    """
    texts = (ITEM_TEXT.format(title=title) for title in catalog.titles)
    chunks = list(embedder.embed_stream(texts, show_progress=show_progress, total=len(catalog)))
    return np.vstack(chunks) if chunks else np.zeros((0, embedder.dim), dtype=np.float32)


def build_bundle(
    catalog_path: Path,
    out_dir: Path,
    embedder_dir: Path | None = None,
    gguf_path: Path | None = None,
    generator_meta: dict[str, Any] | None = None,
    name: str | None = None,
    show_progress: bool | None = None,
    adapter: str | Path | None = None,
    method: str = DEFAULT_METHOD,
    int8_embedder: bool = DEFAULT_EMBEDDER_INT8,
    index_dtype: str = DEFAULT_INDEX_DTYPE,
    sequences_path: Path | None = None,
    holdout: int = 0,
    fusion_config: FusionConfig | None = None,
    embed_run: EmbedRun | None = None,
    index_kind: str | None = None,
    hnsw: HnswConfig | None = None,
) -> Path:
    """Build a bundle folder: catalogue, embedder, index of all titles, optional generator, then the manifest.

    Everything is written to a temp folder beside ``out_dir`` and swapped into place at the end, so an
    existing bundle is replaced only by a complete one.

    Args:
        catalog_path: ``{"asin", "title"}`` JSONL(.gz).
        out_dir: Bundle folder to create or replace.
        embedder_dir: Folder from ``gloss-export embedder``; None exports the default all-MiniLM-L6-v2.
        gguf_path: Optional generator GGUF to include.
        generator_meta: Extra facts about the generator for the manifest (base model, quantization, ...).
        name: Catalogue name (default: the catalogue file's name without extensions).
        show_progress: Progress bars; None means on when logging is at INFO.
        adapter: Instead of ``gguf_path``: a LoRA adapter (shipped name, run or adapter folder) to merge,
            convert and quantize into the bundle's generator (:func:`gloss.export.generator.build_generator_gguf`).
        method: llama.cpp quantization of the ``adapter`` generator.
        int8_embedder: Export the default embedder with int8 weights (ignored with ``embedder_dir``, whose
            export decided it).
        index_dtype: How the index stores the vectors: ``f32``, ``f16`` or ``i8``.
        sequences_path: User sequences (``{"user", "items"}``): add co-purchase statistics for the fusion
            re-ranker in the same build (as :func:`add_fusion` does afterwards).
        holdout: Items left out at the end of every sequence: 0 to serve, 1 to evaluate on test, 2 on
            validation.
        fusion_config: Fusion weights for the manifest; default :class:`FusionConfig`.
        embed_run: Threads, batch size and device of the embedding run (default: all CPU cores, or CUDA).
        index_kind: ``exact``, ``hnsw`` or None (by size: :data:`gloss.edge.index.HNSW_MIN_ITEMS`).
        hnsw: Graph settings where the index is an HNSW graph (default :class:`HnswConfig`).

    Returns:
        ``out_dir``.

    Raises:
        InputError: For a bad catalogue, embedder folder, GGUF file or output folder.
    """
    catalog_path, out_dir = Path(catalog_path), Path(out_dir)
    if gguf_path is not None and adapter is not None:
        raise InputError("give either a generator GGUF or an adapter, not both")
    if index_dtype not in INDEX_DTYPES:
        raise InputError(f"--index-dtype must be one of {', '.join(INDEX_DTYPES)}, got {index_dtype!r}")
    if index_kind not in (None, *KINDS):
        raise InputError(f"--index-kind must be one of {', '.join(KINDS)}, got {index_kind!r}")
    if hnsw is not None and index_kind == "exact":
        raise InputError("--graph-config sets up an HNSW graph; --index-kind exact builds none")
    embed_run = embed_run or EmbedRun()
    if adapter is not None:
        from gloss.export.generator import build_generator_gguf, resolve_adapter

        source = resolve_adapter(adapter)  # fail before the slow steps
    if embedder_dir is not None:
        OnnxEmbedder.load(Path(embedder_dir))
    if gguf_path is not None:
        check_gguf(gguf_path, stop_after="general.architecture")
    if sequences_path is not None:
        check_holdout(holdout)
        check_input_file(Path(sequences_path), "sequences file")
    catalog = load_catalog(catalog_path)
    prefixes = None
    if sequences_path is not None:  # read once, now: an unknown item fails before embedding, not after it
        prefixes = check_sequences(Path(sequences_path), catalog, holdout)
    if gguf_path is not None or adapter is not None:
        check_titles(catalog.titles)  # the generator's trie needs every title; fail before the slow steps
    name = name or catalog_path.name.split(".")[0]
    with atomic_dir(out_dir, marker=MANIFEST_NAME) as tmp:
        save_catalog(catalog, tmp / CATALOG_FILE)
        save_catalog_arrays(catalog, tmp / CATALOG_ARRAYS_FILE, tmp / CATALOG_FILE)
        if embedder_dir is None:
            from gloss.export.embedder import export_embedder  # lazy: imports torch and optimum

            export_embedder(tmp / EMBEDDER_DIR, int8=int8_embedder)
        else:
            _copy_embedder(Path(embedder_dir), tmp / EMBEDDER_DIR)
        embedder = open_run_embedder(tmp / EMBEDDER_DIR, embed_run)
        known: dict[str, Any] = {}
        index_section = write_index(tmp, catalog.titles, embedder, index_dtype, embed_run, index_kind, hnsw,
                                    show_progress=show_progress, known=known)
        sections: dict[str, Any] = {
            "catalog": {"file": CATALOG_FILE, "arrays": CATALOG_ARRAYS_FILE, "num_items": len(catalog), "name": name},
            "embedder": {"dir": EMBEDDER_DIR, **_embedder_section(embedder)},
            "index": index_section,
        }
        if gguf_path is not None:
            _copy_generator(tmp, Path(gguf_path))
            sections["generator"] = _generator_section(Path(gguf_path), generator_meta)
        elif adapter is not None:
            meta = build_generator_gguf(source, tmp / GENERATOR_FILE, method=method, work_dir=tmp)
            meta = {**meta, **(generator_meta or {}), "source": Path(str(adapter)).name}
            sections["generator"] = _generator_section(tmp / GENERATOR_FILE, meta)
        if "generator" in sections:  # every generator comes with its catalogue trie
            sections["generator"]["trie"] = _trie_section(tmp, catalog)
        if sequences_path is not None:
            sections["fusion"] = _fusion_section(tmp, catalog, Path(sequences_path), holdout, DEFAULT_WINDOW,
                                                 DEFAULT_DECAY, fusion_config, prefixes)
        manifest = write_manifest(tmp, sections, known=known)
    record_verified(out_dir, manifest["files"])  # hashed while written: the first load need not hash again
    has_generator = gguf_path is not None or adapter is not None
    logger.info("bundle %s: %d items, generator: %s", out_dir, len(catalog), has_generator)
    return out_dir


def _embedder_section(embedder: OnnxEmbedder) -> dict[str, Any]:
    config = embedder.config
    return {
        "dim": config.dim, "max_length": config.max_length, "pooling": config.pooling,
        "normalize": config.normalize, "source": config.source, "int8": config.int8,
    }  # fmt: skip


def add_generator(bundle_dir: Path, gguf_path: Path, generator_meta: dict[str, Any] | None = None) -> Path:
    """Add (or replace) the bundle's generator GGUF; the bundle is rewritten atomically.

    Args:
        bundle_dir: An existing bundle.
        gguf_path: The generator GGUF.
        generator_meta: Extra facts about the generator for the manifest.

    Returns:
        ``bundle_dir``.

    Raises:
        InputError: If the bundle fails to load or the GGUF is invalid.
    """
    check_gguf(gguf_path, stop_after="general.architecture")

    def write(tmp: Path, bundle: Bundle) -> dict[str, Any]:
        _copy_generator(tmp, Path(gguf_path))
        return {**_generator_section(Path(gguf_path), generator_meta), "trie": _trie_section(tmp, bundle.catalog)}

    return _rewrite_bundle(Path(bundle_dir), "generator", GENERATOR_FILE, write)


def add_fusion(
    bundle_dir: Path,
    sequences_path: Path,
    holdout: int = 0,
    window: int = DEFAULT_WINDOW,
    decay: float = DEFAULT_DECAY,
    config: FusionConfig | None = None,
) -> Path:
    """Add (or replace) co-purchase statistics and fusion weights; the bundle is rewritten atomically.

    Args:
        bundle_dir: An existing bundle.
        sequences_path: User sequences (``{"user", "items"}``) over the bundle's catalogue.
        holdout: Items left out at the end of every sequence: 0 to serve, 1 for a bundle that is
            evaluated on the test split, 2 for the validation split (no held-out item leaks in).
        window: Successors counted up to this many steps ahead.
        decay: Weight of a successor ``g`` steps ahead: ``decay ** (g - 1)``.
        config: Fusion weights; default :class:`FusionConfig` (tuned on Beauty validation users).

    Returns:
        ``bundle_dir``.

    Raises:
        InputError: On a bad bundle, unreadable sequences, an item not in the catalogue or bad settings.
    """

    check_holdout(holdout)

    def write(tmp: Path, bundle: Bundle) -> dict[str, Any]:
        return _fusion_section(tmp, bundle.catalog, Path(sequences_path), holdout, window, decay, config)

    return _rewrite_bundle(Path(bundle_dir), "fusion", COPURCHASE_FILE, write)


def regraph_bundle(bundle_dir: Path, hnsw: HnswConfig | None = None, threads: int = 0,
                   show_progress: bool | None = None) -> Path:
    """Replace a bundle's HNSW graph by one built with ``hnsw`` (default :class:`HnswConfig`) over its stored
    vectors, without embedding a title again; every other file is reused (hard links) and the bundle is
    swapped atomically. An exact index gets a graph (and is then searched approximately).

    Raises:
        InputError: If the bundle fails to load (it is fully checked first).
    """
    bundle = load_bundle(Path(bundle_dir), verify=True)
    rewrite_bundle(bundle, lambda tmp, b: {"index": regraph_section(b, tmp, hnsw, threads, show_progress)})
    logger.info("bundle %s: new graph %s", bundle_dir, (hnsw or HnswConfig()).to_dict())
    return Path(bundle_dir)


def check_sequences(sequences_path: Path, catalog: Catalog, holdout: int = 0) -> SequenceArrays:
    """Read every ``{"user", "items"}`` row against the catalogue into flat position arrays (4 bytes an item);
    the last ``holdout`` items of each user are not read by the statistics, so they are not checked either.

    Returns:
        The prefixes, for :func:`gloss.export.copurchase.build_copurchase_file`.

    Raises:
        InputError: Naming the line of the first malformed row or item that is not in ``catalog``.
    """
    return read_prefixes(sequences_path, catalog, holdout)


def check_holdout(holdout: int) -> None:
    """Raise InputError unless ``holdout`` is 0 (serve), 1 (test) or 2 (validation)."""
    if holdout not in (0, 1, 2):
        raise InputError(f"--holdout must be 0 (serve), 1 (test) or 2 (validation), got {holdout}")


def _fusion_section(
    tmp: Path, catalog: Catalog, sequences_path: Path, holdout: int, window: int, decay: float,
    config: FusionConfig | None, prefixes: SequenceArrays | None = None,
) -> dict[str, Any]:
    """Write the co-purchase statistics into a bundle being built and return the manifest's fusion section.

    The section records the sequences file's name and SHA-256 and the holdout, so ``gloss-edge eval
    --fusion`` can refuse statistics that saw the evaluated targets.
    """
    out = tmp / COPURCHASE_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    stats = build_copurchase_file(sequences_path, catalog, out, holdout, window, decay, prefixes=prefixes)
    return {
        "file": COPURCHASE_FILE, "holdout": holdout, "window": window, "decay": decay,
        "sequences": sequences_path.name, "sequences_sha256": sha256_file(sequences_path), "nnz": stats.nnz,
        "config": (config or FusionConfig()).to_dict(),
    }  # fmt: skip


def _rewrite_bundle(
    bundle_dir: Path, section: str, part_file: str, write: Callable[[Path, Bundle], dict[str, Any]]
) -> Path:
    """Copy a checked bundle into a temp folder without one optional part, let ``write`` add the new part
    and return its manifest section, rewrite the manifest and swap the folders."""
    bundle = load_bundle(bundle_dir, verify=True)
    rewrite_bundle(bundle, lambda tmp, b: {section: write(tmp, b)}, skip=(Path(part_file).parts[0],))
    logger.info("bundle %s: %s added", bundle_dir, section)
    return bundle_dir

"""What a bundle holds, read from its files and checked against its manifest (``gloss-edge inspect``)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gloss.edge.bundle import load_bundle
from gloss.edge.errors import GlossError, InputError
from gloss.edge.manifest import MANIFEST_NAME, VERIFIED_NAME, package_versions, read_manifest

logger = logging.getLogger(__name__)

GENERATOR_KEYS = ("general.architecture", "general.name", "general.file_type", "llama.block_count",
                  "llama.context_length", "llama.embedding_length")  # fmt: skip


@dataclass(frozen=True)
class BundleReport:
    """A bundle's contents and the result of checking it.

    Attributes:
        sections: Section name -> facts (JSON-ready), in display order.
        problems: What failed the check against the manifest (empty: the bundle is sound).
        notes: Things worth knowing that do not break the bundle (other package versions, unlisted files).
    """

    sections: dict[str, dict[str, Any]]
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**self.sections, "check": {"ok": self.ok, "problems": self.problems, "notes": self.notes}}


def _part_sizes(files: dict[str, Any]) -> dict[str, int]:
    """Bytes per top-level entry of the bundle, from the manifest's file list."""
    sizes: dict[str, int] = {}
    for rel, entry in files.items():
        top = rel.split("/", 1)[0]
        size = entry.get("size") if isinstance(entry, dict) else None
        sizes[top] = sizes.get(top, 0) + (size if isinstance(size, int) else 0)
    return sizes


def _files_of(files: dict[str, Any], prefix: str) -> dict[str, int]:
    return {rel: entry.get("size") for rel, entry in files.items()
            if isinstance(entry, dict) and (rel == prefix or rel.startswith(prefix + "/"))}


def inspect_bundle(bundle_dir: Path, verify: bool = True) -> BundleReport:
    """Describe a bundle and check it: every file against the manifest (size, SHA-256 when ``verify``), the
    parts against each other (item counts, dims), and optional parts against their own headers.

    Args:
        bundle_dir: A bundle folder.
        verify: Hash every file, even if unchanged since the last check (sizes and headers are always checked).

    Returns:
        The report; a broken part is listed under ``problems`` rather than raised.

    Raises:
        InputError: If the folder has no readable manifest at all.
    """
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    problems: list[str] = []
    notes: list[str] = []
    bundle = None
    try:
        bundle = load_bundle(bundle_dir, verify=verify, rehash=verify)  # inspect always hashes every file
    except GlossError as exc:
        problems.append(str(exc))
    files = manifest.get("files", {})
    sections: dict[str, dict[str, Any]] = {"bundle": _bundle_section(bundle_dir, manifest, files)}
    sections["catalog"] = {**_plain(manifest["catalog"], drop=("updates",)),
                           "updates": len(manifest["catalog"].get("updates", []))}
    if bundle is not None:
        sections["catalog"]["rows"] = len(bundle.catalog)
    sections["embedder"] = {**_plain(manifest["embedder"]), "files": _files_of(files, manifest["embedder"]["dir"])}
    sections["index"] = _index_section(bundle_dir, manifest, files, problems)
    generator = manifest.get("generator") if isinstance(manifest.get("generator"), dict) else None
    trie = generator.get("trie") if generator else None  # the trie belongs to the generator's tokenizer
    parts = (("generator", _generator_section, generator), ("fusion", _fusion_section, manifest.get("fusion")),
             ("trie", _trie_section, trie))
    for name, describe, meta in parts:
        sections[name] = describe(bundle_dir, meta, files, problems) if isinstance(meta, dict) else {"present": False}
    if bundle is not None and isinstance(manifest.get("fusion"), dict) and "statistics" in sections["fusion"]:
        try:
            bundle.open_copurchase()  # the statistics and the items appended since cover the catalogue
        except GlossError as exc:
            problems.append(str(exc))
    if bundle is not None and isinstance(trie, dict):
        try:
            bundle.open_trie()  # built for these titles and intact
        except GlossError as exc:
            problems.append(str(exc))
    notes.extend(_version_notes(manifest))
    notes.extend(_unlisted_files(bundle_dir, files))
    return BundleReport(sections, problems, notes)


def _plain(section: dict[str, Any], drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """A manifest section without nested lists/dicts that would not fit one line (kept: scalars)."""
    return {k: v for k, v in section.items() if k not in drop and not isinstance(v, (list, dict))}


def _bundle_section(bundle_dir: Path, manifest: dict[str, Any], files: dict[str, Any]) -> dict[str, Any]:
    return {
        "path": str(bundle_dir), "format_version": manifest.get("format_version"),
        "created": manifest.get("created"), "gloss_version": manifest.get("gloss_version"),
        "catalog_version": manifest["catalog"].get("version", 1), "num_files": len(files),
        "total_bytes": sum(_part_sizes(files).values()), "bytes_per_part": _part_sizes(files),
    }  # fmt: skip


def _index_section(
    bundle_dir: Path, manifest: dict[str, Any], files: dict[str, Any], problems: list[str]
) -> dict[str, Any]:
    """Kind (exact / hnsw), dtype, segments, removed rows and graph settings, from the files' headers."""
    from gloss.edge.index import index_facts, index_files

    meta = manifest["index"]
    names = index_files(meta) if isinstance(meta, dict) else []
    out = {**_plain(meta, drop=("build",)), "kind": meta.get("kind", "exact"),
           "bytes": sum(files[rel].get("size", 0) for rel in names if isinstance(files.get(rel), dict))}
    out["segments"] = len(meta.get("segments") or [meta["file"]])
    out["removed_rows"] = int((meta.get("removed") or {}).get("rows", 0))
    if isinstance(meta.get("graph"), dict):
        out["graph"] = {k: v for k, v in meta["graph"].items() if k != "file"}
    if isinstance(meta.get("build"), dict):
        out["build"] = meta["build"]
    try:
        facts = index_facts(bundle_dir, meta)
    except GlossError as exc:
        problems.append(str(exc))
        return out
    out["stored_items"] = facts["num_items"]
    out["scalar"] = facts["dtype"]
    return out


def _generator_section(
    bundle_dir: Path, meta: dict[str, Any], files: dict[str, Any], problems: list[str]
) -> dict[str, Any]:
    from gloss.edge.generation.gguf_header import read_gguf_metadata

    path = bundle_dir / meta["file"]
    out: dict[str, Any] = {"present": True, "bytes": _files_of(files, meta["file"]).get(meta["file"]),
                           "provenance": {k: v for k, v in meta.items() if k != "trie"}}
    try:
        header = read_gguf_metadata(path, stop_after=None)
    except (GlossError, OSError, ValueError) as exc:
        problems.append(f"{path}: unreadable GGUF header ({exc})")
        return out
    out["gguf"] = {key: header[key] for key in GENERATOR_KEYS if key in header}
    return out


def _fusion_section(
    bundle_dir: Path, meta: dict[str, Any], files: dict[str, Any], problems: list[str]
) -> dict[str, Any]:
    from gloss.edge.fusion import CoPurchase, FusionConfig

    out: dict[str, Any] = {"present": True, **_plain(meta), "config": meta.get("config"),
                           "files": _files_of(files, meta["file"].split("/", 1)[0])}
    try:
        FusionConfig.from_dict(meta.get("config", {}), f"{bundle_dir / MANIFEST_NAME}: fusion.config")
    except InputError as exc:
        problems.append(str(exc))
    try:
        stats = CoPurchase.load(bundle_dir / meta["file"])
    except GlossError as exc:
        problems.append(str(exc))
        return out
    cold = int((stats.popularity == 0).sum())
    out["statistics"] = {"items": stats.num_items, "pairs": stats.nnz, "items_without_purchases": cold,
                         "purchases": float(stats.popularity.sum()), "window": stats.window, "decay": stats.decay}
    if meta.get("nnz") is not None and meta["nnz"] != stats.nnz:
        problems.append(f"{bundle_dir / meta['file']}: {stats.nnz} pairs, manifest says {meta['nnz']}")
    return out


def _trie_section(bundle_dir: Path, meta: dict[str, Any], files: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    return {"present": True, **_plain(meta), "bytes": _files_of(files, meta["file"]).get(meta["file"])}


def _version_notes(manifest: dict[str, Any]) -> Iterator[str]:
    """Packages whose installed version differs from the one that built the bundle."""
    built = manifest.get("packages", {})
    now = package_versions()
    for name, version in sorted(built.items()) if isinstance(built, dict) else []:
        if name in now and now[name] != version:
            yield f"built with {name} {version}, running {now[name]}"


def _unlisted_files(bundle_dir: Path, files: dict[str, Any]) -> Iterator[str]:
    """Files in the folder that the manifest does not list (not checked, not loaded)."""
    for path in sorted(p for p in bundle_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(bundle_dir).as_posix()
        if rel not in (MANIFEST_NAME, VERIFIED_NAME) and rel not in files:
            yield f"{rel}: not listed in the manifest (ignored)"


def format_report(report: BundleReport) -> str:
    """The report as an aligned two-column table, one block per section, then the check."""
    lines = []
    for name, facts in report.sections.items():
        lines.append(f"[{name}]")
        for key, value in facts.items():
            shown = value if isinstance(value, (str, int, float, bool)) or value is None else json.dumps(value)
            lines.append(f"  {key:<28} {shown}")
    lines.append("[check]")
    lines.append(f"  {'status':<28} {'ok' if report.ok else 'FAILED'}")
    lines.extend(f"  problem: {p}" for p in report.problems)
    lines.extend(f"  note: {n}" for n in report.notes)
    return "\n".join(lines)


def require_sound(report: BundleReport) -> None:
    """Raise InputError naming the first problem (and how many there are) if the check failed."""
    if report.problems:
        more = f" (and {len(report.problems) - 1} more)" if len(report.problems) > 1 else ""
        raise InputError(f"bundle check failed: {report.problems[0]}{more}")

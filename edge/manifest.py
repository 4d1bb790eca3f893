"""The bundle manifest ``gloss_bundle.json``: writing it, reading it, and checking its shape.

The manifest records the format version, creation time, package versions, the prompt template, one section
per part and the size and SHA-256 of every file. A hand-edited manifest can break any field
(``"files": {"x": "abc"}``); checking the shape first turns what would be an AttributeError deep in the
loader into one line naming the field.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from gloss.edge.errors import InputError
from gloss.edge.files import read_text, sha256_file, write_json_atomic
from gloss.edge.prompt import PROMPT_TEMPLATE

logger = logging.getLogger(__name__)

MANIFEST_NAME = "gloss_bundle.json"
VERIFIED_NAME = ".gloss_verified.json"  # gloss.edge.verified: the last full hash; never listed in the manifest
FORMAT_VERSION = 1
OPTIONAL_SECTIONS = ("generator", "fusion")
SECTIONS = ("catalog", "embedder", "index")
VERSIONED_PACKAGES = (
    "gloss", "numpy", "onnxruntime", "tokenizers", "usearch", "llama-cpp-python",
    "torch", "transformers", "optimum", "optimum-onnx", "onnx", "gguf",
)  # fmt: skip
BUILD_HINT = "rebuild it with gloss-export bundle"

MANIFEST_SHAPE: dict[str, dict[str, type]] = {
    "catalog": {"file": str, "num_items": int},
    "embedder": {"dir": str, "dim": int},
    "index": {"file": str, "dim": int, "num_items": int},
}
FILE_ENTRY_SHAPE: dict[str, type] = {"size": int, "sha256": str}
SHOWN_CHARS = 40  # of a bad value's repr in an error line


def check_manifest_shape(path: Path, manifest: dict[str, Any], optional_sections: Sequence[str], hint: str) -> None:
    """Check the required sections, the optional ones that are present, the prompt template and ``files``.

    Args:
        path: The manifest file, for messages.
        manifest: The parsed manifest (a dict).
        optional_sections: Sections that, when present, must be objects with a ``file`` string.
        hint: What to do about it, ending every message.

    Raises:
        InputError: Naming the first field that is missing or of the wrong type.
    """
    for section, keys in MANIFEST_SHAPE.items():
        value = manifest.get(section)
        if not isinstance(value, dict) or any(key not in value for key in keys):
            raise InputError(f"{path}: section {section!r} is missing or incomplete; {hint}")
        for key, kind in keys.items():
            _check_type(path, f"{section}.{key}", value[key], kind, hint)
    if "prompt_template" not in manifest:
        raise InputError(f"{path}: no prompt_template; {hint}")
    _check_type(path, "prompt_template", manifest["prompt_template"], str, hint)
    for name in optional_sections:
        section = manifest.get(name)
        if section is not None and (not isinstance(section, dict) or "file" not in section):
            raise InputError(f"{path}: section {name!r} has no 'file'; {hint}")
        if section is not None:
            _check_type(path, f"{name}.file", section["file"], str, hint)
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise InputError(f"{path}: 'files' should map each file to {{size, sha256}}, got {shown(files)}; {hint}")
    for rel, entry in files.items():
        if not isinstance(entry, dict) or any(key not in entry for key in FILE_ENTRY_SHAPE):
            raise InputError(f"{path}: files[{rel!r}] should be {{\"size\": ..., \"sha256\": ...}}, got "
                             f"{shown(entry)}; {hint}")
        for key, kind in FILE_ENTRY_SHAPE.items():
            _check_type(path, f"files[{rel!r}].{key}", entry[key], kind, hint)


def _check_type(path: Path, field: str, value: Any, kind: type, hint: str) -> None:
    if not isinstance(value, kind) or (kind is int and (isinstance(value, bool) or value < 0)):
        expected = "a whole number >= 0" if kind is int else "a string"
        raise InputError(f"{path}: {field} should be {expected}, got {shown(value)}; {hint}")


def shown(value: Any) -> str:
    """A value for an error line: its JSON type and a short repr."""
    text = repr(value)
    return f"{type(value).__name__} {text[:SHOWN_CHARS] + '...' if len(text) > SHOWN_CHARS else text}"


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape a bundle (absent ones are left out)."""
    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def file_entries(bundle_dir: Path, known: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of every file under ``bundle_dir`` except the manifest, by POSIX relative path.

    Args:
        bundle_dir: The folder.
        known: Entries of files whose hash the writer already has (hashed while written, or hard links of files
            of a checked bundle); used when the size still matches, so those files are not read again.
    """
    known = known or {}
    entries = {}
    for path in sorted(p for p in Path(bundle_dir).rglob("*") if p.is_file()):
        rel = path.relative_to(bundle_dir).as_posix()
        if rel in (MANIFEST_NAME, VERIFIED_NAME):
            continue
        size = path.stat().st_size
        given = known.get(rel)
        sha = given["sha256"] if given and given.get("size") == size else sha256_file(path)
        entries[rel] = {"sha256": sha, "size": size}
    return entries


def write_manifest(bundle_dir: Path, sections: dict[str, Any],
                   known: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write ``gloss_bundle.json`` for the files now in ``bundle_dir``; call it after every other file.

    Args:
        bundle_dir: The (temporary) bundle folder.
        sections: ``catalog``, ``embedder``, ``index`` and optionally ``generator`` / ``fusion`` dicts.
        known: Hashes the writer already has (:func:`file_entries`).

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
    manifest["files"] = file_entries(bundle_dir, known)
    try:
        json.dumps(manifest)
    except (TypeError, ValueError) as exc:
        raise InputError(f"bundle manifest: a value is not JSON-serialisable ({exc})") from exc
    write_json_atomic(Path(bundle_dir) / MANIFEST_NAME, manifest)
    return manifest


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

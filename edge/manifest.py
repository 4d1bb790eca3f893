"""The shape of a bundle manifest: every field the loader reads exists and has the right JSON type.

A hand-edited ``gloss_bundle.json`` can break any field (``"files": {"x": "abc"}``); checking the shape first
turns what would be an AttributeError deep in the loader into one line naming the field.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gloss.edge.errors import InputError

logger = logging.getLogger(__name__)

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

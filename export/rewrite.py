"""Rewrite a bundle into a new folder that reuses its unchanged files, then swap the folders atomically.

A new bundle folder is built beside the old one (:func:`gloss.edge.outdir.atomic_dir`); each file that does not
change is *hard-linked* into it (one more name for the same inode: no bytes copied, no hash recomputed), so
adding a thousand items to a million-item bundle writes the new parts only. Where a link is impossible (another
file system, a file system without links, a file owned by another user under ``fs.protected_hardlinks``) the file
is copied instead. Every writer in gloss replaces a file by renaming a new one over it and never writes into an
existing file, so the old and the new bundle never see each other's changes through a shared inode.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from gloss.edge.bundle import Bundle, part_files
from gloss.edge.manifest import MANIFEST_NAME, OPTIONAL_SECTIONS, SECTIONS, write_manifest
from gloss.edge.outdir import atomic_dir
from gloss.edge.verified import record_verified

logger = logging.getLogger(__name__)

NO_LINK = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES)


def link_or_copy(source: Path, target: Path) -> bool:
    """Hard-link ``source`` as ``target`` (True), or copy it where a link is impossible (False).

    Raises:
        OSError: On any other failure (e.g. ``target`` exists, the disk is full).
    """
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
        return True
    except OSError as exc:
        if exc.errno not in NO_LINK:
            raise
    shutil.copy2(source, target)
    return False


def reuse_files(bundle: Bundle, target_dir: Path, needed: Iterable[str], skip: Iterable[str] = ()) -> dict[str, Any]:
    """Link (or copy) into ``target_dir`` every file of ``bundle`` that is in ``needed`` and not already there, and
    not in ``skip`` (relative paths, or top-level folders whose files are all skipped).

    Returns:
        The manifest entries (size, SHA-256) of the files reused, for :func:`gloss.edge.manifest.write_manifest`.
    """
    needed, skip = set(needed), set(skip)
    reused, linked = {}, 0
    for rel, entry in bundle.manifest["files"].items():
        if rel not in needed or rel in skip or rel.split("/", 1)[0] in skip or (Path(target_dir) / rel).exists():
            continue
        linked += link_or_copy(bundle.dir / rel, Path(target_dir) / rel)
        reused[rel] = entry
    logger.debug("%s: reused %d files (%d hard links)", bundle.dir, len(reused), linked)
    return reused


def rewrite_bundle(
    bundle: Bundle, write: Callable[[Path, Bundle], dict[str, Any]], skip: Iterable[str] = (),
    known: dict[str, Any] | None = None,
) -> Path:
    """Rewrite a loaded bundle atomically: ``write`` puts the changed parts in a new folder beside it, every other
    file the new manifest needs is hard-linked (or copied) from the old folder, the manifest (sizes, checksums) is
    written and the folders are swapped, so a reader sees the old bundle or the new one, never a mix.

    Args:
        bundle: The bundle as loaded (and checked) by :func:`gloss.edge.bundle.load_bundle`.
        write: Called with the new folder and ``bundle``; writes the changed parts and returns
            ``{section name: section}`` for the sections it replaces (None drops an optional section).
        skip: Files (relative paths) or top-level folders of the old bundle never carried over.
        known: Hashes of files ``write`` hashed while writing them (filled during ``write``).

    Returns:
        The bundle folder.
    """
    bundle_dir = bundle.dir
    with atomic_dir(bundle_dir, marker=MANIFEST_NAME) as tmp:
        sections = {key: bundle.manifest[key] for key in (*SECTIONS, *OPTIONAL_SECTIONS) if key in bundle.manifest}
        sections.update(write(tmp, bundle))
        sections = {key: value for key, value in sections.items() if value is not None}
        reused = reuse_files(bundle, tmp, part_files(sections), skip)  # checked at load: their hashes stand
        manifest = write_manifest(tmp, sections, known={**(known or {}), **reused})
    record_verified(bundle_dir, manifest["files"])  # reused files were checked at load, new ones hashed
    return bundle_dir

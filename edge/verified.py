"""When a bundle's files were last hashed in full: a stamp that lets a cold start skip re-hashing unchanged files.

Every load checks each listed file's size (a truncated file never loads). Hashing every file as well costs seconds
for a million-item bundle, so a bundle is hashed in full when it is built or updated (the writer hashes the
bytes it writes), by ``gloss-edge inspect``, and on the first load after any of its files changed; each time the
result is recorded in ``.gloss_verified.json`` inside the bundle: the manifest's SHA-256 and, per file, its device,
inode, size, modification and status-change times (nanoseconds). A load whose files all still match the stamp
skips the hashes. Any write, truncation, replacement, copy or ``touch`` of a file changes its ``st_ctime`` (which
no user can set back), so the next load hashes everything again before it answers; corruption the file system
does not see (failing media) is caught by ``gloss-edge inspect``, which always hashes.

When SHA-256 runs, exactly:

* ``gloss-export bundle``: every file once, as it is written (the vectors while streamed to disk, the rest read
  back once for the manifest); the stamp is recorded, so the first load hashes nothing.
* ``gloss-export update`` / ``fusion``: the bundle is loaded first (hashed in full unless the stamp vouches for it);
  only the files it writes are hashed, the hard-linked ones keep the manifest's hashes; the stamp is recorded.
* a cold start (``gloss-edge recommend``, ``serve``, ``eval``): sizes and headers of every file always (vectors
  header against the file size, graph metadata, array-file headers and CRCs, embedder config); every file's SHA-256
  when the stamp does not vouch for all of them (a copied, touched, rewritten or replaced file, or an edited
  manifest), before the first answer; a failed check records nothing, so the next start checks again.
* ``gloss-edge inspect``: every file, whatever the stamp (``--no-verify``: sizes and headers only).

Limits: the stamp vouches for what ``stat`` shows. Bytes that change while every field stays (failing media, a
stamp rewritten by hand, or a same-size rewrite within one clock tick of the previous change on kernels before
6.13, whose status-change times are coarse) pass a cold start; ``gloss-edge inspect`` hashes them. The stamp
guards against accidents, not against someone who can write the bundle folder.

The stamp is written beside the manifest but never listed in it; a bundle folder the process cannot write to
is simply hashed on every load.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gloss.edge.errors import InputError
from gloss.edge.files import write_json_atomic
from gloss.edge.manifest import MANIFEST_NAME, VERIFIED_NAME

logger = logging.getLogger(__name__)

STAMP_VERSION = 1


def _fingerprint(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def stamp_for(bundle_dir: Path, files: Iterable[str]) -> dict[str, Any]:
    """The stamp of the bundle's manifest and ``files`` as they are now.

    Raises:
        OSError: If a file cannot be stat-ed.
    """
    manifest = Path(bundle_dir) / MANIFEST_NAME
    return {
        "version": STAMP_VERSION,
        "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
        "files": {rel: _fingerprint(Path(bundle_dir) / rel) for rel in sorted(files)} | {
            MANIFEST_NAME: _fingerprint(manifest)},
    }


def is_verified(bundle_dir: Path, files: Iterable[str]) -> bool:
    """True when the stamp vouches for the manifest and every one of ``files`` as they are now."""
    path = Path(bundle_dir) / VERIFIED_NAME
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
        return isinstance(recorded, dict) and recorded == stamp_for(bundle_dir, files)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False


def record_verified(bundle_dir: Path, files: Iterable[str]) -> bool:
    """Record that ``files`` (and the manifest) were just hashed and matched; False if it cannot be written."""
    try:
        write_json_atomic(Path(bundle_dir) / VERIFIED_NAME, stamp_for(bundle_dir, files))
    except (OSError, InputError) as exc:
        logger.debug("%s: cannot record the verification (%s); the next load hashes every file again", bundle_dir,
                     exc)
        return False
    return True

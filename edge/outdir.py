"""Write an output folder atomically: the one home of temp build folders, their writer records and the swap.

A folder ``NAME`` (a bundle, an embedder, a merged model, an adapter, prepared data) is built in a hidden
work folder beside it and swapped into place only when the build succeeded::

    .NAME.<token>.writer   JSON record of the writing process (pid, host, boot id, start time), made first
    .NAME.<token>.tmp      the work folder; after the swap it holds the previous NAME until it is deleted

The swap exchanges the two folders in one step (Linux ``renameat2(RENAME_EXCHANGE)``, macOS
``renamex_np(RENAME_SWAP)``), so ``NAME`` always holds the old or the new folder, whatever happens; where the
file system has no exchange, the old folder is renamed to ``.NAME.<token>.old`` just before the new one is
renamed in (it stays readable there, and is put back if the second rename fails). Everything a writer
leaves (``.tmp``, ``.old``) sits under its record, and the next writer of ``NAME`` deletes it once that
record's process is gone (``kill -9``, a crash, a reboot). A record is removed last, after its folders.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import glob
import json
import logging
import os
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gloss.edge.errors import InputError
from gloss.edge.files import follow_umask, make_parent_dir

logger = logging.getLogger(__name__)

WRITER_SUFFIX = ".writer"
WORK_SUFFIX = ".tmp"
OLD_SUFFIX = ".old"
LEGACY_WRITER_FILE = ".gloss_writer.json"  # gloss <= stop 13 kept the record inside the temp folder
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
STAT_START_FIELD = 19  # starttime in /proc/PID/stat, counted after the ")" that ends the command name
AT_FDCWD = -100
RENAME_EXCHANGE = 2  # linux/fs.h
RENAME_SWAP = 2  # macOS sys/stdio.h
# A writer fills its record within microseconds of creating it; an empty or unreadable record this old was
# left by a writer killed in between.
UNREADABLE_RECORD_S = 10.0


# --- who writes: a record that tells whether its writer still runs ---


def writer_record(path: Path) -> dict[str, Any]:
    """Who is writing a temp folder for ``path``: pid, host, boot id and the process's start time."""
    pid = os.getpid()
    return {"target": Path(path).name, "pid": pid, "host": socket.gethostname(), "boot_id": _boot_id(),
            "pid_namespace": _pid_namespace(), "start_ticks": _start_ticks(pid)}  # fmt: skip


def writer_is_gone(record: dict[str, Any]) -> bool:
    """True only if the process a writer record names has surely ended (unknown cases count as alive).

    A record from another host or PID namespace (another container) proves nothing here; another boot id
    means the machine restarted since; a live pid with another start time is a new process that reused it.
    """
    if record.get("host") != socket.gethostname() or record.get("pid_namespace") != _pid_namespace():
        return False
    boot_id = _boot_id()
    if boot_id is not None and record.get("boot_id") not in (None, boot_id):
        return True
    pid = record.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except (ProcessLookupError, OverflowError):
        return True
    except PermissionError:
        pass  # exists, owned by another user
    started = record.get("start_ticks")
    now = _start_ticks(pid)
    return started is not None and now is not None and started != now


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


# --- one writer's files ---


@dataclass(frozen=True)
class Workspace:
    """The files of one writer of ``target``: its record, its work folder and the old folder's parking place."""

    target: Path
    token: str

    @property
    def record(self) -> Path:
        return self.target.parent / f".{self.target.name}.{self.token}{WRITER_SUFFIX}"

    @property
    def work(self) -> Path:
        return self.target.parent / f".{self.target.name}.{self.token}{WORK_SUFFIX}"

    @property
    def old(self) -> Path:
        return self.target.parent / f".{self.target.name}.{self.token}{OLD_SUFFIX}"

    @classmethod
    def create(cls, target: Path) -> Workspace:
        """Write the record (first, so nothing of this writer is ever untracked), then the work folder."""
        while True:
            space = cls(target, secrets.token_hex(6))
            try:
                fd = os.open(space.record, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(writer_record(target), handle)
            os.mkdir(space.work)
            follow_umask(space.work, directory=True)  # a service running as another user must read it
            return space

    def remove(self) -> None:
        """Delete the work and old folders, then the record."""
        for folder in (self.work, self.old):
            if folder.is_symlink() or folder.is_file():
                folder.unlink()
            elif folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
        if not self.work.exists() and not self.old.exists():
            self.record.unlink(missing_ok=True)


def remove_stale(path: Path) -> list[Path]:
    """Delete what writers of ``path`` that are gone left beside it (work and old folders, their records).

    A record whose writer may still run keeps its folders. If a writer that is gone died between the two
    renames of the fallback swap (``path`` missing, its ``.old`` folder present), the old folder is put back.
    Leftovers of gloss versions before records sat beside the folders are handled too: a ``.NAME.*.tmp``
    folder with a record inside it, and a ``.NAME.*.old`` folder that no record claims (that version only
    made one for the instant of a swap).

    Returns:
        The folders and records removed.
    """
    path = Path(path)
    prefix = f".{glob.escape(path.name)}."
    removed: list[Path] = []
    claimed: set[Path] = set()
    for record_path in sorted(path.parent.glob(prefix + "*" + WRITER_SUFFIX)):
        token = record_path.name[len(path.name) + 2:-len(WRITER_SUFFIX)]
        space = Workspace(path, token)
        claimed |= {space.work, space.old}
        record = _read_record(record_path)
        if record is None:
            if not _older_than(record_path, UNREADABLE_RECORD_S):
                continue
        elif record.get("target") != path.name or not writer_is_gone(record):
            continue
        if space.old.is_dir() and not path.exists() and not path.is_symlink():
            os.rename(space.old, path)  # its writer died between the fallback's two renames: put the old one back
            logger.warning("%s: put back the previous folder that an interrupted writer had moved aside", path)
        removed += [p for p in (space.work, space.old, space.record) if p.exists() or p.is_symlink()]
        space.remove()
        logger.info("removed the leftovers of %s: their writer (process %s) is gone", path,
                    record.get("pid") if record else "unknown")
    for folder in sorted(path.parent.glob(prefix + "*" + WORK_SUFFIX)):
        record = _read_record(folder / LEGACY_WRITER_FILE)
        if folder in claimed or folder.is_symlink() or record is None:
            continue
        if record.get("target") == path.name and writer_is_gone(record):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    for folder in sorted(path.parent.glob(prefix + "*" + OLD_SUFFIX)):
        if folder not in claimed and folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


# --- the swap ---


@functools.cache
def _exchange_call() -> Any:
    """libc's folder-exchanging rename for this platform, or None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None
    if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
        fn = libc.renameat2
        return lambda a, b: fn(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE)
    if sys.platform == "darwin" and hasattr(libc, "renamex_np"):
        fn = libc.renamex_np
        return lambda a, b: fn(a, b, RENAME_SWAP)
    return None


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step. False where the platform or file system cannot.

    Raises:
        OSError: If the exchange is supported but failed (e.g. permissions).
    """
    call = _exchange_call()
    if call is None:
        return False
    if call(os.fsencode(a), os.fsencode(b)) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def swap_into_place(space: Workspace, path: Path) -> None:
    """Put ``space.work`` at ``path``; an old ``path`` ends up in ``space.work`` (or ``space.old``), never lost."""
    if not path.exists() and not path.is_symlink():
        os.rename(space.work, path)
        return
    if exchange(space.work, path):
        return
    logger.debug("%s: no atomic exchange on this file system; renaming the old folder aside", path)
    os.rename(path, space.old)
    try:
        os.rename(space.work, path)
    except OSError:
        os.rename(space.old, path)  # put the previous version back
        raise


# --- the public entry point ---


def check_replaceable(path: Path, marker: str, ignore: tuple[str, ...] = ()) -> None:
    """Raise InputError unless ``path`` is absent, an empty folder (entries named in ``ignore`` aside), or a folder
    holding ``marker``."""
    if path.is_file():
        raise InputError(f"{path}: is a file; give a folder path for the output")
    if path.is_dir() and any(p.name not in ignore for p in path.iterdir()) and not (path / marker).is_file():
        raise InputError(
            f"{path}: folder exists and has no {marker}, so it was not written by gloss; "
            "choose a new or empty output folder"
        )


@contextmanager
def atomic_dir(path: Path, marker: str, ignore: tuple[str, ...] = ()) -> Iterator[Path]:
    """Build a folder in a work folder beside ``path``; swap it into place only if the block succeeds.

    An existing ``path`` is replaced only if it is empty or holds ``marker`` (the file that shows it was
    written by gloss), so a mistyped ``--out-dir`` never deletes an unrelated folder. What interrupted
    writers of the same ``path`` left behind is removed first (only once their process is gone), and the
    result follows the user's umask. Entries named in ``ignore`` do not make a folder without ``marker`` foreign
    (e.g. the download folder ``gloss-train prepare`` keeps inside its output; the block carries them over).

    Raises:
        InputError: If ``path`` is a file, a non-empty folder without ``marker``, or cannot be created there.
    """
    path = Path(path)
    check_replaceable(path, marker, ignore)
    make_parent_dir(path)
    remove_stale(path)
    try:
        space = Workspace.create(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot create the output folder there ({exc.strerror})") from None
    try:
        yield space.work
        check_replaceable(path, marker, ignore)
        swap_into_place(space, path)
    finally:
        space.remove()


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > seconds
    except OSError:
        return False


def _boot_id() -> str | None:
    try:
        return BOOT_ID_PATH.read_text(encoding="ascii").strip() or None
    except OSError:
        return None


def _pid_namespace() -> str | None:
    """This process's PID namespace (``pid:[4026531836]``), or None where unknown (not Linux)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    """Start time of a process in clock ticks after boot (Linux), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
        return int(stat.rsplit(")", 1)[1].split()[STAT_START_FIELD])
    except (OSError, IndexError, ValueError):
        return None

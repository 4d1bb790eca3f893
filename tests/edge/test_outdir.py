"""gloss.edge.outdir: an output folder's path holds the old or the new folder whatever kills the writer."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gloss.edge import outdir
from gloss.edge.errors import InputError
from gloss.edge.outdir import Workspace, atomic_dir, remove_stale, writer_is_gone

MARKER = "done.json"

# A writer that replaces ``target`` with generation N, N+1, ... forever: each folder holds three files
# that all say the same generation, and the marker says it too.
WRITER = """
import sys
from pathlib import Path
from gloss.edge.outdir import atomic_dir
target, start = Path(sys.argv[1]), int(sys.argv[2])
for generation in range(start, start + 100000):
    with atomic_dir(target, marker="done.json") as tmp:
        for name in ("a", "b", "c"):
            (tmp / name).write_text(str(generation) * 2000)
        (tmp / "done.json").write_text(str(generation) * 2000)
"""

# Replace ``target`` once, and SIGKILL itself at a named step of the swap.
KILL_AT = """
import os, signal, sys
from pathlib import Path
from gloss.edge import outdir
target, step, no_exchange = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
if no_exchange:
    outdir.exchange = lambda a, b: False
real_rename, real_exchange, real_remove = os.rename, outdir.exchange, outdir.Workspace.remove
def rename(a, b):
    real_rename(a, b)
    if step == "after-first-rename":
        os.kill(os.getpid(), signal.SIGKILL)
def exchange(a, b):
    done = real_exchange(a, b)
    if step == "after-exchange":
        os.kill(os.getpid(), signal.SIGKILL)
    return done
def remove(self):
    if step == "while-removing-old":
        (self.work / "a").unlink()  # part of the old folder is gone, then the writer is killed
        os.kill(os.getpid(), signal.SIGKILL)
    real_remove(self)
os.rename, outdir.exchange, outdir.Workspace.remove = rename, exchange, remove
with outdir.atomic_dir(target, marker="done.json") as tmp:
    for name in ("a", "b", "c"):
        (tmp / name).write_text("new")
    (tmp / "done.json").write_text("new")
    if step == "before-swap":
        os.kill(os.getpid(), signal.SIGKILL)
"""


def _write(target: Path, version: str) -> None:
    with atomic_dir(target, marker=MARKER) as tmp:
        for name in ("a", "b", "c"):
            (tmp / name).write_text(version)
        (tmp / MARKER).write_text(version)


def _version(target: Path) -> str:
    """The one version a folder holds; fails on a missing or mixed folder."""
    versions = {(target / name).read_text() for name in ("a", "b", "c", MARKER)}
    assert len(versions) == 1, versions
    return versions.pop()


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=60)


def test_replacing_a_folder_swaps_in_the_new_one_and_leaves_nothing_beside_it(tmp_path: Path) -> None:
    target = tmp_path / "out"
    _write(target, "v1")
    _write(target, "v2")
    assert _version(target) == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failed_build_keeps_the_old_folder_and_removes_its_work(tmp_path: Path) -> None:
    target = tmp_path / "out"
    _write(target, "v1")
    with pytest.raises(RuntimeError), atomic_dir(target, marker=MARKER) as tmp:
        (tmp / "a").write_text("half")
        raise RuntimeError("build failed")
    assert _version(target) == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _needs_exchange(folder: Path) -> None:
    (folder / "x").mkdir()
    (folder / "y").mkdir()
    try:
        supported = outdir.exchange(folder / "x", folder / "y")
    finally:
        (folder / "x").rmdir()
        (folder / "y").rmdir()
    if not supported:
        pytest.skip("no atomic folder exchange on this platform or file system")


def test_kill_at_random_moments_always_leaves_a_whole_folder_at_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The audit's kill -9 between two renames, at random: the path never misses or mixes a folder."""
    _needs_exchange(tmp_path)
    monkeypatch.setattr(outdir, "UNREADABLE_RECORD_S", 0.0)  # a kill may land between a record's open and write
    target = tmp_path / "out"
    _write(target, "0" * 2000)
    rng = random.Random(0)
    for round_ in range(12):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(round_ * 100000 + 1)])
        time.sleep(0.4 + rng.random() * 0.4)  # python start-up, then somewhere inside a write loop
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        assert _version(target)  # a whole folder, one generation
    remove_stale(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize(("step", "expected"), [("before-swap", "old"), ("after-exchange", "new"),
                                                ("while-removing-old", "new")])
def test_kill_during_a_swap_leaves_old_or_new_and_the_next_writer_cleans_up(
    tmp_path: Path, step: str, expected: str
) -> None:
    _needs_exchange(tmp_path)
    target = tmp_path / "out"
    _write(target, "old")
    result = _run(KILL_AT, target, step, "0")
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert _version(target) == expected
    assert len(list(tmp_path.glob(".out.*.writer"))) == 1  # what it left is claimed by its record
    _write(target, "next")  # the next writer removes the leftovers once their writer is gone
    assert _version(target) == "next"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_fallback_without_exchange_keeps_the_old_folder_readable_and_the_next_writer_puts_it_back(
    tmp_path: Path,
) -> None:
    target = tmp_path / "out"
    _write(target, "old")
    result = _run(KILL_AT, target, "after-first-rename", "1")
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert not target.exists()
    (aside,) = tmp_path.glob(".out.*.old")
    assert _version(aside) == "old"  # readable while it is aside
    remove_stale(target)
    assert _version(target) == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_old_folder_of_a_gloss_before_records_is_removed(tmp_path: Path) -> None:
    """gloss <= stop 13 renamed the old folder to ``.NAME.<random>.old/content`` with no record; a kill while it
    was deleted left it forever (audit defect 4)."""
    target = tmp_path / "out"
    _write(target, "v1")
    legacy = tmp_path / ".out.x1y2z3.old"
    (legacy / "content").mkdir(parents=True)
    (legacy / "content" / MARKER).write_text("v0")
    _write(target, "v2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_live_writers_leftovers_are_kept(tmp_path: Path) -> None:
    target = tmp_path / "out"
    space = Workspace.create(target)  # this process: alive
    (space.work / "a").write_text("in progress")
    assert not writer_is_gone(json.loads(space.record.read_text()))
    assert remove_stale(target) == []
    assert space.work.is_dir()
    space.remove()
    assert list(tmp_path.iterdir()) == []


def test_work_folder_follows_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        with atomic_dir(tmp_path / "out", marker=MARKER) as tmp:
            mode = tmp.stat().st_mode & 0o777
    finally:
        os.umask(old)
    assert mode == 0o750


@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_an_output_path_that_cannot_be_created_is_one_input_error(tmp_path: Path, where: str) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    target = afile / "sub" if where == "under-a-file" else Path("/proc/gloss-cannot-exist")
    with pytest.raises(InputError, match="cannot create"), atomic_dir(target, marker=MARKER):
        pass


def test_refuses_to_replace_a_folder_it_did_not_write(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.mkdir()
    (target / "thesis.tex").write_text("x")
    with pytest.raises(InputError, match="not written by gloss"), atomic_dir(target, marker=MARKER):
        pass
    assert (target / "thesis.tex").exists()


def test_an_empty_record_is_kept_while_fresh_and_removed_once_old(tmp_path: Path) -> None:
    """A writer killed between creating its record and writing it leaves an empty record (and nothing else)."""
    target = tmp_path / "out"
    record = tmp_path / ".out.0123456789ab.writer"
    record.write_text("")
    assert remove_stale(target) == [] and record.exists()
    past = time.time() - outdir.UNREADABLE_RECORD_S - 1
    os.utime(record, (past, past))
    assert remove_stale(target) == [record] and not record.exists()

"""When SHA-256 runs (gloss.edge.verified): a file changed after the stamp is hashed and refused at the next cold
start even when its size and modification time were put back; what the stamp cannot see is left to ``inspect``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gloss.edge.bundle import CATALOG_ARRAYS_FILE, COPURCHASE_FILE, INDEX_FILE, load_bundle
from gloss.edge.catalog import load_catalog
from gloss.edge.cli import app
from gloss.edge.errors import InputError
from gloss.edge.verified import is_verified, record_verified
from tests.conftest import CATALOG_PATH, copy_bundle
from tests.fakes import error_line

PARTS = [INDEX_FILE, CATALOG_ARRAYS_FILE, COPURCHASE_FILE, "embedder/model.onnx"]
runner = CliRunner()


def rewrite_in_place(path: Path) -> None:
    """Flip one byte in the middle of ``path`` in place, then set its access and modification times back."""
    before = path.stat()
    with open(path, "r+b") as handle:
        handle.seek(before.st_size // 2)
        byte = handle.read(1)
        handle.seek(before.st_size // 2)
        handle.write(bytes([byte[0] ^ 0x5A]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)


def recommend(bundle_dir: Path):
    item = load_catalog(CATALOG_PATH).asins[0]
    return runner.invoke(app, ["recommend", str(bundle_dir), "--last-item", "--item", item])


@pytest.mark.parametrize("part", PARTS)
def test_a_file_changed_after_the_stamp_with_size_and_mtime_put_back_is_refused(
    fusion_bundle: Path, tmp_path: Path, part: str
) -> None:
    bundle_dir = copy_bundle(fusion_bundle, tmp_path / "b")
    load_bundle(bundle_dir)  # a copy is hashed once and stamped
    files = load_bundle(bundle_dir).manifest["files"]
    assert is_verified(bundle_dir, files)
    rewrite_in_place(bundle_dir / part)
    assert not is_verified(bundle_dir, files)  # the status-change time moved; nobody can set it back
    result = recommend(bundle_dir)  # a cold start: hashes every file before it answers
    assert result.exit_code == 2 and f"{Path(part).name}: SHA-256 differs" in error_line(result)
    with pytest.raises(InputError, match="SHA-256 differs"):
        load_bundle(bundle_dir)  # and keeps refusing: a failed check records nothing


def test_a_change_the_stamp_cannot_see_is_refused_by_inspect(fusion_bundle: Path, tmp_path: Path) -> None:
    """The limit: bytes that change while every stat field stays (failing media, a stamp rewritten by hand) pass a
    cold start, which trusts the stamp; ``gloss-edge inspect`` (``--verify``, the default) hashes every file."""
    bundle_dir = copy_bundle(fusion_bundle, tmp_path / "b")
    files = load_bundle(bundle_dir).manifest["files"]
    rewrite_in_place(bundle_dir / INDEX_FILE)
    record_verified(bundle_dir, files)  # as if the file system had not seen the change
    load_bundle(bundle_dir)  # trusted: the documented limit (gloss.edge.verified)
    result = runner.invoke(app, ["inspect", str(bundle_dir)])
    assert result.exit_code == 2 and "vectors.npy: SHA-256 differs" in error_line(result)
    with pytest.raises(InputError, match="vectors.npy: SHA-256 differs"):
        load_bundle(bundle_dir).verify(rehash=True)
    result = runner.invoke(app, ["inspect", str(bundle_dir), "--no-verify"])
    assert result.exit_code == 0, result.output  # sizes and headers only: what --no-verify promises

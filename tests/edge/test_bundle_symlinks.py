"""A bundle never follows a symbolic link out of its folder: parts listed in the manifest that are links (or sit
in a linked folder) are refused on load, even with the right size and checksum (issue 17)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gloss.edge.bundle import CATALOG_FILE, EMBEDDER_DIR, load_bundle
from gloss.edge.cli import app
from gloss.edge.errors import InputError
from tests.conftest import copy_bundle
from tests.fakes import error_line


@pytest.fixture
def bundle(tiny_bundle: Path, tmp_path: Path) -> Path:
    return copy_bundle(tiny_bundle, tmp_path / "bundle")


def link_file_outside(bundle: Path, rel: str, outside: Path) -> Path:
    """Move a part out of the bundle and leave a symlink in its place (same bytes: size and hash still match)."""
    part = bundle / rel
    target = outside / part.name
    outside.mkdir(exist_ok=True)
    shutil.move(part, target)
    part.symlink_to(target)
    return part


def test_a_part_linked_to_a_file_outside_is_refused(bundle: Path, tmp_path: Path):
    part = link_file_outside(bundle, CATALOG_FILE, tmp_path / "outside")
    with pytest.raises(InputError, match=f"{part}: a symbolic link"):
        load_bundle(bundle)
    with pytest.raises(InputError, match="a symbolic link"):
        load_bundle(bundle, verify=False)


def test_a_part_linked_to_another_file_inside_is_refused_too(bundle: Path):
    part = bundle / CATALOG_FILE
    shutil.copyfile(part, bundle / "copy.jsonl.gz")
    part.unlink()
    part.symlink_to("copy.jsonl.gz")
    with pytest.raises(InputError, match="a symbolic link"):
        load_bundle(bundle)


def test_a_part_inside_a_linked_folder_is_refused(bundle: Path, tmp_path: Path):
    embedder = bundle / EMBEDDER_DIR
    shutil.move(embedder, tmp_path / "elsewhere")
    embedder.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(InputError, match=f"{embedder}: a symbolic link"):
        load_bundle(bundle)


def test_a_bundle_reached_through_a_link_to_its_folder_loads(bundle: Path, tmp_path: Path):
    link = tmp_path / "current"
    link.symlink_to(bundle, target_is_directory=True)  # e.g. a deploy that flips a "current" link
    assert len(load_bundle(link).catalog) == len(load_bundle(bundle).catalog)


def test_inspect_refuses_a_linked_part_in_one_line(bundle: Path, tmp_path: Path):
    link_file_outside(bundle, CATALOG_FILE, tmp_path / "outside")
    result = CliRunner().invoke(app, ["inspect", str(bundle)])
    assert result.exit_code == 2 and "a symbolic link" in error_line(result), result.output

"""load_bundle on a bundle of real Beauty titles with a tiny ONNX embedder, and the ways it can break."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from gloss.edge.bundle import (
    CATALOG_FILE,
    EMBEDDER_DIR,
    FORMAT_VERSION,
    INDEX_FILE,
    MANIFEST_NAME,
    file_entries,
    load_bundle,
)
from gloss.edge.catalog import load_catalog
from gloss.edge.errors import InputError
from gloss.edge.index import ItemIndex
from gloss.edge.prompt import PROMPT_TEMPLATE, render_item
from gloss.export.bundle import build_bundle
from tests.conftest import FIXTURES
from tests.edge.test_embed import write_tiny_embedder

CATALOG_PATH = FIXTURES / "beauty_items.jsonl"


def catalog_texts() -> list[str]:
    return [render_item(title) for title in load_catalog(CATALOG_PATH).titles]


@pytest.fixture(scope="module")
def built_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bundle")
    embedder_dir = write_tiny_embedder(root / "tiny-embedder", texts=catalog_texts())
    return build_bundle(
        CATALOG_PATH, root / "beauty", embedder_dir=embedder_dir, name="beauty", show_progress=False
    )


@pytest.fixture
def bundle_copy(built_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built_bundle, tmp_path / "beauty"))


def edit_manifest(bundle_dir: Path, change: Callable[[dict], None]) -> None:
    path = bundle_dir / MANIFEST_NAME
    manifest = json.loads(path.read_text(encoding="utf-8"))
    change(manifest)
    path.write_text(json.dumps(manifest), encoding="utf-8")


def test_load_bundle_round_trip(built_bundle: Path) -> None:
    bundle = load_bundle(built_bundle)
    assert bundle.catalog == load_catalog(CATALOG_PATH)
    assert bundle.name == "beauty" and bundle.paths.generator is None
    assert bundle.manifest["format_version"] == FORMAT_VERSION
    assert bundle.manifest["prompt_template"] == PROMPT_TEMPLATE
    listed = set(bundle.manifest["files"])
    on_disk = {p.relative_to(built_bundle).as_posix() for p in built_bundle.rglob("*") if p.is_file()}
    assert listed == on_disk - {MANIFEST_NAME}
    embedder, index = bundle.open_embedder(), bundle.open_index()
    assert embedder.dim == index.dim == bundle.manifest["index"]["dim"]
    assert len(index) == len(bundle.catalog) == bundle.manifest["catalog"]["num_items"]
    # An item's own title retrieves it (or an item with the same title) with similarity ~1.
    query_positions = [0, 17, len(bundle.catalog) - 1]
    vectors = embedder.embed([render_item(bundle.catalog.titles[i]) for i in query_positions])
    positions, sims = index.search(vectors, k=1)
    found = [bundle.catalog.titles[p] for p in positions[:, 0]]
    assert found == [bundle.catalog.titles[i] for i in query_positions]
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-5)


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-10])


def _swap_embedder_dim(bundle_dir: Path) -> None:
    """Replace the embedder by one of another width and re-list the files, as a careless edit would."""
    shutil.rmtree(bundle_dir / EMBEDDER_DIR)
    write_tiny_embedder(bundle_dir / EMBEDDER_DIR, texts=catalog_texts(), dim=8)
    entries = file_entries(bundle_dir)
    edit_manifest(bundle_dir, lambda m: m.update(files=entries))


def _swap_index(bundle_dir: Path) -> None:
    """Replace the index by one of fewer items and re-list the files."""
    vectors = ItemIndex.load(bundle_dir / INDEX_FILE, view=False).vectors()[:40]
    ItemIndex.build(vectors, show_progress=False).save(bundle_dir / INDEX_FILE)
    entries = file_entries(bundle_dir)
    edit_manifest(bundle_dir, lambda m: m.update(files=entries))


BREAKAGES: list[tuple[str, Callable[[Path], object], str]] = [
    (
        "no-manifest",
        lambda d: (d / MANIFEST_NAME).unlink(),
        "not a gloss bundle; build one with gloss-export bundle",
    ),
    ("bad-json", lambda d: (d / MANIFEST_NAME).write_text("{", encoding="utf-8"), "not valid JSON"),
    ("version", lambda d: edit_manifest(d, lambda m: m.update(format_version=99)), "format_version 99"),
    ("no-section", lambda d: edit_manifest(d, lambda m: m.pop("index")), "section 'index'"),
    ("missing-file", lambda d: (d / INDEX_FILE).unlink(), f"{INDEX_FILE}: missing from the bundle"),
    ("truncated", lambda d: _truncate(d / CATALOG_FILE), f"{CATALOG_FILE}: size .*truncated"),
    ("tampered", lambda d: _flip_byte(d / EMBEDDER_DIR / "model.onnx"), "model.onnx: SHA-256 differs"),
    ("unlisted", lambda d: edit_manifest(d, lambda m: m["files"].pop(INDEX_FILE)), "no checksum for"),
    (
        "escape",
        lambda d: edit_manifest(d, lambda m: m["files"].update({"../x": {"size": 1, "sha256": ""}})),
        "leaves the bundle",
    ),
    ("dim", _swap_embedder_dim, "embedder dim 8 .* != index dim 16"),
    (
        "num-items",
        lambda d: edit_manifest(d, lambda m: m["index"].update(num_items=m["index"]["num_items"] + 1)),
        "manifest item counts differ",
    ),
    ("swapped-index", _swap_index, "catalogue has 441 items but the index has 40"),
    (
        "prompt",
        lambda d: edit_manifest(d, lambda m: m.update(prompt_template=m["prompt_template"] + " ")),
        "different prompt template",
    ),
]


@pytest.mark.parametrize(("case", "breakage", "message"), BREAKAGES, ids=[b[0] for b in BREAKAGES])
def test_load_bundle_rejects_broken_bundle(
    bundle_copy: Path, case: str, breakage: Callable[[Path], object], message: str
) -> None:
    breakage(bundle_copy)
    with pytest.raises(InputError, match=message) as info:
        load_bundle(bundle_copy)
    assert "\n" not in str(info.value)


def test_load_bundle_without_verify_skips_hashes_but_not_sizes(bundle_copy: Path) -> None:
    _flip_byte(bundle_copy / EMBEDDER_DIR / "model.onnx")  # same size, other bytes
    with pytest.raises(InputError, match="SHA-256"):
        load_bundle(bundle_copy, verify=True)
    assert len(load_bundle(bundle_copy, verify=False).catalog) == 441
    _truncate(bundle_copy / INDEX_FILE)
    with pytest.raises(InputError, match="truncated"):
        load_bundle(bundle_copy, verify=False)


def test_load_bundle_rejects_a_file_path(tmp_path: Path) -> None:
    path = tmp_path / "file.txt"
    path.write_text("x", encoding="utf-8")
    with pytest.raises(InputError, match="not a directory"):
        load_bundle(path)


def test_bundle_runs_without_torch(built_bundle: Path) -> None:
    """Loading a bundle, embedding and searching never import torch or transformers."""
    code = f"""
import sys
sys.modules["torch"] = None
sys.modules["transformers"] = None
from pathlib import Path
from gloss.edge.bundle import load_bundle
bundle = load_bundle(Path({str(built_bundle)!r}))
vectors = bundle.open_embedder().embed(["Title: " + bundle.catalog.titles[3]])
positions, _ = bundle.open_index().search(vectors, k=2)
assert bundle.catalog.titles[positions[0, 0]] == bundle.catalog.titles[3]
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"

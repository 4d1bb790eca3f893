"""Bundles written before issue 16: what still loads, and what is refused in one ``Error:`` line naming the rebuild.

Before issue 16 a bundle (manifest ``format_version`` 1, as now) held its vectors in one usearch file at the root
(``index.usearch``), its co-purchase statistics as a compressed ``fusion/copurchase.npz`` (co-purchase format 1)
and no ``catalog.bin``. :func:`write_old_bundle` lays a current bundle out that way, as the writer of commit
f25dc98 did (same manifest sections and keys), so the loaders of today meet exactly what users have on disk.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gloss.edge.bundle import CATALOG_ARRAYS_FILE, CATALOG_FILE, EMBEDDER_DIR, LEGACY_INDEX_FILE, load_bundle
from gloss.edge.catalog import load_catalog
from gloss.edge.cli import app as edge_app
from gloss.edge.copurchase import CoPurchase
from gloss.edge.files import write_json_atomic
from gloss.edge.hnsw import usearch_index_class
from gloss.edge.manifest import MANIFEST_NAME, file_entries
from gloss.export.bundle import add_fusion
from gloss.export.cli import app as export_app
from tests.conftest import CATALOG_PATH, SEQUENCES_PATH
from tests.fakes import error_line

OLD_COPURCHASE_FILE = "fusion/copurchase.npz"
runner = CliRunner()


def write_old_bundle(source: Path, out: Path) -> Path:
    """``source`` (a current bundle with fusion) rewritten in the layout and manifest of gloss before issue 16."""
    bundle = load_bundle(source)
    vectors = np.asarray(bundle.open_index().vectors())  # the stored f16 values, as float32
    stats = CoPurchase.load(bundle.paths.copurchase)
    out.mkdir(parents=True)
    shutil.copyfile(source / CATALOG_FILE, out / CATALOG_FILE)
    shutil.copytree(source / EMBEDDER_DIR, out / EMBEDDER_DIR)
    old_index = usearch_index_class()(ndim=vectors.shape[1], metric="ip", dtype="f16")
    old_index.add(np.arange(len(vectors), dtype=np.uint64), vectors)
    old_index.save(str(out / LEGACY_INDEX_FILE))
    (out / "fusion").mkdir()
    np.savez_compressed(  # what CoPurchase.save wrote in format 1
        out / OLD_COPURCHASE_FILE, format_version=np.int64(1), indptr=np.asarray(stats.indptr),
        indices=np.asarray(stats.indices), data=np.asarray(stats.data), popularity=np.asarray(stats.popularity),
        window=np.int64(stats.window), decay=np.float64(stats.decay),
    )  # fmt: skip
    new = bundle.manifest
    manifest = {
        **{key: new[key] for key in ("format_version", "created", "gloss_version", "packages", "prompt_template")},
        "catalog": {"file": CATALOG_FILE, "num_items": len(vectors), "name": new["catalog"]["name"]},
        "embedder": new["embedder"],
        "index": {"file": LEGACY_INDEX_FILE, "dim": vectors.shape[1], "metric": "ip", "dtype": "f16",
                  "num_items": len(vectors), "item_text": new["index"]["item_text"]},
        "fusion": {**new["fusion"], "file": OLD_COPURCHASE_FILE, "nnz": stats.nnz},
        "files": file_entries(out),
    }
    write_json_atomic(out / MANIFEST_NAME, manifest)
    return out


@pytest.fixture(scope="module")
def old_bundle(fusion_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Read-only: copy it before changing it."""
    return write_old_bundle(fusion_bundle, tmp_path_factory.mktemp("old-bundle") / "beauty")


def recommend(bundle_dir: Path, *options: str):
    history = load_catalog(CATALOG_PATH).asins[:3]
    items = [x for asin in history for x in ("--item", asin)]
    return runner.invoke(edge_app, ["recommend", str(bundle_dir), "--last-item", "--json", *options, *items])


def test_an_old_bundle_loads_and_its_index_ranks_as_the_current_layout(old_bundle: Path,
                                                                         fusion_bundle: Path) -> None:
    bundle = load_bundle(old_bundle, rehash=True)
    assert not (old_bundle / CATALOG_ARRAYS_FILE).exists() and len(bundle.catalog) == len(load_catalog(CATALOG_PATH))
    assert bundle.open_index().kind == "exact"
    old, new = recommend(old_bundle, "--no-fusion"), recommend(fusion_bundle, "--no-fusion")
    assert old.exit_code == 0, old.output
    assert json.loads(old.stdout)["items"] == json.loads(new.stdout)["items"]


def test_an_old_bundle_with_fusion_is_refused_in_one_line_naming_the_rebuild(
    old_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gloss.export import update as update_module

    result = recommend(old_bundle)  # fusion ranks by default when the bundle has statistics
    line = error_line(result)
    assert result.exit_code == 2 and "copurchase.npz: co-purchase format 1" in line and "gloss-export fusion" in line
    result = runner.invoke(edge_app, ["inspect", str(old_bundle)])
    assert result.exit_code == 2 and "copurchase.npz: co-purchase format 1" in error_line(result)
    # An update refuses before it embeds anything, and leaves the bundle as it was.
    copy = Path(shutil.copytree(old_bundle, tmp_path / "copy"))
    before = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    added = tmp_path / "add.jsonl"
    added.write_text(json.dumps({"asin": "NEW-1", "title": "Rose Water Facial Toner 8 oz"}) + "\n", encoding="utf-8")
    opened: list[Path] = []
    monkeypatch.setattr(update_module, "open_run_embedder", lambda path, run: opened.append(path))
    result = runner.invoke(export_app, ["update", str(copy), "--add", str(added)])
    assert result.exit_code == 2 and "gloss-export fusion" in error_line(result)
    assert opened == []
    after = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    assert {k: v for k, v in after.items() if k.name != ".gloss_verified.json"} == {
        k: v for k, v in before.items() if k.name != ".gloss_verified.json"}


def test_gloss_export_fusion_brings_an_old_bundle_back(old_bundle: Path, fusion_bundle: Path,
                                                       tmp_path: Path) -> None:
    copy = Path(shutil.copytree(old_bundle, tmp_path / "copy"))
    add_fusion(copy, SEQUENCES_PATH, holdout=1)  # as fusion_bundle's statistics were made
    assert not (copy / OLD_COPURCHASE_FILE).exists()
    old, new = recommend(copy), recommend(fusion_bundle)
    assert old.exit_code == 0, old.output
    assert json.loads(old.stdout)["items"] == json.loads(new.stdout)["items"]

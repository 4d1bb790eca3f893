"""load_bundle on a bundle of real Beauty titles with a tiny ONNX embedder, and the ways it can break."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from gloss.edge.bundle import CATALOG_ARRAYS_FILE, CATALOG_FILE, EMBEDDER_DIR, INDEX_FILE, load_bundle
from gloss.edge.catalog import load_catalog
from gloss.edge.embed import CONFIG_NAME
from gloss.edge.errors import InputError
from gloss.edge.index import ItemIndex
from gloss.edge.manifest import FORMAT_VERSION, MANIFEST_NAME, VERIFIED_NAME, file_entries
from gloss.edge.outdir import LEGACY_WRITER_FILE, writer_record
from gloss.edge.prompt import PROMPT_TEMPLATE, render_item
from gloss.export.bundle import build_bundle
from tests.conftest import FIXTURES
from tests.fakes import write_tiny_embedder

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
    assert listed == on_disk - {MANIFEST_NAME, VERIFIED_NAME}
    embedder, index = bundle.open_embedder(), bundle.open_index()
    assert embedder.dim == index.dim == bundle.manifest["index"]["dim"]
    assert len(index) == len(bundle.catalog) == bundle.manifest["catalog"]["num_items"]
    # An item's own title retrieves it (or an item with the same title) with similarity ~1, up to the rounding
    # of the stored vectors (f16: a 2**-11 relative error per element, so about that much on a unit dot product).
    query_positions = [0, 17, len(bundle.catalog) - 1]
    vectors = embedder.embed([render_item(bundle.catalog.titles[i]) for i in query_positions])
    positions, sims = index.search(vectors, k=1)
    found = [bundle.catalog.titles[p] for p in positions[:, 0]]
    assert found == [bundle.catalog.titles[i] for i in query_positions]
    atol = {"f32": 1e-5, "f16": 2.0**-10, "i8": 2 / 127}[bundle.manifest["index"].get("dtype", "f32")]
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=atol)


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
    """Replace the index by one of fewer items and re-list the files and the index section, as a careless edit
    would (only the catalogue is left as it was)."""
    manifest = json.loads((bundle_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    vectors = ItemIndex.open(bundle_dir, manifest["index"]).vectors()[:40]
    section = ItemIndex.build(vectors, show_progress=False).save(bundle_dir)
    entries = file_entries(bundle_dir)
    edit_manifest(bundle_dir, lambda m: m.update(files=entries, index={**m["index"], **section}))


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
    # Hand edits that break the manifest's shape: one line naming the field, never an AttributeError.
    (
        "file-entry-string",
        lambda d: edit_manifest(d, lambda m: m["files"].update({CATALOG_FILE: "abc123"})),
        rf"files\['{CATALOG_FILE}'\] should be .* got str 'abc123'",
    ),
    (
        "file-entry-no-hash",
        lambda d: edit_manifest(d, lambda m: m["files"][CATALOG_FILE].pop("sha256")),
        rf"files\['{CATALOG_FILE}'\] should be",
    ),
    (
        "file-size-string",
        lambda d: edit_manifest(d, lambda m: m["files"][INDEX_FILE].update(size="12")),
        rf"files\['{INDEX_FILE}'\].size should be a whole number >= 0, got str '12'",
    ),
    ("files-list", lambda d: edit_manifest(d, lambda m: m.update(files=[CATALOG_FILE])), "'files' should map each"),
    ("catalog-file-int", lambda d: edit_manifest(d, lambda m: m["catalog"].update(file=3)), "catalog.file should be"),
    ("dim-bool", lambda d: edit_manifest(d, lambda m: m["index"].update(dim=True)), "index.dim should be a whole"),
    ("count-negative", lambda d: edit_manifest(d, lambda m: m["catalog"].update(num_items=-1)), "catalog.num_items"),
    ("prompt-list", lambda d: edit_manifest(d, lambda m: m.update(prompt_template=[])), "prompt_template should be"),
    ("generator-file-int", lambda d: edit_manifest(d, lambda m: m.update(generator={"file": 1})), "generator.file"),
    ("section-string", lambda d: edit_manifest(d, lambda m: m.update(embedder="embedder")), "section 'embedder'"),
    ("manifest-list", lambda d: (d / MANIFEST_NAME).write_text("[]", encoding="utf-8"), "expected a JSON object"),
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


# --- interrupted builds (issue 11): stale temp folders, file modes ---


def _build(out_dir: Path, embedder_dir: Path) -> Path:
    return build_bundle(CATALOG_PATH, out_dir, embedder_dir=embedder_dir, name="beauty", show_progress=False)


@pytest.fixture(scope="module")
def tiny_embedder_dir(built_bundle: Path) -> Path:
    return built_bundle / EMBEDDER_DIR


def _temp_dir_with_record(target: Path, changes: dict) -> Path:
    """A temp folder as gloss before stop 14 made it (``.NAME.<random>.tmp``, the record inside), the record edited."""
    record = {**writer_record(target), **changes}
    folder = target.parent / f".{record['target']}.k9x_2.tmp"  # '.beauty.v2.*.tmp' also matches '.beauty.*.tmp'
    folder.mkdir()
    (folder / "index.usearch").write_bytes(b"half-written")
    (folder / LEGACY_WRITER_FILE).write_text(json.dumps(record), encoding="utf-8")
    return folder


def _dead_pid() -> int:
    """The pid of a process that has ended (and was reaped), as a ``kill -9``-ed build leaves it."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


STALE_CASES = [
    ("dead-pid", lambda: {"pid": _dead_pid(), "start_ticks": None}, True),
    ("pid-beyond-pid-max", lambda: {"pid": 2**22 + 1, "start_ticks": None}, True),
    ("pid-reused", lambda: {"start_ticks": -1}, True),  # our own pid, but another process's start time
    ("rebooted", lambda: {"boot_id": "another-boot"}, True),
    ("live-writer", lambda: {}, False),  # this process: a build running now
    ("other-host", lambda: {"pid": _dead_pid(), "host": "another-host"}, False),  # cannot check: keep
    ("other-container", lambda: {"pid": _dead_pid(), "pid_namespace": "pid:[1]"}, False),  # cannot check: keep
    ("other-target", lambda: {"pid": _dead_pid(), "target": "beauty.v2"}, False),
]


@pytest.mark.parametrize(("case", "record", "removed"), STALE_CASES, ids=[c[0] for c in STALE_CASES])
def test_next_build_removes_only_temp_folders_whose_writer_is_gone(
    tiny_embedder_dir: Path, tmp_path: Path, case: str, record: Callable[[], dict], removed: bool
) -> None:
    target = tmp_path / "beauty"
    stale = _temp_dir_with_record(target, record())
    no_record = tmp_path / f".{target.name}.norecord.tmp"  # another tool's, or one being created: keep
    no_record.mkdir()
    _build(target, tiny_embedder_dir)
    assert stale.exists() is not removed
    assert no_record.exists()
    assert load_bundle(target).catalog == load_catalog(CATALOG_PATH)
    assert not list(target.rglob("*.writer")) and not (target / LEGACY_WRITER_FILE).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["beauty", no_record.name] + ([] if removed else [stale.name]))


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_bundle_files_follow_the_umask(tiny_embedder_dir: Path, tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        bundle_dir = _build(tmp_path / "beauty", tiny_embedder_dir)
    finally:
        os.umask(old)
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode)
             for p in [bundle_dir, *bundle_dir.rglob("*")]}
    for path in [bundle_dir, *bundle_dir.rglob("*")]:
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert stat.S_IMODE(path.stat().st_mode) == expected, modes


def _relisted(change: Callable[[Path], object]) -> Callable[[Path], None]:
    """Change a bundle file, then re-list the checksums, as someone who 'fixes' the manifest would."""

    def apply(bundle_dir: Path) -> None:
        change(bundle_dir)
        entries = file_entries(bundle_dir)
        edit_manifest(bundle_dir, lambda m: m.update(files=entries))

    return apply


def _without_compact_catalogue(change: Callable[[Path], object]) -> Callable[[Path], object]:
    """As a bundle built before catalog.bin existed: the JSONL is what load_bundle parses."""

    def apply(bundle_dir: Path) -> None:
        (bundle_dir / CATALOG_ARRAYS_FILE).unlink()
        edit_manifest(bundle_dir, lambda m: m["catalog"].pop("arrays"))
        change(bundle_dir)

    return apply


LATIN1_ROW = b'{"asin": "A", "title": "Cr\xe8me"}\n'
LATIN1_MANIFEST = b'{"format_version": 1, "note": "\xe9"}'
BAD_BYTES: list[tuple[str, Callable[[Path], None], str]] = [
    ("catalog-not-gzip",
     _relisted(_without_compact_catalogue(lambda d: (d / CATALOG_FILE).write_bytes(b"\x1f\x8b junk" * 8))),
     f"{CATALOG_FILE}: cannot be read as gzipped JSON Lines"),
    ("catalog-changed", _relisted(lambda d: (d / CATALOG_FILE).write_bytes(gzip.compress(LATIN1_ROW))),
     f"{CATALOG_ARRAYS_FILE}: built from another catalogue file than the bundle's"),
    ("catalog-latin1",
     _relisted(_without_compact_catalogue(lambda d: (d / CATALOG_FILE).write_bytes(gzip.compress(LATIN1_ROW)))),
     rf"{CATALOG_FILE} \(decompressed\): not UTF-8 text: byte 0xe8 at byte offset {LATIN1_ROW.index(0xE8)} "
     r"\(line 1\)"),
    ("index-zeros", _relisted(lambda d: (d / INDEX_FILE).write_bytes(bytes(4096))),
     f"{INDEX_FILE}: not a vectors .npy file"),
    ("embedder-config-utf16", _relisted(lambda d: (d / EMBEDDER_DIR / CONFIG_NAME).write_bytes(b"\xff\xfe{\x00}\x00")),
     f"{CONFIG_NAME}: not UTF-8 text: byte 0xff at byte offset 0"),
    ("embedder-config-list", _relisted(lambda d: (d / EMBEDDER_DIR / CONFIG_NAME).write_text("[16]")),
     f"{CONFIG_NAME}: expected a JSON object, got list"),
    ("manifest-latin1", lambda d: (d / MANIFEST_NAME).write_bytes(LATIN1_MANIFEST),
     f"{MANIFEST_NAME}: not UTF-8 text: byte 0xe9 at byte offset {LATIN1_MANIFEST.index(0xE9)} .line 1.; rebuild it"),
]


@pytest.mark.parametrize(("case", "breakage", "message"), BAD_BYTES, ids=[b[0] for b in BAD_BYTES])
def test_bad_bytes_in_a_bundle_file_are_one_input_error(bundle_copy: Path, case: str, breakage, message: str) -> None:
    breakage(bundle_copy)
    with pytest.raises(InputError, match=message) as info:
        load_bundle(bundle_copy)
    assert "\n" not in str(info.value)


def test_a_zip_or_other_file_is_not_co_purchase_statistics(tmp_path: Path) -> None:
    from gloss.edge.copurchase import CoPurchase

    path = tmp_path / "copurchase.npz"
    path.write_bytes(b"PK\x03\x04 not a zip")  # a format-1 .npz, or anything else zipped
    with pytest.raises(InputError, match="co-purchase format 1 .a compressed .npz.*rebuild it"):
        CoPurchase.load(path)
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(InputError, match="not a gloss co-purchase file"):
        CoPurchase.load(path)


def test_a_folder_is_not_a_gguf(tmp_path: Path) -> None:
    from gloss.edge.generation.gguf_header import check_gguf

    with pytest.raises(InputError, match="is a directory; expected a .gguf file"):
        check_gguf(tmp_path)


# --- when hashes run (gloss.edge.verified): sizes and headers at every load, SHA-256 when files changed ---


def count_hashes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record every file load_bundle hashes."""
    from gloss.edge import bundle as bundle_module

    hashed: list[Path] = []
    real = bundle_module.sha256_file
    monkeypatch.setattr(bundle_module, "sha256_file", lambda path: hashed.append(Path(path)) or real(path))
    return hashed


def test_a_fresh_build_loads_without_hashing_and_a_changed_file_is_hashed_again(
    tiny_embedder_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle_dir = _build(tmp_path / "beauty", tiny_embedder_dir)
    hashed = count_hashes(monkeypatch)
    load_bundle(bundle_dir)  # the build hashed what it wrote and stamped it
    load_bundle(bundle_dir)
    assert hashed == []
    load_bundle(bundle_dir, rehash=True)  # inspect's way: every file, whatever the stamp
    assert len(hashed) == len(load_bundle(bundle_dir).manifest["files"])
    hashed.clear()
    _flip_byte(bundle_dir / INDEX_FILE)  # same size, new bytes: its ctime moved, the stamp no longer vouches
    with pytest.raises(InputError, match="vectors.npy: SHA-256 differs"):
        load_bundle(bundle_dir)
    assert hashed


def test_a_copied_bundle_is_hashed_once_then_trusted(built_bundle: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    copy = Path(shutil.copytree(built_bundle, tmp_path / "copy"))  # the stamp came along, the inodes did not
    hashed = count_hashes(monkeypatch)
    load_bundle(copy)
    assert len(hashed) == len(load_bundle(copy).manifest["files"])
    hashed.clear()
    load_bundle(copy)
    assert hashed == []
    stamp = json.loads((copy / VERIFIED_NAME).read_text(encoding="utf-8"))
    assert set(stamp["files"]) == set(load_bundle(copy).manifest["files"]) | {MANIFEST_NAME}


@pytest.mark.parametrize("part", ["vectors", "graph"])
def test_recommend_refuses_a_truncated_or_corrupt_index_in_one_line(tiny_embedder_dir: Path, tmp_path: Path,
                                                                     part: str) -> None:
    from typer.testing import CliRunner

    from gloss.edge.bundle import GRAPH_FILE
    from gloss.edge.cli import app
    from tests.fakes import error_line

    bundle_dir = build_bundle(CATALOG_PATH, tmp_path / "b", embedder_dir=tiny_embedder_dir, index_kind="hnsw")
    path = bundle_dir / (INDEX_FILE if part == "vectors" else GRAPH_FILE)
    item = load_catalog(CATALOG_PATH).asins[0]
    args = ["recommend", str(bundle_dir), "--last-item", "--item", item]
    _flip_byte(path)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and f"{path.name}: SHA-256 differs" in error_line(result)
    _truncate(path)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and f"{path.name}: size" in error_line(result)


def test_exact_flag_searches_every_item_of_an_hnsw_bundle(tiny_embedder_dir: Path, tmp_path: Path) -> None:
    from gloss.edge.recommend import Recommender

    bundle_dir = build_bundle(CATALOG_PATH, tmp_path / "b", embedder_dir=tiny_embedder_dir, index_kind="hnsw")
    bundle = load_bundle(bundle_dir)
    assert bundle.manifest["index"]["kind"] == "hnsw" and not bundle.open_index().exact_default
    assert bundle.open_index(exact=True).exact_default
    recommender = Recommender.load(bundle_dir, use_generator=False, exact=True)
    assert recommender.index.exact_default
    queries = recommender.embedder.embed(["Title: " + t for t in bundle.catalog.titles[:20]])
    found, sims = recommender.index.search(queries, k=10)
    matrix = np.asarray(bundle.open_index().vectors())
    order = np.argsort(-(queries @ matrix.T), axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(found, order)


def test_a_bundle_of_the_old_layout_still_loads_and_searches_the_same(built_bundle: Path, tmp_path: Path) -> None:
    """Before issue 16 a bundle held one index.usearch (vectors + unused graph) and no index.kind: it loads,
    searched exactly, with the results of the new layout."""
    from gloss.edge.bundle import LEGACY_INDEX_FILE
    from gloss.edge.hnsw import usearch_index_class

    old_dir = Path(shutil.copytree(built_bundle, tmp_path / "old"))
    new = load_bundle(built_bundle)
    vectors = np.asarray(new.open_index().vectors())
    raw = usearch_index_class()(ndim=vectors.shape[1], metric="ip", dtype="f16")
    raw.add(np.arange(len(vectors), dtype=np.uint64), vectors)
    raw.save(str(old_dir / LEGACY_INDEX_FILE))
    shutil.rmtree(old_dir / "index")
    section = {"file": LEGACY_INDEX_FILE, "dim": vectors.shape[1], "metric": "ip", "dtype": "f16",
               "num_items": len(vectors), "item_text": new.manifest["index"]["item_text"]}
    entries = file_entries(old_dir)
    edit_manifest(old_dir, lambda m: m.update(index=section, files=entries))
    old = load_bundle(old_dir)
    index = old.open_index()
    assert index.kind == "exact" and len(index) == len(new.catalog)
    queries = vectors[::13]
    np.testing.assert_array_equal(index.search(queries, 10)[0], new.open_index().search(queries, 10)[0])
    # An update rewrites it in the current layout.
    from gloss.export.update import update_bundle

    gone = tmp_path / "gone.txt"
    gone.write_text(new.catalog.asins[0] + "\n")
    update_bundle(old_dir, remove_path=gone)
    updated = load_bundle(old_dir, rehash=True)
    assert updated.manifest["index"]["file"] == INDEX_FILE and not (old_dir / LEGACY_INDEX_FILE).exists()
    np.testing.assert_array_equal(np.asarray(updated.open_index().vectors()), vectors[1:])

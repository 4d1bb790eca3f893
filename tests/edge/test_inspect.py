"""`gloss-edge inspect`: what a bundle holds, read from its files and checked against the manifest."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gloss.edge.bundle import load_bundle
from gloss.edge.cli import app
from gloss.edge.fusion import CoPurchase
from gloss.edge.index import read_index_header
from gloss.edge.inspect import format_report, inspect_bundle
from tests.conftest import FIXTURES, copy_bundle
from tests.fakes import error_line

CATALOG_PATH = FIXTURES / "beauty_items.jsonl"
SEQUENCES_PATH = FIXTURES / "beauty_sequences.jsonl"
runner = CliRunner()


@pytest.fixture
def bundle_copy(fusion_bundle: Path, tmp_path: Path) -> Path:
    return copy_bundle(fusion_bundle, tmp_path / "bundle")


def invoke(*args):
    return runner.invoke(app, ["inspect", *[str(a) for a in args]])


def test_inspect_json_reports_what_the_files_hold(bundle_copy: Path):
    result = invoke(bundle_copy, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    bundle = load_bundle(bundle_copy)
    stats = CoPurchase.load(bundle.paths.copurchase)
    header = read_index_header(bundle.paths.index)  # the vectors file's own header
    assert report["check"] == {"ok": True, "problems": [], "notes": report["check"]["notes"]}
    assert report["catalog"]["rows"] == len(bundle.catalog) == report["catalog"]["num_items"]
    assert report["index"]["stored_items"] == header["num_items"] and report["index"]["scalar"] == header["dtype"]
    assert report["embedder"]["dim"] == header["dim"] and report["embedder"]["source"] == "tiny-test-encoder"
    assert report["fusion"]["statistics"]["items"] == len(bundle.catalog)
    assert report["fusion"]["statistics"]["pairs"] == stats.nnz == report["fusion"]["nnz"]
    assert report["fusion"]["statistics"]["items_without_purchases"] == int((stats.popularity == 0).sum())
    assert report["generator"] == {"present": False}
    sizes = {rel: entry["size"] for rel, entry in bundle.manifest["files"].items()}
    assert report["bundle"]["total_bytes"] == sum(sizes.values())
    assert report["bundle"]["bytes_per_part"]["index"] == sizes["index/vectors.npy"] == report["index"]["bytes"]
    assert report["index"]["kind"] == "exact" and report["index"]["segments"] == 1  # a small catalogue: exact search
    assert report["index"]["removed_rows"] == 0 and "graph" not in report["index"]
    assert report["bundle"]["catalog_version"] == 1


def test_inspect_table(bundle_copy: Path):
    result = invoke(bundle_copy)
    assert result.exit_code == 0, result.output
    for header in ("[bundle]", "[catalog]", "[embedder]", "[index]", "[generator]", "[fusion]", "[check]"):
        assert header in result.stdout
    assert re.search(r"status +ok", result.stdout)


def test_inspect_reports_a_tampered_file_and_exits_2(bundle_copy: Path):
    with open(bundle_copy / "catalog.jsonl.gz", "ab") as handle:
        handle.write(b"x")
    result = invoke(bundle_copy, "--json")
    assert result.exit_code == 2
    assert "catalog.jsonl.gz" in error_line(result)
    report = json.loads(result.stdout)  # the report is still printed, with the problem in it
    assert report["check"]["ok"] is False and "catalog.jsonl.gz" in report["check"]["problems"][0]


def test_inspect_notes_unlisted_files_and_refuses_a_non_bundle(bundle_copy: Path, tmp_path: Path):
    (bundle_copy / "stray.txt").write_text("not listed")
    report = inspect_bundle(bundle_copy)
    assert report.ok and any("stray.txt" in note for note in report.notes)
    result = invoke(tmp_path / "nothing")
    assert result.exit_code == 2 and "nothing" in error_line(result)


def test_inspect_shows_the_catalogue_version_after_an_update(bundle_copy: Path, tmp_path: Path):
    from gloss.export.update import update_bundle

    gone = tmp_path / "gone.txt"
    gone.write_text(load_bundle(bundle_copy).catalog.asins[0] + "\n")
    update_bundle(bundle_copy, remove_path=gone)
    report = inspect_bundle(bundle_copy)
    assert report.ok and report.sections["bundle"]["catalog_version"] == 2
    assert report.sections["catalog"]["updates"] == 1
    assert report.sections["index"]["removed_rows"] == 1 and report.sections["index"]["stored_items"] == len(
        load_bundle(bundle_copy).catalog)


def test_inspect_shows_an_hnsw_index_and_always_hashes(embedder_dir: Path, tmp_path: Path, monkeypatch):
    """The kind and graph settings come from the manifest and the files; inspect hashes even a stamped bundle."""
    from gloss.edge import bundle as bundle_module
    from gloss.export.bundle import build_bundle

    out = build_bundle(CATALOG_PATH, tmp_path / "b", embedder_dir=embedder_dir, index_kind="hnsw")
    hashed = []
    monkeypatch.setattr(bundle_module, "sha256_file", lambda path: hashed.append(path) or "0" * 64)
    report = inspect_bundle(out)
    assert not report.ok and "SHA-256 differs" in report.problems[0] and hashed  # hashed, despite the stamp
    monkeypatch.undo()
    report = inspect_bundle(out)
    assert report.ok, report.problems
    index = report.sections["index"]
    assert index["kind"] == "hnsw" and index["graph"]["rows"] == index["stored_items"] == 441
    assert index["graph"]["connectivity"] >= 2 and "embed" in index["build"]
    assert "index/graph.usearch" in format_report(report) or "hnsw" in format_report(report)


@pytest.mark.slow
def test_inspect_generator_header_and_provenance(bundle_copy: Path, smollm2_gguf_path: Path):
    from gloss.export.bundle import add_generator

    add_generator(bundle_copy, smollm2_gguf_path, generator_meta={"base_model": "SmolLM2-135M-Instruct"})
    report = inspect_bundle(bundle_copy)
    assert report.ok, report.problems
    generator = report.sections["generator"]
    assert generator["gguf"]["general.architecture"] == "llama"
    assert generator["provenance"]["base_model"] == "SmolLM2-135M-Instruct"
    assert generator["bytes"] == smollm2_gguf_path.stat().st_size
    trie = report.sections["trie"]
    assert trie["present"] and trie["num_items"] == len(load_bundle(bundle_copy).catalog)


def test_help_lists_inspect():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "inspect" in result.output
    assert "--no-verify" in runner.invoke(app, ["inspect", "--help"]).output

"""build_bundle / add_generator / `gloss-export bundle` on real Beauty titles with a tiny ONNX embedder."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gloss.edge.bundle import GENERATOR_FILE, MANIFEST_NAME, load_bundle
from gloss.edge.catalog import Catalog, load_catalog, save_catalog
from gloss.edge.embed import OnnxEmbedder
from gloss.edge.errors import InputError
from gloss.edge.index import DEFAULT_INDEX_DTYPE
from gloss.edge.prompt import render_item
from gloss.export import bundle as bundle_module
from gloss.export.bundle import DEFAULT_EMBEDDER_INT8, add_generator, build_bundle
from gloss.export.cli import app
from tests.conftest import FIXTURES

CATALOG_PATH = FIXTURES / "beauty_items.jsonl"


@pytest.fixture
def fake_gguf(tmp_path: Path, vocab_gguf_path: Path) -> Path:
    """A LLaMA GGUF without tensors but with SmolLM2's tokenizer: the bundle copies it and builds its trie."""
    return Path(shutil.copyfile(vocab_gguf_path, tmp_path / "generator.gguf"))


def without_trie(section: dict | None) -> dict:
    """A generator section without its trie subsection (tests/export/test_trie.py checks that part)."""
    assert section is not None and section["trie"]["file"] == "generator/trie.bin"
    return {key: value for key, value in section.items() if key != "trie"}


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def test_build_bundle_indexes_every_title(embedder_dir: Path, tmp_path: Path) -> None:
    out = build_bundle(CATALOG_PATH, tmp_path / "beauty", embedder_dir=embedder_dir, show_progress=False)
    assert siblings(out) == ["beauty"]  # the temp folder was renamed into place
    bundle = load_bundle(out)
    catalog = load_catalog(CATALOG_PATH)
    assert bundle.catalog == catalog and bundle.name == "beauty_items"
    manifest = bundle.manifest
    assert manifest["embedder"]["source"] == "tiny-test-encoder" and manifest["index"]["metric"] == "ip"
    assert {"numpy", "onnxruntime", "usearch", "tokenizers"} <= set(manifest["packages"])
    # Index row i is the embedding of catalogue title i, rendered like a query, stored as the default dtype
    # (the rounding of one component: 0 for f32, half an f16 step below 1, 1/127 for usearch's i8).
    assert manifest["index"]["dtype"] == DEFAULT_INDEX_DTYPE == bundle.open_index().dtype
    want = OnnxEmbedder.load(embedder_dir).embed([render_item(t) for t in catalog.titles])
    rounding = {"f32": 1e-6, "f16": 2.0**-12, "i8": 1 / 127}[DEFAULT_INDEX_DTYPE]
    np.testing.assert_allclose(bundle.open_index().vectors(), want, atol=rounding)


def test_rebuild_replaces_bundle_and_keeps_old_one_on_failure(
    embedder_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = build_bundle(CATALOG_PATH, tmp_path / "b", embedder_dir=embedder_dir, show_progress=False)
    full = load_catalog(CATALOG_PATH)
    small_path = tmp_path / "small.jsonl.gz"
    save_catalog(Catalog(full.asins[:20], full.titles[:20]), small_path)
    build_bundle(small_path, out, embedder_dir=embedder_dir, name="small", show_progress=False)
    assert len(load_bundle(out).catalog) == 20 and load_bundle(out).name == "small"

    def fail(*args: object, **kwargs: object) -> None:
        raise InputError("simulated failure while indexing")

    monkeypatch.setattr(bundle_module, "write_index", fail)
    with pytest.raises(InputError, match="simulated"):
        build_bundle(CATALOG_PATH, out, embedder_dir=embedder_dir, show_progress=False)
    assert len(load_bundle(out).catalog) == 20  # untouched
    assert siblings(out) == ["b", "small.jsonl.gz"]  # no temp folder left


def test_build_refuses_to_replace_a_foreign_folder(embedder_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not written by gloss"):
        build_bundle(CATALOG_PATH, tmp_path, embedder_dir=embedder_dir, show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_bundle_with_generator_and_add_generator(embedder_dir: Path, tmp_path: Path, fake_gguf: Path) -> None:
    meta = {"base_model": "SmolLM2-135M-Instruct", "quantization": "Q8_0"}
    out = build_bundle(
        CATALOG_PATH, tmp_path / "b", embedder_dir=embedder_dir, gguf_path=fake_gguf, generator_meta=meta
    )
    bundle = load_bundle(out)
    assert bundle.paths.generator == out / GENERATOR_FILE
    assert bundle.paths.generator.read_bytes() == fake_gguf.read_bytes()
    assert without_trie(bundle.generator_meta) == {**meta, "file": GENERATOR_FILE, "source": fake_gguf.name}

    other = tmp_path / "other.gguf"
    other.write_bytes(fake_gguf.read_bytes() + b"\x00" * 32)  # a different file with a valid header
    add_generator(out, other, {"base_model": "other"})
    updated = load_bundle(out)
    assert updated.paths.generator is not None and updated.paths.generator.read_bytes() == other.read_bytes()
    assert without_trie(updated.generator_meta) == {"base_model": "other", "file": GENERATOR_FILE,
                                                    "source": "other.gguf"}
    assert updated.catalog == bundle.catalog
    assert updated.manifest["files"][GENERATOR_FILE]["size"] == other.stat().st_size
    assert siblings(out) == sorted(["b", "generator.gguf", "other.gguf"])


def test_add_generator_to_bundle_without_one(embedder_dir: Path, tmp_path: Path, fake_gguf: Path) -> None:
    out = build_bundle(CATALOG_PATH, tmp_path / "b", embedder_dir=embedder_dir, show_progress=False)
    assert load_bundle(out).paths.generator is None
    add_generator(out, fake_gguf)
    assert load_bundle(out).paths.generator == out / GENERATOR_FILE


def test_add_generator_rejects_non_gguf_and_keeps_bundle(embedder_dir: Path, tmp_path: Path) -> None:
    out = build_bundle(CATALOG_PATH, tmp_path / "b", embedder_dir=embedder_dir, show_progress=False)
    before = (out / MANIFEST_NAME).read_bytes()
    not_gguf = tmp_path / "model.bin"
    not_gguf.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(InputError, match="not a GGUF file"):
        add_generator(out, not_gguf)
    assert (out / MANIFEST_NAME).read_bytes() == before


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing-catalog", "missing.jsonl: no such file"),
        ("bad-catalog", "needs string fields 'asin' and 'title'"),
        ("embedder-not-dir", "not a directory; export an embedder"),
        ("embedder-incomplete", "missing model.onnx"),
        ("gguf-missing", "missing.gguf: no such file"),
        ("gguf-not-gguf", "not a GGUF file"),
    ],
)
def test_cli_bundle_rejects_bad_input(embedder_dir: Path, tmp_path: Path, case: str, message: str) -> None:
    catalog, embedder, extra = str(CATALOG_PATH), str(embedder_dir), []
    if case == "missing-catalog":
        catalog = str(tmp_path / "missing.jsonl")
    elif case == "bad-catalog":
        (tmp_path / "bad.jsonl").write_text(json.dumps({"asin": "A1"}) + "\n")
        catalog = str(tmp_path / "bad.jsonl")
    elif case == "embedder-not-dir":
        embedder = str(tmp_path / "nope")
    elif case == "embedder-incomplete":
        embedder = str(shutil.copytree(embedder_dir, tmp_path / "partial"))
        (tmp_path / "partial" / "model.onnx").unlink()
    elif case == "gguf-missing":
        extra = ["--gguf", str(tmp_path / "missing.gguf")]
    else:
        (tmp_path / "x.gguf").write_bytes(b"nope")
        extra = ["--gguf", str(tmp_path / "x.gguf")]
    args = ["bundle", "--catalog", catalog, "--out-dir", str(tmp_path / "out"), "--embedder-dir", embedder]
    result = CliRunner().invoke(app, [*args, *extra])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and re.search(message, errors[0])
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_bundle_builds(embedder_dir: Path, tmp_path: Path) -> None:
    args = ["bundle", "--catalog", str(CATALOG_PATH), "--out-dir", str(tmp_path / "out")]
    result = CliRunner().invoke(app, [*args, "--embedder-dir", str(embedder_dir), "--name", "beauty"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tmp_path / "out")
    assert load_bundle(tmp_path / "out").name == "beauty"


@pytest.mark.parametrize("dtype", ["f32", "i8"])
def test_cli_bundle_index_dtype_is_stored_and_recorded(embedder_dir: Path, tmp_path: Path, dtype: str) -> None:
    args = ["bundle", "--catalog", str(CATALOG_PATH), "--out-dir", str(tmp_path / "out"), "--index-dtype", dtype]
    result = CliRunner().invoke(app, [*args, "--embedder-dir", str(embedder_dir)])
    assert result.exit_code == 0, result.output
    bundle = load_bundle(tmp_path / "out")
    assert bundle.manifest["index"]["dtype"] == dtype == bundle.open_index().dtype
    bad = CliRunner().invoke(app, [*args[:-1], "f64", "--embedder-dir", str(embedder_dir)])
    assert bad.exit_code == 2 and "f64" in bad.output


def test_cli_bundle_graph_config_builds_the_graph_it_names(embedder_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "graph.yaml"
    config.write_text("connectivity: 8\nexpansion_add: 40\nexpansion_search: 64\n")
    args = ["bundle", "--catalog", str(CATALOG_PATH), "--embedder-dir", str(embedder_dir), "--graph-config",
            str(config)]
    result = CliRunner().invoke(app, [*args, "--out-dir", str(tmp_path / "out"), "--index-kind", "hnsw"])
    assert result.exit_code == 0, result.output
    bundle = load_bundle(tmp_path / "out")
    graph = bundle.manifest["index"]["graph"]
    assert (graph["connectivity"], graph["expansion_add"], graph["expansion_search"]) == (8, 40, 64)
    index = bundle.open_index()
    assert index.hnsw.connectivity == 8 and index._graph_or_build().expansion_search == 64
    # the same titles found with the graph as by a brute-force scan of the stored vectors
    queries = np.asarray(index.vectors()[:30], dtype=np.float32)
    found, _ = index.search(queries, 1)
    assert (found[:, 0] == np.arange(30)).mean() > 0.9
    for bad, message in (("connectivity: 1\n", "connectivity must be an integer >= 2"),
                         ("ef: 3\n", "unknown graph settings"), ("connectivity: [\n", "not valid YAML")):
        config.write_text(bad)
        result = CliRunner().invoke(app, [*args, "--out-dir", str(tmp_path / "bad")])
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
        assert result.exit_code == 2 and len(errors) == 1 and message in errors[0], result.output
        assert "Traceback" not in result.stderr and not (tmp_path / "bad").exists()
    config.write_text("connectivity: 8\n")
    result = CliRunner().invoke(app, [*args, "--out-dir", str(tmp_path / "bad"), "--index-kind", "exact"])
    assert result.exit_code == 2 and "--index-kind exact builds none" in result.stderr


def test_regraph_replaces_only_the_graph_and_equals_a_build_with_those_settings(embedder_dir: Path,
                                                                               tmp_path: Path) -> None:
    from gloss.edge.hnsw import HnswConfig
    from gloss.export.bundle import regraph_bundle
    from gloss.export.embedder import EmbedRun

    one_thread = EmbedRun(threads=1)  # single-threaded graph builds are deterministic
    first, wanted = HnswConfig(connectivity=8, expansion_add=20), HnswConfig(connectivity=12, expansion_add=60)
    bundle_dir = build_bundle(CATALOG_PATH, tmp_path / "b", embedder_dir=embedder_dir, index_kind="hnsw",
                              hnsw=first, embed_run=one_thread)
    reference = build_bundle(CATALOG_PATH, tmp_path / "ref", embedder_dir=embedder_dir, index_kind="hnsw",
                             hnsw=wanted, embed_run=one_thread)
    vectors_inode = (bundle_dir / "index/vectors.npy").stat().st_ino
    old_graph = (bundle_dir / "index/graph.usearch").read_bytes()
    regraph_bundle(bundle_dir, wanted, threads=1)
    bundle, ref = load_bundle(bundle_dir), load_bundle(reference)  # checksums of the rewritten manifest hold
    assert bundle.manifest["index"]["graph"] == ref.manifest["index"]["graph"]
    assert (bundle_dir / "index/graph.usearch").read_bytes() != old_graph
    assert (bundle_dir / "index/vectors.npy").stat().st_ino == vectors_inode  # reused, not rewritten
    assert sorted(p.name for p in (bundle_dir / "index").iterdir()) == ["graph.usearch", "vectors.npy"]
    queries = np.asarray(ref.open_index().vectors()[::7], dtype=np.float32)
    np.testing.assert_array_equal(bundle.open_index().search(queries, 10)[0], ref.open_index().search(queries, 10)[0])
    config = tmp_path / "graph.json"
    config.write_text('{"expansion_search": 1}')
    result = CliRunner().invoke(app, ["regraph", str(bundle_dir), "--graph-config", str(config)])
    assert result.exit_code == 2 and result.stderr.count("Error: ") == 1 and "expansion_search" in result.stderr
    result = CliRunner().invoke(app, ["regraph", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and result.stderr.startswith("Error: ") and "Traceback" not in result.stderr
    assert load_bundle(bundle_dir).manifest["index"]["graph"] == ref.manifest["index"]["graph"]  # left as it was


def test_regraph_gives_an_exact_bundle_a_graph(embedder_dir: Path, tmp_path: Path) -> None:
    bundle_dir = build_bundle(CATALOG_PATH, tmp_path / "b", embedder_dir=embedder_dir)
    before = load_bundle(bundle_dir).open_index()
    queries = np.asarray(before.vectors()[::5], dtype=np.float32)
    want = before.search(queries, 10)
    assert before.kind == "exact"
    result = CliRunner().invoke(app, ["regraph", str(bundle_dir)])
    assert result.exit_code == 0, result.output
    after = load_bundle(bundle_dir).open_index()
    assert after.kind == "hnsw" and not after.exact_default and (bundle_dir / "index/graph.usearch").is_file()
    got = after.search(queries, 10, exact=True)  # the stored vectors are the same
    np.testing.assert_array_equal(got[0], want[0])
    assert (after.search(queries, 1)[0][:, 0] == np.arange(0, len(before), 5)).mean() > 0.9


@pytest.mark.slow
def test_build_bundle_with_default_embedder(tmp_path: Path) -> None:
    full = load_catalog(CATALOG_PATH)
    small_path = tmp_path / "small.jsonl"
    save_catalog(Catalog(full.asins[:60], full.titles[:60]), small_path)
    bundle = load_bundle(build_bundle(small_path, tmp_path / "b", show_progress=False))
    assert "all-MiniLM-L6-v2" in bundle.manifest["embedder"]["source"]
    assert bundle.manifest["embedder"]["int8"] is DEFAULT_EMBEDDER_INT8  # the footprint default, recorded
    assert bundle.manifest["embedder"]["dim"] == bundle.open_index().dim
    queries = bundle.open_embedder().embed([render_item(t) for t in bundle.catalog.titles[:10]])
    positions, _ = bundle.open_index().search(queries, k=1)
    assert [bundle.catalog.titles[p] for p in positions[:, 0]] == list(bundle.catalog.titles[:10])


def test_cli_fusion_adds_statistics_and_rejects_bad_config(embedder_dir: Path, tmp_path: Path) -> None:
    sequences = FIXTURES / "beauty_sequences.jsonl"
    out = build_bundle(CATALOG_PATH, tmp_path / "b", embedder_dir=embedder_dir)
    config = tmp_path / "fusion.yaml"
    config.write_text("copurchase_weight: 5\nhistory_len: 4\n")
    result = CliRunner().invoke(app, ["fusion", str(out), "--sequences", str(sequences), "--holdout", "1",
                                      "--config", str(config)])
    assert result.exit_code == 0, result.output
    bundle = load_bundle(out)
    assert bundle.fusion_meta["holdout"] == 1
    assert bundle.open_fusion().config.copurchase_weight == 5 and bundle.open_fusion().config.history_len == 4
    config.write_text("copurchase_wieght: 5\n")
    bad = CliRunner().invoke(app, ["fusion", str(out), "--sequences", str(sequences), "--config", str(config)])
    assert bad.exit_code == 2 and "unknown key(s) ['copurchase_wieght']" in bad.output
    assert load_bundle(out).fusion_meta["holdout"] == 1  # the failed call left the bundle as it was


def test_bundle_with_sequences_adds_the_same_statistics_as_fusion_afterwards(embedder_dir: Path, tmp_path: Path):
    from gloss.edge.files import sha256_file
    from gloss.export.bundle import add_fusion

    sequences = FIXTURES / "beauty_sequences.jsonl"
    result = CliRunner().invoke(app, ["bundle", "--catalog", str(CATALOG_PATH), "--out-dir", str(tmp_path / "one"),
                                      "--embedder-dir", str(embedder_dir), "--sequences", str(sequences),
                                      "--holdout", "2"])
    assert result.exit_code == 0, result.output
    one = load_bundle(tmp_path / "one")
    later = load_bundle(add_fusion(build_bundle(CATALOG_PATH, tmp_path / "two", embedder_dir=embedder_dir),
                                   sequences, holdout=2))
    assert one.fusion_meta == later.fusion_meta
    assert one.fusion_meta["holdout"] == 2 and one.fusion_meta["sequences_sha256"] == sha256_file(sequences)
    a, b = one.open_fusion().copurchase, later.open_fusion().copurchase
    for name in ("indptr", "indices", "data", "popularity"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_bundle_with_bad_sequences_writes_nothing(embedder_dir: Path, tmp_path: Path):
    bad = tmp_path / "seq.jsonl"
    bad.write_text('{"user": "u", "items": ["NOT-AN-ITEM", "B"]}\n')
    for args, message in (([str(bad)], "NOT-AN-ITEM"), ([str(tmp_path / "none.jsonl")], "no such sequences file")):
        result = CliRunner().invoke(app, ["bundle", "--catalog", str(CATALOG_PATH), "--out-dir",
                                          str(tmp_path / "b"), "--embedder-dir", str(embedder_dir),
                                          "--sequences", *args])
        assert result.exit_code == 2 and message in result.output
        assert not (tmp_path / "b").exists()


def test_bundle_checks_sequences_against_the_catalogue_before_embedding(embedder_dir: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch):
    """An unknown item on the last line fails at once, not after the whole catalogue is embedded (issue 17)."""
    rows = (FIXTURES / "beauty_sequences.jsonl").read_text().splitlines()[:5]
    bad = tmp_path / "seq.jsonl"
    bad.write_text("\n".join([*rows, '{"user": "u9", "items": ["B000052YM7", "NOT-AN-ITEM"]}']) + "\n")

    def embed(*args, **kwargs):
        raise AssertionError("the catalogue was embedded before the sequences were checked")

    monkeypatch.setattr(OnnxEmbedder, "embed", embed)
    with pytest.raises(InputError, match=r"seq\.jsonl:6: user u9: item 'NOT-AN-ITEM' is not in the catalogue"):
        build_bundle(CATALOG_PATH, tmp_path / "b", embedder_dir=embedder_dir, sequences_path=bad)
    bad.write_text('{"user": "u9", "items": "B000052YM7"}\n')
    with pytest.raises(InputError, match=r"seq\.jsonl:1: needs 'user' \(string\) and 'items'"):
        build_bundle(CATALOG_PATH, tmp_path / "b", embedder_dir=embedder_dir, sequences_path=bad)
    assert not (tmp_path / "b").exists()


def test_streamed_build_gives_the_vectors_of_one_embedding_call(embedder_dir: Path, tmp_path: Path) -> None:
    """Titles embedded 37 at a time and streamed to disk: the same stored vectors and search results as embedding
    the whole catalogue in one call (the build's manifest hashes match the files, though nothing re-read them)."""
    from gloss.export.embedder import EmbedRun

    streamed = load_bundle(build_bundle(CATALOG_PATH, tmp_path / "s", embedder_dir=embedder_dir,
                                        embed_run=EmbedRun(chunk_size=37, batch_size=8, threads=1)), rehash=True)
    catalog = load_catalog(CATALOG_PATH)
    one_call = OnnxEmbedder.load(embedder_dir).embed([render_item(t) for t in catalog.titles])
    vectors = np.asarray(streamed.open_index().vectors())
    np.testing.assert_allclose(vectors, one_call.astype(np.float16).astype(np.float32), atol=2.0**-11)
    reference = load_bundle(build_bundle(CATALOG_PATH, tmp_path / "r", embedder_dir=embedder_dir))
    queries = one_call[::11]
    np.testing.assert_array_equal(streamed.open_index().search(queries, 10)[0],
                                  reference.open_index().search(queries, 10)[0])
    build = streamed.manifest["index"]["build"]
    assert build["embed"]["batch_size"] == 8 and build["embed"]["threads"] == 1
    assert streamed.manifest["index"]["kind"] == "exact" and "graph" not in streamed.manifest["index"]

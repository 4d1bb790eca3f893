"""The bundle's catalogue trie: built from the generator GGUF with llama.cpp, listed in the manifest, checked on
open; llama.cpp and transformers tokenise it alike; bad input is refused with one line and nothing written."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("llama_cpp")

from gloss.edge.bundle import GENERATOR_FILE, TRIE_FILE, load_bundle  # noqa: E402
from gloss.edge.catalog import Catalog, load_catalog, save_catalog  # noqa: E402
from gloss.edge.errors import InputError  # noqa: E402
from gloss.edge.manifest import MANIFEST_NAME, write_manifest  # noqa: E402
from gloss.edge.prompt import render_item  # noqa: E402
from gloss.edge.trie import TokenTrie, catalog_fingerprint  # noqa: E402
from gloss.export.bundle import add_generator, build_bundle  # noqa: E402
from gloss.export.cli import app  # noqa: E402
from gloss.export.trie import build_trie_gguf, gguf_vocab  # noqa: E402
from tests.conftest import FIXTURES  # noqa: E402

CATALOG_PATH = FIXTURES / "beauty_items.jsonl"


@pytest.fixture(scope="module")
def bundle_with_generator(
    embedder_dir: Path, vocab_gguf_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "beauty"
    return build_bundle(CATALOG_PATH, out, embedder_dir=embedder_dir, gguf_path=vocab_gguf_path,
                        show_progress=False)


def llama_tokens(gguf_path: Path, text: str) -> tuple[int, ...]:
    with gguf_vocab(gguf_path) as model:
        return tuple(model.tokenize(text.encode(), False, False))


def test_bundle_trie_holds_every_title_as_the_generator_tokenises_it(
    bundle_with_generator: Path, vocab_gguf_path: Path
):
    bundle = load_bundle(bundle_with_generator)
    section = bundle.manifest["generator"]["trie"]
    assert section["file"] == TRIE_FILE and TRIE_FILE in bundle.manifest["files"]
    assert section["catalog_sha256"] == catalog_fingerprint(bundle.catalog.titles)
    trie = bundle.open_trie()
    assert section["num_nodes"] == trie.num_nodes and section["num_items"] == len(bundle.catalog)
    # Reference: each title tokenised on its own by llama.cpp, as the completion `Title: <title>` + EOS.
    with gguf_vocab(vocab_gguf_path) as model:
        eos = model.token_eos()
        expected: dict[tuple[int, ...], list[int]] = {}
        for position, title in enumerate(bundle.catalog.titles):
            seq = (*model.tokenize(render_item(title).encode(), False, False), eos)
            expected.setdefault(seq, []).append(position)
    assert dict(trie.sequences()) == {seq: tuple(items) for seq, items in expected.items()}


def test_add_generator_rebuilds_the_trie(embedder_dir: Path, vocab_gguf_path: Path, tmp_path: Path):
    out = build_bundle(CATALOG_PATH, tmp_path / "b", embedder_dir=embedder_dir, show_progress=False)
    assert load_bundle(out).paths.trie is None
    with pytest.raises(InputError, match="no catalogue trie"):
        load_bundle(out).open_trie()
    add_generator(out, vocab_gguf_path)
    bundle = load_bundle(out)
    assert bundle.paths.trie == out / TRIE_FILE and bundle.open_trie().meta.num_items == len(bundle.catalog)


def test_open_trie_refuses_a_trie_built_for_another_catalogue(
    bundle_with_generator: Path, embedder_dir: Path, tmp_path: Path
):
    full = load_catalog(CATALOG_PATH)
    small_path = tmp_path / "small.jsonl.gz"
    save_catalog(Catalog(full.asins[:30], full.titles[:30]), small_path)
    out = build_bundle(small_path, tmp_path / "small", embedder_dir=embedder_dir, show_progress=False)
    # Graft the big catalogue's trie into the small bundle with a valid manifest (checksums agree).
    (out / GENERATOR_FILE).parent.mkdir()
    shutil.copyfile(bundle_with_generator / GENERATOR_FILE, out / GENERATOR_FILE)
    shutil.copyfile(bundle_with_generator / TRIE_FILE, out / TRIE_FILE)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    manifest["generator"] = load_bundle(bundle_with_generator).manifest["generator"]
    write_manifest(out, {k: manifest[k] for k in ("catalog", "embedder", "index", "generator")})
    with pytest.raises(InputError, match="trie.bin: built for another catalogue.*gloss-export bundle"):
        load_bundle(out).open_trie()
    result = CliRunner().invoke(edge_app(), ["recommend", str(out), "--item", full.asins[0], "--constrained"])
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "built for another catalogue" in errors[0] and "Traceback" not in result.stderr


def edge_app():
    from gloss.edge.cli import app as edge

    return edge


def test_a_manifest_trie_section_without_file_is_refused(bundle_with_generator: Path, tmp_path: Path):
    out = Path(shutil.copytree(bundle_with_generator, tmp_path / "copy"))
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    manifest["generator"]["trie"] = {"num_nodes": 3}
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="generator.trie in gloss_bundle.json has no 'file'"):
        load_bundle(out)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([], "no items|empty"),
        ([{"asin": "A1", "title": "Red Lipstick"}, {"asin": "A2", "title": "   "}], "A2.*empty 'title'|position 1"),
    ],
)
def test_cli_bundle_with_generator_rejects_empty_catalogue_and_blank_titles(
    embedder_dir: Path, vocab_gguf_path: Path, tmp_path: Path, rows: list[dict], message: str
):
    catalog = tmp_path / "items.jsonl"
    catalog.write_text("".join(json.dumps(row) + "\n" for row in rows))
    args = ["bundle", "--catalog", str(catalog), "--out-dir", str(tmp_path / "out"),
            "--embedder-dir", str(embedder_dir), "--gguf", str(vocab_gguf_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and re.search(message, errors[0]) and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["items.jsonl"]  # nothing half-written


def test_trie_build_failure_leaves_no_bundle(
    embedder_dir: Path, vocab_gguf_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import gloss.export.trie as trie_module

    def fail(*args: object, **kwargs: object) -> None:
        raise InputError("simulated trie failure")

    monkeypatch.setattr(trie_module, "build_trie_gguf", fail)
    with pytest.raises(InputError, match="simulated trie failure"):
        build_bundle(CATALOG_PATH, tmp_path / "out", embedder_dir=embedder_dir, gguf_path=vocab_gguf_path,
                     show_progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_transformers_and_llama_cpp_build_the_same_trie(vocab_gguf_path: Path, smollm2_tokenizer_dir: Path):
    from transformers import AutoTokenizer

    from gloss.export.hf_models import align_tokenizer_with_gguf
    from gloss.export.trie import build_trie_hf

    titles = load_catalog(CATALOG_PATH).titles
    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    align_tokenizer_with_gguf(tokenizer, vocab_gguf_path)  # EOS = <|im_end|>, as training uses (see merge.py)
    ours = build_trie_gguf(titles, vocab_gguf_path)
    theirs = build_trie_hf(titles, tokenizer, tokenizer.eos_token_id)
    assert theirs.meta == ours.meta  # same tokenizer fingerprint, end token, counts
    assert dict(theirs.sequences()) == dict(ours.sequences())


def test_saved_bundle_trie_round_trips(bundle_with_generator: Path):
    bundle = load_bundle(bundle_with_generator)
    trie = TokenTrie.load(bundle.paths.trie)
    assert trie.meta.to_dict().items() <= bundle.manifest["generator"]["trie"].items()


@pytest.mark.slow
def test_cli_recommend_constrained_writes_only_catalogue_titles(
    embedder_dir: Path, smollm2_gguf_path: Path, tmp_path: Path
):
    out = build_bundle(CATALOG_PATH, tmp_path / "b", embedder_dir=embedder_dir, gguf_path=smollm2_gguf_path,
                       show_progress=False)
    catalog = load_bundle(out).catalog
    args = ["recommend", str(out), "--item", catalog.asins[0], "--item", catalog.asins[1], "--json"]
    result = CliRunner().invoke(edge_app(), [*args, "--constrained"])
    assert result.exit_code == 0, result.output
    queries = json.loads(result.stdout)["queries"]
    assert queries and all(query.removeprefix("Title: ") in catalog.titles for query in queries)

"""`gloss-export update`: a living catalogue on real Beauty titles with a tiny ONNX embedder and fusion statistics."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gloss.edge.bundle import CATALOG_FILE, load_bundle
from gloss.edge.catalog import Catalog, load_catalog, save_catalog
from gloss.edge.errors import InputError
from gloss.edge.fusion import CoPurchase
from gloss.edge.manifest import MANIFEST_NAME, VERIFIED_NAME
from gloss.edge.prompt import MAX_TITLE_WORDS, render_item
from gloss.edge.recommend import Recommender
from gloss.edge.splits import Split, load_sequences, make_examples
from gloss.export.bundle import add_fusion, build_bundle
from gloss.export.cli import app
from gloss.export.copurchase import build_copurchase, training_prefixes
from gloss.export.update import remap_copurchase, update_bundle
from tests.conftest import FIXTURES
from tests.fakes import ScriptedGenerator, error_line, write_tiny_embedder

CATALOG_PATH = FIXTURES / "beauty_items.jsonl"
SEQUENCES_PATH = FIXTURES / "beauty_sequences.jsonl"
NUM_NEW = 12  # catalogue items left out of the base bundle and added by the update
runner = CliRunner()


def write_items(path: Path, asins, titles) -> Path:
    path.write_text("".join(json.dumps({"asin": a, "title": t}) + "\n" for a, t in zip(asins, titles, strict=True)))
    return path


def write_ids(path: Path, ids) -> Path:
    path.write_text("".join(f"{i}\n" for i in ids))
    return path


@pytest.fixture(scope="module")
def full_catalog() -> Catalog:
    return load_catalog(CATALOG_PATH)


@pytest.fixture(scope="module")
def setup(full_catalog: Catalog, tmp_path_factory: pytest.TempPathFactory):
    """A base bundle (catalogue minus the last NUM_NEW items) with fusion statistics, and its embedder."""
    root = tmp_path_factory.mktemp("update")
    # dim 64: unrelated titles are far apart (at dim 16 all titles look ~0.75 alike, unlike a real encoder)
    embedder = write_tiny_embedder(root / "embedder", texts=[render_item(t) for t in full_catalog.titles], dim=64)
    base = Catalog(full_catalog.asins[:-NUM_NEW], full_catalog.titles[:-NUM_NEW])
    save_catalog(base, root / "base.jsonl")
    known = set(base.asins)
    sequences = root / "sequences.jsonl"
    sequences.write_text("".join(
        json.dumps({"user": s.user, "items": [a for a in s.items if a in known]}) + "\n"
        for s in load_sequences(SEQUENCES_PATH)
    ))  # fmt: skip
    bundle = build_bundle(root / "base.jsonl", root / "bundle", embedder_dir=embedder, name="beauty")
    add_fusion(bundle, sequences, holdout=1)
    return bundle, embedder


@pytest.fixture
def base_bundle(setup, tmp_path: Path) -> Path:
    out = tmp_path / "bundle"
    shutil.copytree(setup[0], out)
    return out


def new_items(full_catalog: Catalog, tmp_path: Path) -> Path:
    return write_items(tmp_path / "new.jsonl", full_catalog.asins[-NUM_NEW:], full_catalog.titles[-NUM_NEW:])


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under the bundle's parent (so a leftover temp folder shows too), by relative path; not the
    verification stamp, a cache that any load may refresh (gloss.edge.verified)."""
    return {p.relative_to(folder.parent).as_posix(): p.read_bytes() for p in folder.parent.rglob("*")
            if p.is_file() and p.name != VERIFIED_NAME}


@pytest.mark.parametrize("change", ["add", "add+remove", "remove"])
def test_update_then_search_equals_full_rebuild_then_search(setup, base_bundle, full_catalog, tmp_path, change):
    base = load_bundle(base_bundle)
    add = new_items(full_catalog, tmp_path) if "add" in change else None
    remove = write_ids(tmp_path / "gone.txt", base.catalog.asins[3:40:4]) if "remove" in change else None
    update_bundle(base_bundle, add_path=add, remove_path=remove)
    updated = load_bundle(base_bundle)
    rebuilt = load_bundle(build_bundle(base_bundle / CATALOG_FILE, tmp_path / "rebuilt", embedder_dir=setup[1]))
    assert updated.catalog == rebuilt.catalog
    index, reference = updated.open_index(), rebuilt.open_index()
    np.testing.assert_allclose(index.vectors(), reference.vectors(), atol=1e-6)
    queries = np.vstack([reference.vectors()[::7], updated.open_embedder().embed(["Title: shampoo for dry hair"])])
    found, sims = index.search(queries, 10)
    expected, expected_sims = reference.search(queries, 10)
    np.testing.assert_array_equal(found, expected)
    np.testing.assert_allclose(sims, expected_sims, atol=1e-6)


def test_update_bumps_the_manifest_and_keeps_statistics(base_bundle, full_catalog, tmp_path):
    before = load_bundle(base_bundle)
    old_stats = CoPurchase.load(before.paths.copurchase)
    gone = list(before.catalog.asins[:5])
    result = update_bundle(base_bundle, add_path=new_items(full_catalog, tmp_path),
                           remove_path=write_ids(tmp_path / "gone.txt", gone))
    after = load_bundle(base_bundle, verify=True)
    assert (result.num_added, result.num_removed, result.version) == (NUM_NEW, 5, 2)
    assert len(after.catalog) == len(before.catalog) - 5 + NUM_NEW == after.manifest["index"]["num_items"]
    assert after.manifest["catalog"]["version"] == 2 and after.manifest["catalog"]["updates"][-1]["added"] == NUM_NEW
    stats = CoPurchase.load(after.paths.copurchase)
    assert stats.num_items == len(after.catalog) and after.manifest["fusion"]["nnz"] == stats.nnz
    for asin in after.catalog.asins[:-NUM_NEW]:  # a kept item keeps its popularity
        assert stats.popularity[after.catalog.position(asin)] == old_stats.popularity[before.catalog.position(asin)]
    assert not stats.popularity[-NUM_NEW:].any()
    update_bundle(base_bundle, remove_path=write_ids(tmp_path / "more.txt", after.catalog.asins[-2:]))
    assert load_bundle(base_bundle).manifest["catalog"]["version"] == 3


def test_remap_copurchase_matches_a_dict_reference(full_catalog):
    sequences = training_prefixes(load_sequences(SEQUENCES_PATH), full_catalog, 1)
    stats = build_copurchase(sequences, len(full_catalog), window=3, decay=0.5)
    rng = np.random.default_rng(0)
    removed = set(rng.choice(len(full_catalog), 60, replace=False).tolist()) | {sequences[0][-1]}
    old_to_new = np.full(len(full_catalog), -1)
    kept = [i for i in range(len(full_catalog)) if i not in removed]
    old_to_new[kept] = np.arange(len(kept))
    num_new = 7
    remapped = remap_copurchase(stats, old_to_new, len(kept) + num_new)
    expected: dict[int, dict[int, float]] = defaultdict(dict)
    for a in kept:
        start, end = stats.indptr[a], stats.indptr[a + 1]
        for b, count in zip(stats.indices[start:end].tolist(), stats.data[start:end].tolist(), strict=True):
            if b not in removed:
                expected[int(old_to_new[a])][int(old_to_new[b])] = float(count)
    for row in range(remapped.num_items):
        start, end = remapped.indptr[row], remapped.indptr[row + 1]
        got = dict(zip(remapped.indices[start:end].tolist(), remapped.data[start:end].tolist(), strict=True))
        assert got == expected.get(row, {})
        assert np.all(np.diff(remapped.data[start:end]) <= 0)  # strongest first, as fusion reads it
    np.testing.assert_array_equal(remapped.popularity[: len(kept)], stats.popularity[kept])
    assert not remapped.popularity[len(kept):].any() and remapped.indptr[-1] == remapped.indptr[len(kept)]


def invoke(*args):
    return runner.invoke(app, ["update", *[str(a) for a in args]])


LONG_TITLE = " ".join(["word"] * (MAX_TITLE_WORDS + 1))


@pytest.mark.parametrize(
    "rows, removed, message",
    [
        ([("B000052XYQ", "An item that exists")], None, "cannot add 'B000052XYQ': already in the catalogue"),
        (None, ["B000NOTREAL"], "cannot remove 'B000NOTREAL': not in the catalogue"),
        ([("NEW1", "   ")], None, "row 1 (NEW1) has an empty title"),
        ([("NEW1", "ok"), ("NEW2", LONG_TITLE)], None, f"row 2 (NEW2) has a title of {MAX_TITLE_WORDS + 1} words"),
        ([("NEW1", "a"), ("NEW1", "b")], None, "row 2 repeats item id 'NEW1'"),
        ([("", "no id")], None, "row 1 has an empty 'asin'"),
        (None, None, "nothing to update"),
    ],
)
def test_update_errors_leave_the_bundle_unchanged(base_bundle, tmp_path, rows, removed, message):
    args = [base_bundle]
    if rows is not None:
        args += ["--add", write_items(tmp_path / "add.jsonl", [r[0] for r in rows], [r[1] for r in rows])]
    if removed is not None:
        args += ["--remove", write_ids(tmp_path / "gone.txt", removed)]
    before = snapshot(base_bundle)
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert message in error_line(result)
    assert snapshot(base_bundle) == before


def test_update_cli_reports_the_change(base_bundle, full_catalog, tmp_path):
    result = invoke(base_bundle, "--add", new_items(full_catalog, tmp_path))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith(str(base_bundle)) and f"+{NUM_NEW} -0 items" in result.output
    assert sorted(p.name for p in base_bundle.parent.iterdir() if p.name.startswith(".")) == []


def test_replacing_an_item_by_remove_and_add_changes_its_title(base_bundle, tmp_path):
    asin = load_bundle(base_bundle).catalog.asins[0]
    update_bundle(base_bundle, add_path=write_items(tmp_path / "a.jsonl", [asin], ["Shampoo  new\tformula"]),
                  remove_path=write_ids(tmp_path / "r.txt", [asin]))
    catalog = load_bundle(base_bundle).catalog
    assert catalog.title(asin) == "Shampoo new formula" and catalog.asins[-1] == asin


def test_update_refuses_to_empty_the_catalogue(base_bundle, tmp_path):
    with pytest.raises(InputError, match="empty"):
        update_bundle(base_bundle, remove_path=write_ids(tmp_path / "all.txt", load_bundle(base_bundle).catalog.asins))


# --- cold start: a new item is recommendable at once; a removed item never comes back ---


@pytest.fixture(scope="module")
def example():
    return next(make_examples(load_sequences(SEQUENCES_PATH), Split.test, frozenset()))


def fusion_recommender(base_bundle: Path, *queries: list[str]) -> Recommender:
    bundle = load_bundle(base_bundle)
    index = bundle.open_index()
    generator = ScriptedGenerator(*queries) if queries else None
    return Recommender(bundle.catalog, bundle.open_embedder(), index, generator, bundle.open_fusion(index))


def test_new_item_near_the_last_history_item_is_recommended_at_once(base_bundle, tmp_path, example):
    catalog = load_bundle(base_bundle).catalog
    last = catalog.title(example.history[-1])
    update_bundle(base_bundle, add_path=write_items(tmp_path / "new.jsonl", ["NEW0000001"], [f"{last} Refill"]))
    rec = fusion_recommender(base_bundle)
    result = rec.recommend(list(example.history), k=10, explain=True)
    assert "NEW0000001" in [item.asin for item in result.items]
    # the cold-start prior: only items without purchases get it, weight x similarity to the last history item
    vectors, catalog = rec.fusion.vectors.astype(np.float64), rec.catalog
    last = vectors[catalog.position(example.history[-1])]
    for item, explanation in zip(result.items, result.explanations, strict=True):
        position = catalog.position(item.asin)
        expected = max(0.0, float(vectors[position] @ last)) if rec.fusion.copurchase.popularity[position] == 0 else 0
        assert explanation.parts["coldstart"] == pytest.approx(rec.fusion.config.coldstart_weight * expected)


def test_new_item_near_a_generated_title_is_recommended_at_once(base_bundle, tmp_path, example, full_catalog):
    """With the generated titles weighted in fusion, a new item that nearly matches one is recommended at once.

    (The shipped default gives generated titles no weight, as measured in benchmarks/results/llm_fusion.md;
    then a new item reaches the list through its similarity to the last history item, tested above.)
    """
    title = full_catalog.titles[-1]  # not in the base bundle
    update_bundle(base_bundle, add_path=write_items(tmp_path / "new.jsonl", ["NEW0000002"], [title]))
    generated = [f"{title} 2 Pack", "Shampoo", "Conditioner", "Nail Polish", "Lipstick"]
    rec = fusion_recommender(base_bundle, generated)
    rec.fusion = rec.fusion.with_config(query_weight=1.0)
    items = rec.recommend(list(example.history), k=10).items
    assert "NEW0000002" in [item.asin for item in items]


def test_removed_items_are_never_returned_by_any_path(base_bundle, tmp_path, example):
    catalog = load_bundle(base_bundle).catalog
    history = list(example.history)

    def returned(k: int) -> set[str]:
        paper = Recommender.load(base_bundle, use_generator=False, use_fusion=False).recommend(history, k=k)
        fused = fusion_recommender(base_bundle).recommend(history, k=k)
        targets = [t for t in catalog.titles if t not in {catalog.title(h) for h in history}][:5]
        llm = fusion_recommender(base_bundle, targets).recommend(history, k=k)
        return {i.asin for r in (paper, fused, llm) for i in r.items}

    gone = sorted(returned(10) - set(history))
    update_bundle(base_bundle, remove_path=write_ids(tmp_path / "gone.txt", gone))
    assert not set(gone) & returned(len(catalog))


@pytest.mark.slow
def test_update_rebuilds_the_generator_trie(base_bundle, tmp_path, smollm2_gguf_path, full_catalog):
    """A bundle with a generator has a catalogue trie; after an update it holds exactly the new catalogue."""
    from gloss.export.bundle import add_generator

    add_generator(base_bundle, smollm2_gguf_path)
    gone = list(load_bundle(base_bundle).catalog.asins[:3])
    update_bundle(base_bundle, add_path=new_items(full_catalog, tmp_path), remove_path=write_ids(tmp_path / "g", gone))
    bundle = load_bundle(base_bundle)
    trie = bundle.open_trie()  # checks that it was built for these titles
    leaves = sorted(p for _, items in trie.sequences() for p in items)
    assert leaves == list(range(len(bundle.catalog))) and trie.meta.num_items == len(bundle.catalog)


def test_help_lists_update():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "update" in result.output
    assert "--remove" in runner.invoke(app, ["update", "--help"]).output


# --- what an update writes: only the changed parts; the rest are hard links of the old files ---


def inodes(bundle_dir: Path) -> dict[str, int]:
    files = load_bundle(bundle_dir).manifest["files"]
    return {rel: (bundle_dir / rel).stat().st_ino for rel in files}


def test_update_hard_links_unchanged_files_and_writes_a_new_segment(base_bundle, full_catalog, tmp_path):
    before = inodes(base_bundle)
    update_bundle(base_bundle, add_path=new_items(full_catalog, tmp_path))
    after = inodes(base_bundle)
    kept = {rel for rel in before if rel in after and after[rel] == before[rel]}
    assert {"embedder/model.onnx", "embedder/tokenizer.json", "index/vectors.npy"} <= kept
    assert set(after) - set(before) == {"index/vectors.v2.npy"}  # the added items' vectors, nothing else new
    section = load_bundle(base_bundle).manifest["index"]
    assert [s["rows"] for s in section["segments"]] == [len(full_catalog) - NUM_NEW, NUM_NEW]
    assert section["num_items"] == len(full_catalog) and "removed" not in section
    update_bundle(base_bundle, remove_path=write_ids(tmp_path / "gone.txt", full_catalog.asins[:3]))
    section = load_bundle(base_bundle, rehash=True).manifest["index"]  # the reused hashes still hold
    assert section["removed"] == {"file": "index/removed.v3.npy", "rows": 3} and len(section["segments"]) == 2
    assert inodes(base_bundle)["index/vectors.v2.npy"] == after["index/vectors.v2.npy"]


@pytest.mark.parametrize("policy", ["compact", "hnsw-tail", "hnsw-extend", "becomes-hnsw"])
def test_update_policies_still_equal_a_rebuild(setup, base_bundle, full_catalog, tmp_path, monkeypatch, policy):
    """Whatever the update rewrites (nothing, the graph, everything), the result searches like a rebuild."""
    from gloss.edge import index as index_module
    from gloss.export import index as export_index

    if policy == "compact":
        monkeypatch.setattr(export_index, "REMOVED_MAX_FRACTION", 0.01)
    if policy.startswith("hnsw"):
        build_bundle(base_bundle / CATALOG_FILE, base_bundle, embedder_dir=setup[1], index_kind="hnsw")
    if policy == "hnsw-extend":
        monkeypatch.setattr(export_index, "TAIL_MAX_ROWS", 5)
    if policy == "becomes-hnsw":
        monkeypatch.setattr(index_module, "HNSW_MIN_ITEMS", len(full_catalog) - 20)  # the base (exact) passes it
    old = load_bundle(base_bundle)
    update_bundle(base_bundle, add_path=new_items(full_catalog, tmp_path),
                  remove_path=write_ids(tmp_path / "gone.txt", old.catalog.asins[5:60:5]))
    updated = load_bundle(base_bundle, rehash=True)
    section = updated.manifest["index"]
    expected = {"compact": ("exact", 1, None), "hnsw-tail": ("hnsw", 2, len(old.catalog)),
                "hnsw-extend": ("hnsw", 2, len(old.catalog) + NUM_NEW),
                "becomes-hnsw": ("hnsw", 2, len(old.catalog) + NUM_NEW)}[policy]
    assert (section["kind"], len(section["segments"]), (section.get("graph") or {}).get("rows")) == expected
    rebuilt = load_bundle(build_bundle(base_bundle / CATALOG_FILE, tmp_path / "rebuilt", embedder_dir=setup[1]))
    assert updated.catalog == rebuilt.catalog
    index, reference = updated.open_index(), rebuilt.open_index(exact=True)
    np.testing.assert_array_equal(np.asarray(index.vectors()), np.asarray(reference.vectors()))
    queries = np.asarray(reference.vectors())[::9]
    exact, _ = index.search(queries, 10, exact=True)
    np.testing.assert_array_equal(exact, reference.search(queries, 10)[0])
    found, _ = index.search(queries, 10)  # the bundle's own kind: approximate for hnsw
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found.tolist(), exact.tolist(), strict=True)])
    assert overlap >= 0.99


def test_update_copies_where_hard_links_are_impossible(base_bundle, full_catalog, tmp_path, monkeypatch):
    """Another file system (EXDEV) or a file owned by someone else (EPERM): the unchanged files are copied."""
    import errno
    import os

    def no_link(source, target):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    before = inodes(base_bundle)
    monkeypatch.setattr(os, "link", no_link)
    update_bundle(base_bundle, add_path=new_items(full_catalog, tmp_path))
    after = inodes(base_bundle)
    assert after["index/vectors.npy"] != before["index/vectors.npy"]
    assert load_bundle(base_bundle, rehash=True).manifest["index"]["num_items"] == len(full_catalog)


def test_adding_items_keeps_the_copurchase_file_and_covers_the_new_items_at_load(base_bundle, full_catalog,
                                                                                  tmp_path):
    """Additions never rewrite the statistics (O(N) at a million items): the file stays a hard link, the manifest
    counts the appended items, and the loaded statistics equal the old ones with empty rows appended."""
    before = load_bundle(base_bundle)
    old = CoPurchase.load(before.paths.copurchase)
    reference = CoPurchase(indptr=np.array(old.indptr), indices=np.array(old.indices), data=np.array(old.data),
                           popularity=np.array(old.popularity), window=old.window, decay=old.decay)
    inode = before.paths.copurchase.stat().st_ino
    update_bundle(base_bundle, add_path=new_items(full_catalog, tmp_path))
    after = load_bundle(base_bundle, rehash=True)
    assert after.paths.copurchase.stat().st_ino == inode
    assert after.manifest["fusion"]["appended_items"] == NUM_NEW
    stats, expected = after.open_copurchase(), reference.with_new_items(NUM_NEW)
    assert stats.num_items == len(after.catalog) == expected.num_items
    np.testing.assert_array_equal(stats.popularity, expected.popularity)
    for item in range(stats.num_items):
        for got, want in zip(stats.row(item), expected.row(item), strict=True):
            np.testing.assert_array_equal(got, want)
    # a removal writes the statistics in full again, over the whole catalogue
    update_bundle(base_bundle, remove_path=write_ids(tmp_path / "gone.txt", after.catalog.asins[:2]))
    final = load_bundle(base_bundle)
    assert "appended_items" not in final.manifest["fusion"]
    assert CoPurchase.load(final.paths.copurchase).num_items == len(final.catalog)


def test_statistics_that_do_not_cover_the_catalogue_are_refused(base_bundle, full_catalog, tmp_path):
    update_bundle(base_bundle, add_path=new_items(full_catalog, tmp_path))
    path = base_bundle / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    manifest["fusion"]["appended_items"] = NUM_NEW - 1
    path.write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="co-purchase statistics cover"):
        load_bundle(base_bundle).open_copurchase()

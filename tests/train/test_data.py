"""gloss.train.data: raw 2014 files and JSONL inputs -> sequences and the paper's splits."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gloss.edge.errors import InputError
from gloss.edge.files import read_jsonl, write_jsonl_atomic
from gloss.edge.splits import Split, load_sequences, make_examples, validation_users
from gloss.train.cli import app
from gloss.train.data import prepare_data
from tests.fakes import error_line

RAW = Path(__file__).resolve().parents[1] / "fixtures" / "raw2014"
BEAUTY = Path(__file__).resolve().parents[3] / "shared" / "data" / "amazon2014" / "beauty"


def _rows(path: Path) -> list[dict]:
    return list(read_jsonl(path))


def test_prepare_raw_builds_time_ordered_sequences(tmp_path):
    out = prepare_data(
        tmp_path / "d", reviews_path=RAW / "reviews_Tiny_5.json", meta_path=RAW / "meta_Tiny.json"
    )
    # U1: B and E share a timestamp -> file order; U2 loses untitled X; U3 and U4 (2 items left) dropped.
    assert _rows(out / "sequences.jsonl.gz") == [
        {"user": "U1", "items": ["A", "B", "E", "C"]},
        {"user": "U2", "items": ["C", "B", "A"]},
        {"user": "U5", "items": ["E", "C", "A", "B"]},
    ]
    items = {r["asin"]: r["title"] for r in _rows(out / "items.jsonl.gz")}
    assert sorted(items) == ["A", "B", "C", "E"]  # X has no title, Y was never reviewed
    assert (
        items["A"].split()
        == (
            "One two three four five six seven eight nine ten eleven twelve thirteen "
            "fourteen fifteen sixteen seventeen eighteen nineteen twenty twenty-one "
            "twenty-two twenty-three twenty-four twenty-five"
        ).split()
    )
    assert items["B"] == "Burt's Bees &amp; Friends Lip Balm"  # HTML entity kept
    assert items["C"] == "Spaced out title"


def test_prepare_raw_writes_splits_and_manifest(tmp_path):
    out = prepare_data(
        tmp_path / "d", reviews_path=RAW / "reviews_Tiny_5.json", meta_path=RAW / "meta_Tiny.json"
    )
    test = _rows(out / "test.jsonl.gz")
    assert test[0] == {"user": "U1", "history": ["A", "B", "E"], "target": "C", "num_interactions": 4}
    validation = _rows(out / "validation.jsonl.gz")
    assert len(validation) == 1  # max(1, round(3 * 0.05))
    held = validation[0]["user"]
    train = {r["user"]: r for r in _rows(out / "train.jsonl.gz")}
    assert train["U1"]["target"] == ("B" if held == "U1" else "E")
    manifest = json.loads((out / "gloss_manifest.json").read_text())
    assert manifest["stage"] == "prepare"
    assert manifest["counts"] == {
        "items": 4,
        "users": 3,
        "interactions": 11,
        "train": 3,
        "validation": 1,
        "test": 3,
    }
    assert manifest["config"]["mode"] == "raw" and manifest["config"]["validation_fraction"] == 0.05
    assert set(manifest["inputs"]) == {str(RAW / "reviews_Tiny_5.json"), str(RAW / "meta_Tiny.json")}


def test_prepare_matches_edge_splits_on_real_slice(tmp_path):
    seqs = list(read_jsonl(BEAUTY / "sequences.jsonl.gz"))[:300]
    write_jsonl_atomic(tmp_path / "seq.jsonl.gz", seqs)
    out = prepare_data(
        tmp_path / "d", items_path=BEAUTY / "items.jsonl.gz", sequences_path=tmp_path / "seq.jsonl.gz"
    )
    reference = load_sequences(tmp_path / "seq.jsonl.gz")
    held = validation_users([s.user for s in reference])
    for split in Split:
        want = [(e.user, list(e.history), e.target) for e in make_examples(reference, split, held)]
        got = [(r["user"], r["history"], r["target"]) for r in _rows(out / f"{split.value}.jsonl.gz")]
        assert got == want, split
    assert _rows(out / "sequences.jsonl.gz") == seqs
    with gzip.open(BEAUTY / "items.jsonl.gz", "rt") as a, gzip.open(out / "items.jsonl.gz", "rt") as b:
        assert [json.loads(x) for x in a] == [json.loads(x) for x in b]  # shared titles are already clean


def test_prepare_unknown_item_names_user_and_item(tmp_path):
    write_jsonl_atomic(tmp_path / "items.jsonl", [{"asin": a, "title": f"t {a}"} for a in "abc"])
    write_jsonl_atomic(tmp_path / "seq.jsonl", [{"user": "u1", "items": ["a", "zz", "b", "c"]}])
    with pytest.raises(InputError, match=r"user u1: item 'zz'.*--drop-unknown"):
        prepare_data(
            tmp_path / "d", items_path=tmp_path / "items.jsonl", sequences_path=tmp_path / "seq.jsonl"
        )
    out = prepare_data(
        tmp_path / "d",
        items_path=tmp_path / "items.jsonl",
        sequences_path=tmp_path / "seq.jsonl",
        drop_unknown=True,
    )
    assert _rows(out / "sequences.jsonl.gz") == [{"user": "u1", "items": ["a", "b", "c"]}]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--validation-fraction", "1.5"], "--validation-fraction must be in (0, 1), got 1.5"),
        (["--validation-fraction", "0"], "--validation-fraction must be in (0, 1), got 0.0"),
        ([], "no input: pass --items/--sequences"),
        (["--items", "x.jsonl"], "--items and --sequences go together"),
        (["--category", "Tiny"], "add --download to fetch category 'Tiny'"),
    ],
)
def test_prepare_cli_rejects_bad_input(tmp_path, args, message):
    result = CliRunner().invoke(app, ["prepare", str(tmp_path / "d"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_prepare_cli_validation_fraction_changes_held_out_users(tmp_path):
    seqs = list(read_jsonl(BEAUTY / "sequences.jsonl.gz"))[:200]
    write_jsonl_atomic(tmp_path / "seq.jsonl.gz", seqs)
    result = CliRunner().invoke(
        app,
        [
            "prepare",
            str(tmp_path / "d"),
            "--items",
            str(BEAUTY / "items.jsonl.gz"),
            "--sequences",
            str(tmp_path / "seq.jsonl.gz"),
            "--validation-fraction",
            "0.1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(_rows(tmp_path / "d" / "validation.jsonl.gz")) == 20


def test_prepare_finds_category_files_in_raw_dir(tmp_path):
    raw = tmp_path / "d" / "raw"
    raw.mkdir(parents=True)
    for name, src in (
        ("reviews_Tiny_5.json.gz", "reviews_Tiny_5.json"),
        ("meta_Tiny.json.gz", "meta_Tiny.json"),
    ):
        with gzip.open(raw / name, "wt") as handle:
            handle.write((RAW / src).read_text())
    out = prepare_data(tmp_path / "d", category="Tiny")
    assert [r["user"] for r in _rows(out / "sequences.jsonl.gz")] == ["U1", "U2", "U5"]


# --- issue 17: prepare writes its folder atomically, refuses foreign folders and bad paths; deep meta lines ---


def _prepare_tiny(out: Path, **kwargs) -> Path:
    return prepare_data(out, reviews_path=RAW / "reviews_Tiny_5.json", meta_path=RAW / "meta_Tiny.json", **kwargs)


def test_prepare_refuses_a_non_empty_folder_it_did_not_write(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match=r"has no gloss_manifest\.json.*choose a new or empty output folder"):
        _prepare_tiny(out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    result = CliRunner().invoke(app, ["prepare", str(out), "--reviews", str(RAW / "reviews_Tiny_5.json"),
                                      "--meta", str(RAW / "meta_Tiny.json")])
    assert result.exit_code == 2 and "choose a new or empty output folder" in error_line(result)


def test_prepare_refuses_the_folder_of_another_stage(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "gloss_manifest.json").write_text(json.dumps({"stage": "train"}))
    (out / "adapter").mkdir()
    with pytest.raises(InputError, match=r"stage 'train'.*not of gloss-train prepare"):
        _prepare_tiny(out)
    assert (out / "adapter").is_dir()


def test_prepare_replaces_its_own_output_whole(tmp_path):
    out = _prepare_tiny(tmp_path / "d", validation_fraction=0.5)
    (out / "stale.txt").write_text("left by hand")
    again = _prepare_tiny(tmp_path / "d")
    assert again == out
    assert json.loads((out / "gloss_manifest.json").read_text())["config"]["validation_fraction"] == 0.05
    assert not (out / "stale.txt").exists()  # the folder was swapped, not patched file by file
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no work folder left beside it


def test_prepare_keeps_the_raw_download_folder(tmp_path):
    raw = tmp_path / "d" / "raw"
    raw.mkdir(parents=True)
    for name, src in (("reviews_Tiny_5.json.gz", "reviews_Tiny_5.json"), ("meta_Tiny.json.gz", "meta_Tiny.json")):
        with gzip.open(raw / name, "wt") as handle:
            handle.write((RAW / src).read_text())
    before = {p.name: p.read_bytes() for p in raw.iterdir()}
    for _ in range(2):  # a folder holding only raw/ is accepted, and raw/ survives each swap
        out = prepare_data(tmp_path / "d", category="Tiny")
        assert {p.name: p.read_bytes() for p in (out / "raw").iterdir()} == before


@pytest.mark.parametrize("where", ["afile/sub", "afile/sub/deeper"])
def test_prepare_into_a_path_that_cannot_be_a_folder_is_one_error_line(tmp_path, where):
    (tmp_path / "afile").write_text("a file, not a folder")
    result = CliRunner().invoke(app, ["prepare", str(tmp_path / where), "--reviews",
                                      str(RAW / "reviews_Tiny_5.json"), "--meta", str(RAW / "meta_Tiny.json")])
    assert result.exit_code == 2, result.output
    assert str(tmp_path / "afile") in error_line(result) and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["prepare", str(tmp_path / "afile"), "--reviews",
                                      str(RAW / "reviews_Tiny_5.json"), "--meta", str(RAW / "meta_Tiny.json")])
    assert result.exit_code == 2 and "is a file" in error_line(result)


@pytest.mark.parametrize("value", ["1" + "+1" * 20_000, "-" * 20_000 + "1", "[" * 20_000 + "]" * 20_000],
                         ids=["recursion", "parser-stack", "nesting"])
def test_a_meta_line_nested_too_deeply_is_one_error_naming_the_line(tmp_path, value):
    lines = (RAW / "meta_Tiny.json").read_text().splitlines()
    lines.insert(1, f"{{'asin': 'A', 'title': 'Deep', 'price': {value}}}")
    meta = tmp_path / "meta.json"
    meta.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=rf"^{meta}:2: not a Python dict literal"):
        prepare_data(tmp_path / "d", reviews_path=RAW / "reviews_Tiny_5.json", meta_path=meta)
    result = CliRunner().invoke(app, ["prepare", str(tmp_path / "d"), "--reviews", str(RAW / "reviews_Tiny_5.json"),
                                      "--meta", str(meta)])
    assert result.exit_code == 2 and f"{meta}:2: not a Python dict literal" in error_line(result)

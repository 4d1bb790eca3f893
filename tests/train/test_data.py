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

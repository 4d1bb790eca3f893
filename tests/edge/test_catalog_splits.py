import gzip
import json
from pathlib import Path

import pytest

from gloss.edge.catalog import MAX_LISTED, Catalog, load_catalog, save_catalog
from gloss.edge.errors import InputError
from gloss.edge.splits import Split, UserSequence, load_sequences, make_examples, validation_users
from tests.conftest import FIXTURES


def test_catalog_round_trip_gzip(tmp_path: Path):
    catalog = load_catalog(FIXTURES / "beauty_items.jsonl")
    save_catalog(catalog, tmp_path / "c.jsonl.gz")
    again = load_catalog(tmp_path / "c.jsonl.gz")
    assert again == catalog
    with gzip.open(tmp_path / "c.jsonl.gz", "rt") as handle:
        assert json.loads(handle.readline()) == {"asin": catalog.asins[0], "title": catalog.titles[0]}


def test_resolve_history_accepts_ids_titles_and_prefixed_titles():
    catalog = Catalog(("A1", "B2"), ("Red Lipstick", "Blue Mascara"))
    assert catalog.resolve_history(["A1", "Blue Mascara", "Title: Red Lipstick"]) == ["A1", "B2", "A1"]


@pytest.mark.parametrize(
    "history, message",
    [([], "empty history"), (["ZZZ"], "unknown item 'ZZZ'"), (["A1", " "], "history item 2 is empty"),
     (["Title:"], "history item 1 is empty")],
)
def test_resolve_history_rejects_bad_input(history, message):
    catalog = Catalog(("A1",), ("Red",))
    with pytest.raises(InputError, match=message):
        catalog.resolve_history(history)


@pytest.mark.parametrize(
    "content, message",
    [('{"asin": "A"}\n', "needs string fields"), ("not json\n", "not valid JSON"), ("", "no items"),
     ('{"asin": "A", "title": "x"}\n{"asin": "A", "title": "y"}\n', "duplicate")],
)
def test_load_catalog_errors_name_the_problem(tmp_path: Path, content, message):
    path = tmp_path / "items.jsonl"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        load_catalog(path)


def test_load_catalog_missing_file(tmp_path: Path):
    with pytest.raises(InputError, match="no such file"):
        load_catalog(tmp_path / "nope.jsonl")


def test_splits_follow_the_paper():
    seqs = [UserSequence("u1", ("a", "b", "c", "d")), UserSequence("u2", ("a", "b", "c")),
            UserSequence("u3", ("x", "y"))]
    held_out = frozenset({"u1"})
    test = list(make_examples(seqs, Split.test, held_out))
    assert [(e.user, e.history, e.target) for e in test] == [("u1", ("a", "b", "c"), "d"), ("u2", ("a", "b"), "c")]
    val = list(make_examples(seqs, Split.validation, held_out))
    assert [(e.user, e.history, e.target) for e in val] == [("u1", ("a", "b"), "c")]
    train = list(make_examples(seqs, Split.train, held_out))
    assert [(e.user, e.history, e.target) for e in train] == [("u1", ("a",), "b"), ("u2", ("a",), "b")]


def test_validation_users_are_seeded_five_percent():
    users = [f"u{i}" for i in range(1000)]
    chosen = validation_users(users, 0.05, seed=1)
    assert len(chosen) == 50
    assert chosen == validation_users(list(reversed(users)), 0.05, seed=1)
    assert chosen != validation_users(users, 0.05, seed=2)
    with pytest.raises(InputError, match="--validation-fraction"):
        validation_users(users, 1.5)


def test_real_slice_loads():
    seqs = load_sequences(FIXTURES / "beauty_sequences.jsonl")
    catalog = load_catalog(FIXTURES / "beauty_items.jsonl")
    assert all(asin in catalog for seq in seqs for asin in seq.items)


# --- hardening (issue 11) ---


def row(asin: str, title: str) -> str:
    return json.dumps({"asin": asin, "title": title}) + "\n"


@pytest.mark.parametrize(
    "content, message",
    [
        (row("A", "x") + row("B", "  "),
         "items.jsonl: line 2 (asin 'B') has an empty 'title'; every item needs a title"),
        (row("A", "x") + row("", "y"), "items.jsonl: line 2 has an empty 'asin'; every item needs an id"),
        (row("A", "x") + "\n" + row("B", "y") + row("A", "z") + row("B", "w"),
         "items.jsonl: 2 duplicate item id(s): 'A' (lines 1, 4); 'B' (lines 3, 5); ids must be unique"),
    ],
)
def test_load_catalog_refuses_empty_titles_and_names_duplicate_rows(tmp_path: Path, content, message):
    path = tmp_path / "items.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError) as info:
        load_catalog(path)
    assert str(info.value) == f"{tmp_path}/{message}"


def test_duplicate_ids_are_listed_up_to_a_limit():
    asins = tuple(f"A{i}" for i in range(MAX_LISTED + 2)) * 2
    with pytest.raises(InputError) as info:
        Catalog(asins, tuple(f"t{i}" for i in range(len(asins))))
    message = str(info.value)
    assert message.startswith(f"catalogue: {MAX_LISTED + 2} duplicate item id(s): 'A0' (rows 1, {MAX_LISTED + 3});")
    assert message.endswith("; and 2 more; ids must be unique")


def test_catalog_refuses_an_empty_title_so_an_empty_query_matches_nothing():
    with pytest.raises(InputError, match="row 2 .asin 'B'. has an empty 'title'"):
        Catalog(("A", "B"), ("Red", ""))


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_load_catalog_names_the_byte_offset_of_non_utf8_text(tmp_path: Path, suffix):
    data = row("A", "x").encode() + b'{"asin": "B", "title": "Cr\xe8me"}\n'
    path = tmp_path / f"items{suffix}"
    path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    offset = data.index(0xE8)
    where = f"{path} (decompressed)" if suffix.endswith(".gz") else str(path)
    with pytest.raises(InputError) as info:
        load_catalog(path)
    assert str(info.value) == (
        f"{where}: not UTF-8 text: byte 0xe8 at byte offset {offset} (line 2); save the file as UTF-8")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(gzip.compress(row("A", "x").encode())[:-12]), "cannot be read as gzipped JSON Lines"),
        (lambda p: p.write_bytes(b"\x1f\x8b" + bytes(40)), "cannot be read as gzipped JSON Lines"),
        (lambda p: p.write_bytes(row("A", "x").encode()), "cannot be read as gzipped JSON Lines"),  # not gzip
        (lambda p: p.mkdir(), "is a directory; expected a file"),
    ],
)
def test_load_catalog_bad_gzip_or_directory_is_an_input_error(tmp_path: Path, make, message):
    path = tmp_path / "items.jsonl.gz"
    make(path)
    with pytest.raises(InputError, match=message):
        load_catalog(path)


def test_load_sequences_names_the_byte_offset_of_non_utf8_text(tmp_path: Path):
    data = b'{"user": "u1", "items": ["a", "b"]}\n{"user": "\xa0u2", "items": ["a", "b"]}\n'
    path = tmp_path / "sequences.jsonl"
    path.write_bytes(data)
    with pytest.raises(InputError, match=f"byte 0xa0 at byte offset {data.index(0xA0)} .line 2."):
        load_sequences(path)

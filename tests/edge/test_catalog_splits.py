import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from gloss.edge.catalog import (
    MAX_LISTED,
    Catalog,
    load_catalog,
    open_catalog,
    open_catalog_arrays,
    save_catalog,
    save_catalog_arrays,
)
from gloss.edge.catalog_update import append_catalog, subset_and_extend
from gloss.edge.errors import InputError
from gloss.edge.files import sha256_file
from gloss.edge.splits import Split, UserSequence, load_sequences, make_examples, validation_users
from gloss.edge.strings import StringArray
from gloss.edge.trie import catalog_fingerprint
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


# --- compact columns, the memory-mapped catalogue file (issue 16) ---


def reference_parse(path: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What load_catalog returned before issue 16: two tuples of str."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return tuple(r["asin"] for r in rows), tuple(r["title"] for r in rows)


CAKE = "Crème brûlée — 東京 🍰"
TRICKY = [("A1", CAKE), ("B2", "Plain"), ("C3", "Plain"), ("D\u00e9", "x\ud800y"), ("E5", "Z " * 40)]


@pytest.fixture(scope="module")
def tricky_catalog() -> Catalog:
    return Catalog(tuple(a for a, _ in TRICKY), tuple(t for _, t in TRICKY))


def test_compact_catalogue_equals_the_old_parse():
    catalog = load_catalog(FIXTURES / "beauty_items.jsonl")
    asins, titles = reference_parse(FIXTURES / "beauty_items.jsonl")
    assert catalog.asins == asins and catalog.titles == titles  # both ways round
    assert asins == catalog.asins and list(catalog.titles) == list(titles)
    assert tuple(catalog.asins[10:20]) == asins[10:20] and catalog.titles[-1] == titles[-1]
    assert catalog.asins[3:40:4] == list(asins[3:40:4])
    first_of_title = {}
    for i, title in enumerate(titles):
        first_of_title.setdefault(title, i)
    assert all(catalog.position(a) == i for i, a in enumerate(asins))
    assert all(catalog.find_title(t) == i for t, i in first_of_title.items())


@pytest.mark.parametrize("source", ["memory", "file"])
def test_lookups_and_history_on_tricky_strings(tmp_path: Path, tricky_catalog, source):
    catalog = tricky_catalog
    if source == "file":
        save_catalog_arrays(catalog, tmp_path / "c.bin")
        catalog = open_catalog_arrays(tmp_path / "c.bin")
    assert catalog == tricky_catalog and len(catalog) == len(TRICKY)
    assert [catalog.title(a) for a, _ in TRICKY] == [t for _, t in TRICKY]
    assert catalog.resolve_history(["C3", "Plain", f"Title: {CAKE}", "x\ud800y"]) == ["C3", "B2", "A1", "Dé"]
    assert "Dé" in catalog and "D" not in catalog and 5 not in catalog and catalog.find_title("plain") == -1
    with pytest.raises(InputError, match="unknown item 'ZZ'"):
        catalog.position("ZZ")


def test_catalogue_file_maps_lazily_and_records_its_source(tmp_path: Path):
    catalog = load_catalog(FIXTURES / "beauty_items.jsonl")
    save_catalog(catalog, tmp_path / "c.jsonl.gz")
    save_catalog_arrays(catalog, tmp_path / "c.bin", tmp_path / "c.jsonl.gz")
    sha = sha256_file(tmp_path / "c.jsonl.gz")
    opened = open_catalog(tmp_path / "c.jsonl.gz", tmp_path / "c.bin", sha)
    assert opened == catalog and not opened.asins.compact()[0].flags.writeable  # a view of the file
    assert catalog_fingerprint(opened.titles) == catalog_fingerprint(list(catalog.titles))
    assert open_catalog(tmp_path / "c.jsonl.gz") == catalog  # no compact file: the JSONL is parsed
    with pytest.raises(InputError, match="built from another catalogue file"):
        open_catalog(tmp_path / "c.jsonl.gz", tmp_path / "c.bin", "0" * 64)
    cut = tmp_path / "cut.bin"
    cut.write_bytes((tmp_path / "c.bin").read_bytes()[:-200])
    with pytest.raises(InputError, match="compact catalogue is truncated"):
        open_catalog_arrays(cut)
    (tmp_path / "junk.bin").write_bytes(b"junk" * 10)
    with pytest.raises(InputError, match="not a gloss compact catalogue"):
        open_catalog_arrays(tmp_path / "junk.bin")


@pytest.mark.parametrize("keep_every", [1, 3])
def test_subset_and_extend_equals_a_catalogue_built_from_scratch(tmp_path: Path, keep_every):
    catalog = load_catalog(FIXTURES / "beauty_items.jsonl")
    save_catalog_arrays(catalog, tmp_path / "c.bin")
    mapped = open_catalog_arrays(tmp_path / "c.bin")
    keep = np.arange(len(catalog)) % keep_every == 0
    new = [("NEW1", "A new title"), ("NEW2", catalog.titles[1]), (catalog.asins[1], "back with a new title")]
    new = new if keep_every > 1 else new[:2]
    updated = subset_and_extend(mapped, keep, [a for a, _ in new], [t for _, t in new])
    kept = np.flatnonzero(keep)
    want = Catalog(tuple(catalog.asins[i] for i in kept) + tuple(a for a, _ in new),
                   tuple(catalog.titles[i] for i in kept) + tuple(t for _, t in new))
    assert updated == want
    assert all(updated.position(a) == i for i, a in enumerate(want.asins))
    assert all(updated.find_title(t) == want.find_title(t) for t in want.titles)
    with pytest.raises(InputError, match="1 new item id.s. already in the catalogue: 'NEW1'"):
        subset_and_extend(updated, np.ones(len(updated), bool), ["NEW1"], ["again"])
    with pytest.raises(InputError, match="new items: row 1 .asin 'X'. has an empty 'title'"):
        subset_and_extend(updated, np.ones(len(updated), bool), ["X"], [" "])


def test_append_catalog_adds_a_gzip_member_that_reads_as_one_file(tmp_path: Path):
    catalog = load_catalog(FIXTURES / "beauty_items.jsonl")
    head = Catalog(catalog.asins[:-5], catalog.titles[:-5])
    save_catalog(head, tmp_path / "head.jsonl.gz")
    append_catalog(tmp_path / "head.jsonl.gz", tmp_path / "all.jsonl.gz", catalog.asins[-5:], catalog.titles[-5:])
    assert load_catalog(tmp_path / "all.jsonl.gz") == catalog
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.jsonl.gz", "head.jsonl.gz"]


def test_string_array_behaves_like_a_tuple_of_str():
    texts = ("", "a", "Crème", "🍰🍰", "last")
    column = StringArray.from_strings(texts)
    assert len(column) == 5 and column[-1] == "last" and column[0] == "" and list(column) == list(texts)
    assert column[1:3] == texts[1:3] and column[3:1] == () and column[::2] == list(texts[::2])
    assert column == texts and column != texts[:-1] and column != "abc"
    assert "Crème" in column and column.index("🍰🍰") == 3
    with pytest.raises(IndexError):
        column[5]
    assert "5 strings" in repr(column)


def test_item_texts_view_equals_the_dict_it_replaced(tricky_catalog):
    from gloss.edge.recommend import item_texts

    reference: dict[str, int] = {}
    for position, title in enumerate(tricky_catalog.titles):
        reference.setdefault(f"Title: {title}", position)
    view = item_texts(tricky_catalog)
    assert dict(view) == reference and len(view) == len(reference)
    assert all(view[text] == position and text in view for text, position in reference.items())
    assert "Plain" not in view and "Title: plain" not in view and 3 not in view
    with pytest.raises(KeyError):
        view["Title: nothing"]


@pytest.mark.parametrize("fence", [1, 2, 3, 512])
def test_lookups_read_from_the_file_equal_the_mapped_ones(tmp_path: Path, monkeypatch, fence):
    from gloss.edge import strings

    monkeypatch.setattr(strings, "FENCE", fence)
    titles = [f"t{i % 7}" if i % 3 else f"unique {i}" for i in range(60)]  # runs of equal title hashes
    catalog = Catalog(tuple(f"A{i}" for i in range(60)), tuple(titles))
    save_catalog_arrays(catalog, tmp_path / "c.bin")
    opened = open_catalog_arrays(tmp_path / "c.bin")
    for text in [*titles, "t7", "unique 1", "nothing"]:
        assert opened.find_title(text) == (titles.index(text) if text in titles else -1)
    assert [opened.find(f"A{i}") for i in range(61)] == [*range(60), -1]
    assert [opened.titles[i] for i in range(60)] == titles and opened.asins[-1] == "A59"

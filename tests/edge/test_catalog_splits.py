import gzip
import json
from pathlib import Path

import pytest

from gloss.edge.catalog import Catalog, load_catalog, save_catalog
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


@pytest.mark.parametrize("history, message", [([], "empty history"), (["ZZZ"], "unknown item 'ZZZ'")])
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

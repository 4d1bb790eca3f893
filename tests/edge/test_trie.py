"""The catalogue token trie vs a brute-force set of sequences; constrained beams vs exhaustive search."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from gloss.edge.errors import InputError
from gloss.edge.generation.beam import Beams, BeamSettings, constrain_log_probs, log_softmax, run_beam_search
from gloss.edge.trie import ARRAYS, TokenTrie, build_trie, catalog_fingerprint, check_titles

END = 0  # the fake vocabulary's EOS
VOCAB = 6
TOKENIZER = "fake-tokenizer"


def random_catalogue(seed: int, num_items: int, max_len: int) -> list[tuple[int, ...]]:
    """Token sequences over tokens 1..VOCAB-1 with shared prefixes and some exact duplicates."""
    rng = np.random.default_rng(seed)
    seqs: list[tuple[int, ...]] = []
    for _ in range(num_items):
        if seqs and rng.random() < 0.3:  # extend or copy an earlier sequence's prefix
            base = seqs[int(rng.integers(len(seqs)))]
            cut = int(rng.integers(1, len(base) + 1))
            extra = rng.integers(1, VOCAB, size=int(rng.integers(0, 3))).tolist()
            seqs.append((*base[:cut], *extra))
        else:
            seqs.append(tuple(rng.integers(1, VOCAB, size=int(rng.integers(1, max_len + 1))).tolist()))
    return seqs


def make_trie(seqs: list[tuple[int, ...]], ends: tuple[int, ...] = (END,)) -> TokenTrie:
    return TokenTrie.from_sequences(seqs, ends, catalog_fingerprint([str(s) for s in seqs]), TOKENIZER)


def brute_force(seqs: list[tuple[int, ...]], ends: tuple[int, ...]) -> dict[tuple[int, ...], tuple[int, ...]]:
    """Full sequence (end token included) -> item positions, the reference the trie must equal."""
    out: dict[tuple[int, ...], list[int]] = {}
    for position, seq in enumerate(seqs):
        for end in ends:
            out.setdefault((*seq, end), []).append(position)
    return {seq: tuple(items) for seq, items in out.items()}


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ends", [(END,), (END, 99)])
def test_trie_equals_the_set_of_catalogue_sequences(seed: int, ends: tuple[int, ...]):
    seqs = random_catalogue(seed, num_items=40, max_len=6)
    trie = make_trie(seqs, ends)
    reference = brute_force(seqs, ends)
    assert dict(trie.sequences()) == reference
    prefixes = {seq[:i] for seq in reference for i in range(len(seq) + 1)}
    for prefix in prefixes:
        after = {seq[len(prefix)] for seq in reference if seq[: len(prefix)] == prefix and len(seq) > len(prefix)}
        expected = sorted(after)
        assert trie.allowed_tokens(prefix).tolist() == expected
        assert trie.items(prefix) == reference.get(prefix, ())
    for prefix in itertools.product(range(VOCAB), repeat=2):  # most of these leave the trie
        if prefix not in prefixes:
            assert trie.node(prefix) == -1 and trie.allowed_tokens(prefix).size == 0 and trie.items(prefix) == ()
    meta = trie.meta
    assert meta.num_items == len(seqs) and meta.num_sequences == len(set(seqs))
    assert meta.num_nodes == len(prefixes) and meta.max_length == max(len(s) for s in reference)


def test_trie_stores_about_four_bytes_per_node_plus_leaves():
    seqs = random_catalogue(0, num_items=200, max_len=8)
    trie = make_trie(seqs)
    leaves = len(set(seqs))
    assert trie.nbytes == 4 * ((trie.num_nodes + 1) + (trie.num_nodes - 1) + 2 * leaves + 1 + len(seqs))


def test_an_end_token_inside_a_title_is_refused():
    with pytest.raises(InputError, match="position 1 holds the end token 0"):
        make_trie([(1, 2), (3, END, 4)])


def test_duplicate_titles_share_a_leaf_that_names_every_item():
    trie = make_trie([(1, 2), (3,), (1, 2), (1, 2, 4)])
    assert trie.items((1, 2, END)) == (0, 2)
    assert trie.items((1, 2, 4, END)) == (3,)
    assert trie.items((1, 2)) == ()  # not finished: no end token yet


# --- constrained beam search -----------------------------------------------------------------------------


def fake_log_probs(prefix: tuple[int, ...]) -> np.ndarray:
    """A deterministic 'model': next-token log-probs seeded by the prefix."""
    seed = int.from_bytes(hashlib.sha256(repr(prefix).encode()).digest()[:4], "little")
    return log_softmax(np.random.default_rng(seed).normal(scale=2.0, size=VOCAB))


def constrained_search(trie: TokenTrie, settings: BeamSettings) -> Beams:
    def advance(beams: Beams, parents: tuple[int, ...]) -> np.ndarray:
        return np.stack([fake_log_probs(seq) for seq in beams.sequences])

    return run_beam_search(fake_log_probs(())[None, :], advance, settings)


def exhaustive(trie: TokenTrie, length_penalty: float) -> list[tuple[float, tuple[int, ...]]]:
    """Every catalogue sequence scored by the model's unrenormalised log-probs (transformers' rule), sorted."""
    out = []
    for seq, _ in trie.sequences():
        total = sum(fake_log_probs(seq[:i])[t] for i, t in enumerate(seq))
        out.append((total / len(seq) ** length_penalty, seq))
    return sorted(out, key=lambda item: -item[0])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
def test_constrained_beam_search_with_all_beams_equals_exhaustive_search(seed: int, length_penalty: float):
    trie = make_trie(random_catalogue(seed, num_items=12, max_len=4))
    settings = BeamSettings(trie.num_nodes, trie.meta.max_length, frozenset({END}), length_penalty, constraint=trie)
    got = constrained_search(trie, settings).finished
    expected = exhaustive(trie, length_penalty)
    assert [seq for _, seq in got] == [seq for _, seq in expected]
    np.testing.assert_allclose([s for s, _ in got], [s for s, _ in expected], rtol=1e-12)


@pytest.mark.parametrize("num_beams", [1, 2, 5])
def test_every_finished_constrained_beam_is_a_catalogue_item(num_beams: int):
    seqs = random_catalogue(7, num_items=60, max_len=7)
    trie = make_trie(seqs)
    settings = BeamSettings(num_beams, trie.meta.max_length, frozenset({END}), 1.0, constraint=trie)
    finished = constrained_search(trie, settings).finished
    assert len(finished) == num_beams
    reference = brute_force(seqs, (END,))
    for score, seq in finished:
        assert seq in reference and trie.items(seq) == reference[seq] and np.isfinite(score)


def test_constraint_masks_log_probs_without_renormalising():
    trie = make_trie([(1, 2), (1, 3), (4,)])
    log_probs = log_softmax(np.arange(2 * VOCAB, dtype=np.float64).reshape(2, VOCAB))
    masked = constrain_log_probs(log_probs, [(), (1,)], trie)
    expected = np.full_like(log_probs, -np.inf)
    expected[0, [1, 4]] = log_probs[0, [1, 4]]
    expected[1, [2, 3]] = log_probs[1, [2, 3]]
    np.testing.assert_array_equal(masked, expected)


# --- files and bad input ----------------------------------------------------------------------------------


def word_tokenize(text: str) -> list[int]:
    """A fake tokenizer: one id per word (hash), 'Title:' is id 1."""
    return [1 if w == "Title:" else 2 + int(hashlib.sha256(w.encode()).hexdigest(), 16) % 50 for w in text.split()]


TITLES = ["Red Lipstick", "Blue Lipstick", "Red Lipstick", "Nail Polish Remover"]


def test_build_trie_tokenises_rendered_titles_and_maps_back_to_positions():
    trie = build_trie(TITLES, word_tokenize, [END], TOKENIZER)
    for position, title in enumerate(TITLES):
        seq = (*word_tokenize(f"Title: {title}"), END)
        assert position in trie.items(seq)
    assert trie.meta.catalog_sha256 == catalog_fingerprint(TITLES)


def test_saved_trie_loads_identically_and_checks_catalogue_and_tokenizer(tmp_path: Path):
    trie = build_trie(TITLES, word_tokenize, [END], TOKENIZER)
    path = trie.save(tmp_path / "trie.npz")
    loaded = TokenTrie.load(path, catalog_fingerprint(TITLES), TOKENIZER)
    assert dict(loaded.sequences()) == dict(trie.sequences()) and loaded.meta == trie.meta
    with pytest.raises(InputError, match="trie.npz: built for another catalogue.*gloss-export bundle"):
        TokenTrie.load(path, catalog_fingerprint([*TITLES, "New item"]))
    with pytest.raises(InputError, match="built for another tokenizer"):
        TokenTrie.load(path, tokenizer_sha256="other")


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"not a zip file", "not a gloss token trie"), (None, "no such trie file")],
)
def test_load_rejects_missing_and_foreign_files(tmp_path: Path, content: bytes | None, message: str):
    path = tmp_path / "trie.npz"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        TokenTrie.load(path)


def test_a_damaged_mapped_trie_is_refused_when_read(tmp_path: Path):
    trie = build_trie(TITLES, word_tokenize, [END], TOKENIZER)
    trie.leaf_items = trie.leaf_items + 10  # positions past the catalogue
    path = trie.save(tmp_path / "trie.bin")
    loaded = TokenTrie.load(path)  # opening reads sizes and ends only
    with pytest.raises(InputError, match="corrupt trie.*outside"):
        dict(loaded.sequences())
    trie = build_trie(TITLES, word_tokenize, [END], TOKENIZER)
    trie.offsets = trie.offsets.copy()
    trie.offsets[1] = len(trie.tokens) + 5
    with pytest.raises(InputError, match="corrupt trie .node 0 has edges"):
        TokenTrie.load(trie.save(tmp_path / "bad.bin")).allowed_tokens((7,))


def save_format_1(trie: TokenTrie, path: Path) -> Path:
    """What TokenTrie.save wrote before issue 16: one .npz read whole at load."""
    meta = {**trie.meta.to_dict(), "format_version": 1}
    np.savez(path, meta=np.array(json.dumps(meta)), **{n: getattr(trie, n) for n in ARRAYS})
    return path


def test_a_format_1_npz_still_loads_and_is_checked_in_full(tmp_path: Path):
    trie = build_trie(TITLES, word_tokenize, [END], TOKENIZER)
    loaded = TokenTrie.load(save_format_1(trie, tmp_path / "old.npz"), catalog_fingerprint(TITLES), TOKENIZER)
    assert dict(loaded.sequences()) == dict(trie.sequences())
    trie.leaf_items = trie.leaf_items + 10
    with pytest.raises(InputError, match="corrupt trie.*outside"):
        TokenTrie.load(save_format_1(trie, tmp_path / "bad.npz"))


def old_arrays(seqs: list[tuple[int, ...]], ends: tuple[int, ...]) -> dict[str, np.ndarray]:
    """The builder before issue 16 (dict of tuples, padded matrices), the twin the flat builder must equal."""
    by_sequence: dict[tuple[int, ...], list[int]] = {}
    for position, seq in enumerate(seqs):
        for end in sorted(set(ends)):
            by_sequence.setdefault((*seq, end), []).append(position)
    distinct = sorted(by_sequence)
    items = [by_sequence[s] for s in distinct]
    num, width = len(distinct), max(len(s) for s in distinct)
    padded = np.full((num, width), -1, dtype=np.int64)
    lengths = np.array([len(s) for s in distinct], dtype=np.int64)
    for row, seq in enumerate(distinct):
        padded[row, : len(seq)] = seq
    differs = padded[1:] != padded[:-1]
    lcp = np.concatenate([[0], np.where(differs.any(axis=1), differs.argmax(axis=1), width)])
    depth = np.arange(width)[None, :]
    is_new = (depth < lengths[:, None]) & (depth >= lcp[:, None])
    node_at = np.zeros((num, width), dtype=np.int64)
    parents, tokens, next_id = [], [], 1
    for d in range(width):
        new = is_new[:, d]
        node_at[:, d] = next_id - 1 + np.cumsum(new)
        parents.append(node_at[new, d - 1] if d else np.zeros(int(new.sum()), dtype=np.int64))
        tokens.append(padded[new, d])
        next_id += int(new.sum())
    offsets = np.concatenate([[0], np.cumsum(np.bincount(np.concatenate(parents), minlength=next_id))])
    leaves = node_at[np.arange(num), lengths - 1]
    order = np.argsort(leaves, kind="stable")
    counts = np.array([len(items[i]) for i in order], dtype=np.int64)
    return {"offsets": offsets, "tokens": np.concatenate(tokens), "leaf_nodes": leaves[order],
            "leaf_offsets": np.concatenate([[0], np.cumsum(counts)]),
            "leaf_items": np.array([p for i in order for p in items[i]])}


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("ends", [(END,), (END, 99)])
def test_flat_builder_equals_the_old_builder(seed: int, ends: tuple[int, ...]):
    seqs = random_catalogue(seed, num_items=300, max_len=30 if seed % 2 else 5)  # ties past one sorting block
    trie = make_trie(seqs, ends)
    for name, want in old_arrays(seqs, ends).items():
        np.testing.assert_array_equal(getattr(trie, name), want, err_msg=name)


@pytest.mark.parametrize(
    ("titles", "tokenize", "message"),
    [
        ([], word_tokenize, "empty catalogue"),
        (["Red Lipstick", "   "], word_tokenize, "position 1: title '   ' tokenises to nothing"),
        (["Red", "\u200b"], lambda t: word_tokenize(t.replace("\u200b", "")), "position 1.*tokenises to nothing"),
    ],
)
def test_build_trie_rejects_empty_catalogue_and_titles_without_tokens(titles, tokenize, message):
    with pytest.raises(InputError, match=message):
        build_trie(titles, tokenize, [END], TOKENIZER)


def test_check_titles_rejects_blank_titles_before_any_tokenizer():
    check_titles(TITLES)
    with pytest.raises(InputError, match="position 0"):
        check_titles([""])

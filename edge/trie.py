"""A compact token trie of the catalogue's titles, for catalogue-constrained beam search (numpy only).

Every catalogue title is stored as the tokens the model writes after the prompt: ``Title: <title>``
tokenised as training tokenised the completion, followed by an end token (EOS). A beam that may only
extend along the trie ends as a real catalogue title, and its leaf names the catalogue position(s)
(duplicate titles share a leaf).

Layout (CSR, nodes numbered breadth-first, children sorted by token)::

    offsets[n]:offsets[n + 1]   the edges leaving node n (the root is node 0)
    tokens[e]                   the token of edge e; edge e leads to node e + 1
    leaf_nodes[j]               sorted ids of the nodes reached by an end token
    leaf_items[leaf_offsets[j]:leaf_offsets[j + 1]]   catalogue positions of leaf j

The numbering makes child ids implicit, so the trie costs about 4 bytes per edge plus 8 per leaf.
Saved as one ``.npz`` with a JSON metadata entry: the catalogue and tokenizer it was built for, so that a
trie is never used with another catalogue or tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tokenize
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gloss.edge.errors import InputError
from gloss.edge.files import atomic_path, check_input_file
from gloss.edge.strings import StringArray

logger = logging.getLogger(__name__)

# What np.load raises on a damaged .npz (a zip): a missing or broken directory, a member cut short, a bad CRC or
# compressed stream, a header numpy cannot parse (TokenError); and a meta record of the wrong shape.
NPZ_ERRORS = (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile, zlib.error, NotImplementedError,
              RuntimeError, tokenize.TokenError)

TRIE_FORMAT_VERSION = 1
ARRAYS = ("offsets", "tokens", "leaf_nodes", "leaf_offsets", "leaf_items")
# Generated prefix -> node of the running beams (a search of 5 beams adds ~5 per step): a cache, not a second
# trie, so it is small and simply cleared when full.
NODE_CACHE_SIZE = 4096
REBUILD_HINT = "rebuild it with gloss-export bundle (it builds the trie with the generator)"


def catalog_fingerprint(titles: Sequence[str]) -> str:
    """SHA-256 of the titles in catalogue order, each followed by a NUL byte: what a trie's leaves point into.

    A :class:`~gloss.edge.strings.StringArray` (a catalogue's titles) is hashed in batches and remembers the
    result; a saved compact catalogue stores it, so opening a bundle's trie does not rehash a million titles.
    """
    if isinstance(titles, StringArray):
        if titles.fingerprint is None:
            digest = hashlib.sha256()
            for chunk in titles.encoded_chunks():
                digest.update(b"\x00".join(chunk) + b"\x00")
            titles.fingerprint = digest.hexdigest()
        return titles.fingerprint
    digest = hashlib.sha256()
    for title in titles:
        digest.update(title.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


def vocab_fingerprint(pieces: Sequence[str]) -> str:
    """SHA-256 of a vocabulary's token strings in id order.

    The strings are the GGUF's ``tokenizer.ggml.tokens`` (llama.cpp's ``llama_vocab_get_text``), which
    the converter copies from the HF vocabulary (``convert_ids_to_tokens``), so both runtimes agree.
    """
    digest = hashlib.sha256()
    for piece in pieces:
        digest.update(piece.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


@dataclass(frozen=True)
class TrieMeta:
    """What a trie was built from, and its size.

    Attributes:
        catalog_sha256: :func:`catalog_fingerprint` of the catalogue.
        tokenizer_sha256: :func:`vocab_fingerprint` of the tokenizer that made the token sequences.
        end_token_ids: Tokens that end a title (the EOS that ends every training completion).
        num_items: Catalogue items (leaves hold positions ``0 .. num_items - 1``).
        num_sequences: Distinct token sequences (fewer than items when titles repeat).
        num_nodes: Nodes, root included.
        max_length: Tokens of the longest sequence, end token included: no constrained beam is longer.
        format_version: File layout version.
    """

    catalog_sha256: str
    tokenizer_sha256: str
    end_token_ids: tuple[int, ...]
    num_items: int
    num_sequences: int
    num_nodes: int
    max_length: int
    format_version: int = TRIE_FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the bundle manifest's ``trie`` section repeats it)."""
        return {**asdict(self), "end_token_ids": list(self.end_token_ids)}


class TokenTrie:
    """Catalogue titles as token sequences; maps a beam's generated tokens to allowed next tokens and items.

    Build it with :func:`build_trie` (or :meth:`from_sequences`), open a saved one with :meth:`load`.
    It implements :class:`gloss.edge.generation.beam.TokenConstraint`.
    """

    def __init__(self, arrays: dict[str, np.ndarray], meta: TrieMeta) -> None:
        self.offsets, self.tokens = arrays["offsets"], arrays["tokens"]
        self.leaf_nodes, self.leaf_offsets = arrays["leaf_nodes"], arrays["leaf_offsets"]
        self.leaf_items = arrays["leaf_items"]
        self.meta = meta
        self._nodes: dict[tuple[int, ...], int] = {}  # generated prefix -> node, reused across steps

    # -- building ------------------------------------------------------------------------------------------

    @classmethod
    def from_sequences(
        cls,
        sequences: Sequence[Sequence[int]],
        end_token_ids: Sequence[int],
        catalog_sha256: str,
        tokenizer_sha256: str,
    ) -> TokenTrie:
        """Build the trie of ``sequences[i] + (end,)`` for every item ``i`` and end token.

        Args:
            sequences: Token ids of each catalogue item's rendered title, in catalogue order.
            end_token_ids: Tokens that may end a title.
            catalog_sha256: Fingerprint of the catalogue (recorded, checked on load).
            tokenizer_sha256: Fingerprint of the tokenizer (recorded, checked on load).

        Raises:
            InputError: If there are no items, an item has no tokens, or no end token is given.
        """
        if not sequences:
            raise InputError("empty catalogue: a trie needs at least one item")
        if not end_token_ids:
            raise InputError("a trie needs at least one end token (the tokenizer's EOS)")
        empty = [i for i, seq in enumerate(sequences) if len(seq) == 0]
        if empty:
            raise InputError(f"catalogue item at position {empty[0]} tokenises to nothing")
        ends = sorted({int(t) for t in end_token_ids})
        for position, seq in enumerate(sequences):
            inside = set(ends).intersection(map(int, seq))
            if inside:
                raise InputError(f"catalogue item at position {position} holds the end token {min(inside)}")
        by_sequence: dict[tuple[int, ...], list[int]] = {}
        for position, seq in enumerate(sequences):
            for end in ends:
                by_sequence.setdefault((*map(int, seq), end), []).append(position)
        distinct = sorted(by_sequence)
        arrays = _csr_arrays(distinct, [by_sequence[s] for s in distinct])
        meta = TrieMeta(
            catalog_sha256=catalog_sha256,
            tokenizer_sha256=tokenizer_sha256,
            end_token_ids=tuple(ends),
            num_items=len(sequences),
            num_sequences=len(distinct) // len(ends),
            num_nodes=len(arrays["offsets"]) - 1,
            max_length=max(len(s) for s in distinct),
        )
        return cls(arrays, meta)

    # -- lookups -------------------------------------------------------------------------------------------

    @property
    def num_nodes(self) -> int:
        """Nodes, root included."""
        return len(self.offsets) - 1

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays."""
        return sum(getattr(self, name).nbytes for name in ARRAYS)

    def children(self, node: int) -> np.ndarray:
        """Sorted tokens that continue ``node`` (a view; empty for a leaf)."""
        return self.tokens[self.offsets[node] : self.offsets[node + 1]]

    def child(self, node: int, token: int) -> int:
        """Node reached from ``node`` by ``token``, or -1 if the trie has no such edge."""
        start, stop = int(self.offsets[node]), int(self.offsets[node + 1])
        at = start + int(np.searchsorted(self.tokens[start:stop], token))
        return at + 1 if at < stop and self.tokens[at] == token else -1

    def node(self, generated: Sequence[int]) -> int:
        """Node reached by a beam's generated tokens from the root, or -1 if they leave the trie."""
        key = tuple(generated)
        found = self._nodes.get(key)
        if found is not None:
            return found
        parent = self.node(key[:-1]) if key else 0
        node = 0 if not key else (-1 if parent < 0 else self.child(parent, key[-1]))
        if len(self._nodes) >= NODE_CACHE_SIZE:
            self._nodes.clear()
        self._nodes[key] = node
        return node

    def allowed_tokens(self, generated: Sequence[int]) -> np.ndarray:
        """Tokens a beam with these generated tokens may write next (empty once it left the trie)."""
        node = self.node(generated)
        return self.children(node) if node >= 0 else self.tokens[:0]

    def items(self, generated: Sequence[int]) -> tuple[int, ...]:
        """Catalogue positions of a finished beam (tokens ending with an end token); () if not a title."""
        node = self.node(generated)
        at = int(np.searchsorted(self.leaf_nodes, node))
        if node < 0 or at == len(self.leaf_nodes) or self.leaf_nodes[at] != node:
            return ()
        return tuple(self.leaf_items[self.leaf_offsets[at] : self.leaf_offsets[at + 1]].tolist())

    def sequences(self) -> Iterator[tuple[tuple[int, ...], tuple[int, ...]]]:
        """Every ``(token sequence, item positions)`` stored, depth first in token order."""
        stack: list[tuple[int, tuple[int, ...]]] = [(0, ())]
        while stack:
            node, prefix = stack.pop()
            start = int(self.offsets[node])
            kids = self.children(node).tolist()
            if not kids:
                yield prefix, self.items(prefix)
            stack.extend((start + i + 1, (*prefix, t)) for i, t in reversed(list(enumerate(kids))))

    # -- files ---------------------------------------------------------------------------------------------

    def save(self, path: Path) -> Path:
        """Write the trie as one ``.npz`` (arrays + JSON metadata), atomically."""
        with atomic_path(Path(path)) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, meta=np.array(json.dumps(self.meta.to_dict())), **{n: getattr(self, n) for n in ARRAYS})
        return Path(path)

    @classmethod
    def load(
        cls, path: Path, catalog_sha256: str | None = None, tokenizer_sha256: str | None = None
    ) -> TokenTrie:
        """Open a saved trie and check that it was built for this catalogue and tokenizer.

        Args:
            path: A file written by :meth:`save`.
            catalog_sha256: Expected :func:`catalog_fingerprint`; None skips the check.
            tokenizer_sha256: Expected :func:`vocab_fingerprint`; None skips the check.

        Raises:
            InputError: If the file is unreadable, of another format, inconsistent, or built for another
                catalogue or tokenizer.
        """
        path = check_input_file(Path(path), "trie file")
        try:
            with np.load(path, allow_pickle=False) as data:
                raw = json.loads(str(data["meta"]))
                arrays = {name: np.ascontiguousarray(data[name]) for name in ARRAYS}
            meta = TrieMeta(**{**raw, "end_token_ids": tuple(raw["end_token_ids"])})
        except NPZ_ERRORS as exc:
            raise InputError(f"{path}: not a gloss token trie ({type(exc).__name__}: {exc}); {REBUILD_HINT}") from None
        if meta.format_version != TRIE_FORMAT_VERSION:
            raise InputError(
                f"{path}: trie format {meta.format_version}, expected {TRIE_FORMAT_VERSION}; {REBUILD_HINT}"
            )
        trie = cls(arrays, meta)
        trie.check(catalog_sha256, tokenizer_sha256, str(path))
        return trie

    def check(self, catalog_sha256: str | None, tokenizer_sha256: str | None, name: str = "trie") -> None:
        """Raise InputError unless the arrays are consistent and the fingerprints (when given) match."""
        if catalog_sha256 is not None and catalog_sha256 != self.meta.catalog_sha256:
            raise InputError(f"{name}: built for another catalogue (titles differ); {REBUILD_HINT}")
        if tokenizer_sha256 is not None and tokenizer_sha256 != self.meta.tokenizer_sha256:
            raise InputError(f"{name}: built for another tokenizer than the generator's; {REBUILD_HINT}")
        problem = _layout_problem(self)
        if problem:
            raise InputError(f"{name}: corrupt trie ({problem}); {REBUILD_HINT}")


def check_titles(titles: Sequence[str]) -> None:
    """Raise InputError for an empty catalogue or a blank title (checked before any slow bundle step)."""
    if not titles:
        raise InputError("empty catalogue: a trie needs at least one item")
    for position, title in enumerate(titles):
        if not title.strip():
            raise InputError(
                f"catalogue item at position {position}: title {title!r} tokenises to nothing; "
                "give every item a non-empty title"
            )


def build_trie(
    titles: Sequence[str],
    tokenize: Callable[[str], Sequence[int]],
    end_token_ids: Sequence[int],
    tokenizer_sha256: str,
    render: Callable[[str], str] | None = None,
) -> TokenTrie:
    """Tokenise every catalogue title as the model's completion and build the trie.

    Args:
        titles: Catalogue titles in catalogue order.
        tokenize: Text -> token ids without BOS or special tokens (how training encodes the completion).
        end_token_ids: Tokens that end a completion (EOS).
        tokenizer_sha256: :func:`vocab_fingerprint` of the tokenizer behind ``tokenize``.
        render: Title -> completion text; default :func:`gloss.edge.prompt.render_item` (``Title: <title>``).

    Raises:
        InputError: For an empty catalogue, or a title that is blank or tokenises to nothing.
    """
    from gloss.edge.prompt import render_item

    render = render or render_item
    check_titles(titles)
    bare = list(tokenize(render("")))  # a title that adds no token to the bare prefix tokenises to nothing
    sequences = []
    for position, title in enumerate(titles):
        seq = list(tokenize(render(title)))
        if not seq or seq == bare:
            raise InputError(
                f"catalogue item at position {position}: title {title[:60]!r} tokenises to nothing; "
                "give every item a non-empty title"
            )
        sequences.append(seq)
    return TokenTrie.from_sequences(sequences, end_token_ids, catalog_fingerprint(titles), tokenizer_sha256)


def _csr_arrays(distinct: list[tuple[int, ...]], items: list[list[int]]) -> dict[str, np.ndarray]:
    """CSR arrays of sorted, distinct sequences (none a prefix of another: each ends with an end token)."""
    num, width = len(distinct), max(len(s) for s in distinct)
    padded = np.full((num, width), -1, dtype=np.int64)
    lengths = np.array([len(s) for s in distinct], dtype=np.int64)
    for row, seq in enumerate(distinct):
        padded[row, : len(seq)] = seq
    # lcp[i]: tokens sequence i shares with sequence i - 1; a node is new where depth >= lcp.
    differs = padded[1:] != padded[:-1]
    lcp = np.concatenate([[0], np.where(differs.any(axis=1), differs.argmax(axis=1), width)])
    depth = np.arange(width)[None, :]
    is_new = (depth < lengths[:, None]) & (depth >= lcp[:, None])
    node_at = np.zeros((num, width), dtype=np.int64)
    parents, tokens, next_id = [], [], 1
    for d in range(width):  # breadth first: depth by depth, rows (= tokens under a parent) in order
        new = is_new[:, d]
        node_at[:, d] = next_id - 1 + np.cumsum(new)
        parents.append(node_at[new, d - 1] if d else np.zeros(int(new.sum()), dtype=np.int64))
        tokens.append(padded[new, d])
        next_id += int(new.sum())
    parent = np.concatenate(parents)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(parent, minlength=next_id))])
    leaves = node_at[np.arange(num), lengths - 1]
    order = np.argsort(leaves, kind="stable")  # a short title's leaf is numbered before a longer one's
    counts = np.array([len(items[i]) for i in order], dtype=np.int64)
    return {
        "offsets": offsets.astype(np.int32),
        "tokens": np.concatenate(tokens).astype(np.int32),
        "leaf_nodes": leaves[order].astype(np.int32),
        "leaf_offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int32),
        "leaf_items": np.array([p for i in order for p in items[i]], dtype=np.int32),
    }


def _layout_problem(trie: TokenTrie) -> str | None:
    """A short description of the first inconsistency in the arrays, or None."""
    offsets, tokens = trie.offsets, trie.tokens
    meta = trie.meta
    if offsets.ndim != 1 or len(offsets) != meta.num_nodes + 1 or len(tokens) != meta.num_nodes - 1:
        return f"{len(offsets) - 1} nodes and {len(tokens)} edges, metadata says {meta.num_nodes} nodes"
    if offsets[0] != 0 or offsets[-1] != len(tokens) or np.any(np.diff(offsets) < 0):
        return "node offsets are not increasing"
    if len(trie.leaf_offsets) != len(trie.leaf_nodes) + 1 or trie.leaf_offsets[-1] != len(trie.leaf_items):
        return "leaf offsets do not match the leaf items"
    if len(trie.leaf_items) and (trie.leaf_items.min() < 0 or trie.leaf_items.max() >= meta.num_items):
        return f"an item position is outside 0..{meta.num_items - 1}"
    if len(trie.leaf_nodes) and (trie.leaf_nodes.min() < 1 or trie.leaf_nodes.max() >= meta.num_nodes):
        return "a leaf is not a node"
    return None

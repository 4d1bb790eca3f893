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
Saved (format 2) as one :mod:`gloss.edge.arrays` file whose metadata names the catalogue and tokenizer it was
built for, so that a trie is never used with another catalogue or tokenizer; it is opened memory-mapped, so a
million-title trie (~15 million nodes) costs nothing to open and a beam reads only the nodes it walks, each
lookup checking the offsets and positions it reads. Format 1 (an ``.npz`` read into memory) still loads.
The arrays are built by :mod:`gloss.edge.trie_csr` from flat token arrays, in memory linear in the tokens.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tokenize
import zipfile
import zlib
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gloss.edge.arrays import open_arrays, save_arrays
from gloss.edge.errors import InputError
from gloss.edge.files import check_input_file
from gloss.edge.strings import StringArray
from gloss.edge.trie_csr import FlatSequences, csr_arrays

logger = logging.getLogger(__name__)

# What np.load raises on a damaged .npz (a zip): a missing or broken directory, a member cut short, a bad CRC or
# compressed stream, a header numpy cannot parse (TokenError); and a meta record of the wrong shape.
NPZ_ERRORS = (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile, zlib.error, NotImplementedError,
              RuntimeError, tokenize.TokenError)

TRIE_FORMAT_VERSION = 2
LEGACY_FORMAT_VERSION = 1  # the .npz read into memory
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
        sequences: Sequence[Sequence[int]] | FlatSequences,
        end_token_ids: Sequence[int],
        catalog_sha256: str,
        tokenizer_sha256: str,
    ) -> TokenTrie:
        """Build the trie of ``sequences[i] + (end,)`` for every item ``i`` and end token.

        Args:
            sequences: Token ids of each catalogue item's rendered title, in catalogue order (lists, or one
                :class:`~gloss.edge.trie_csr.FlatSequences` for a large catalogue).
            end_token_ids: Tokens that may end a title.
            catalog_sha256: Fingerprint of the catalogue (recorded, checked on load).
            tokenizer_sha256: Fingerprint of the tokenizer (recorded, checked on load).

        Raises:
            InputError: If there are no items, an item has no tokens, or no end token is given.
        """
        flat = sequences if isinstance(sequences, FlatSequences) else FlatSequences.from_lists(list(sequences))
        if not len(flat):
            raise InputError("empty catalogue: a trie needs at least one item")
        if not end_token_ids:
            raise InputError("a trie needs at least one end token (the tokenizer's EOS)")
        empty = np.flatnonzero(flat.lengths == 0)
        if len(empty):
            raise InputError(f"catalogue item at position {int(empty[0])} tokenises to nothing")
        ends = sorted({int(t) for t in end_token_ids})
        inside = np.flatnonzero(np.isin(flat.tokens, ends))
        if len(inside):
            position = int(np.searchsorted(flat.offsets, inside[0], side="right") - 1)
            own = flat.tokens[flat.offsets[position] : flat.offsets[position + 1]]
            raise InputError(f"catalogue item at position {position} holds the end token "
                             f"{min(set(ends).intersection(own.tolist()))}")
        with_ends = [flat.with_end(end) for end in ends]
        combined = FlatSequences(np.concatenate([f.tokens for f in with_ends]),
                                 np.concatenate([[0], *(f.offsets[1:] + i * len(f.tokens)
                                                        for i, f in enumerate(with_ends))]).astype(np.int64))
        items = np.tile(np.arange(len(flat), dtype=np.int64), len(ends))
        arrays, num_distinct, max_length = csr_arrays(combined, items)
        meta = TrieMeta(
            catalog_sha256=catalog_sha256,
            tokenizer_sha256=tokenizer_sha256,
            end_token_ids=tuple(ends),
            num_items=len(flat),
            num_sequences=num_distinct // len(ends),
            num_nodes=len(arrays["offsets"]) - 1,
            max_length=max_length,
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
        """Node reached from ``node`` by ``token``, or -1 if the trie has no such edge.

        Raises:
            InputError: If the stored offsets lead outside the trie (a damaged file).
        """
        start, stop = int(self.offsets[node]), int(self.offsets[node + 1])
        if not 0 <= start <= stop <= len(self.tokens):
            raise InputError(f"corrupt trie (node {node} has edges {start}..{stop}); {REBUILD_HINT}")
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
        found = tuple(self.leaf_items[self.leaf_offsets[at] : self.leaf_offsets[at + 1]].tolist())
        if any(not 0 <= item < self.meta.num_items for item in found):
            raise InputError(f"corrupt trie (an item position is outside 0..{self.meta.num_items - 1}); "
                             f"{REBUILD_HINT}")
        return found

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
        """Write the trie (arrays + metadata, format 2) atomically."""
        return save_arrays(Path(path), {n: np.asarray(getattr(self, n), dtype=np.int32) for n in ARRAYS},
                           self.meta.to_dict())

    @classmethod
    def load(
        cls, path: Path, catalog_sha256: str | None = None, tokenizer_sha256: str | None = None
    ) -> TokenTrie:
        """Open a saved trie (memory-mapped) and check that it was built for this catalogue and tokenizer.

        Args:
            path: A file written by :meth:`save` (or a format-1 ``.npz``).
            catalog_sha256: Expected :func:`catalog_fingerprint`; None skips the check.
            tokenizer_sha256: Expected :func:`vocab_fingerprint`; None skips the check.

        Raises:
            InputError: If the file is unreadable, of another format, inconsistent, or built for another
                catalogue or tokenizer.
        """
        path = check_input_file(Path(path), "trie file")
        with open(path, "rb") as handle:
            legacy = handle.read(2) == b"PK"  # a zip: the format-1 .npz
        # CRC-checked (~0.1 s for a million titles' 90 MB): a flipped byte would change which titles beams may write
        arrays, raw = _read_legacy(path) if legacy else open_arrays(path, "token trie", REBUILD_HINT, verify=True)
        try:
            meta = TrieMeta(**{**raw, "end_token_ids": tuple(raw["end_token_ids"])})
        except (KeyError, TypeError) as exc:
            raise InputError(f"{path}: not a gloss token trie ({type(exc).__name__}: {exc}); {REBUILD_HINT}") from None
        expected = LEGACY_FORMAT_VERSION if legacy else TRIE_FORMAT_VERSION
        if meta.format_version != expected or any(name not in arrays for name in ARRAYS):
            raise InputError(f"{path}: trie format {meta.format_version}, expected {TRIE_FORMAT_VERSION}; "
                             f"{REBUILD_HINT}")
        trie = cls({name: arrays[name] for name in ARRAYS}, meta)
        trie.check(catalog_sha256, tokenizer_sha256, str(path), full=legacy)
        return trie

    def check(
        self, catalog_sha256: str | None, tokenizer_sha256: str | None, name: str = "trie", full: bool = True
    ) -> None:
        """Raise InputError unless the arrays fit together and the fingerprints (when given) match.

        Args:
            catalog_sha256: Expected catalogue fingerprint, or None.
            tokenizer_sha256: Expected tokenizer fingerprint, or None.
            name: The file, for messages.
            full: Also scan every array (O(nodes)); a memory-mapped trie checks sizes and ends only, and each
                lookup checks what it reads.
        """
        if catalog_sha256 is not None and catalog_sha256 != self.meta.catalog_sha256:
            raise InputError(f"{name}: built for another catalogue (titles differ); {REBUILD_HINT}")
        if tokenizer_sha256 is not None and tokenizer_sha256 != self.meta.tokenizer_sha256:
            raise InputError(f"{name}: built for another tokenizer than the generator's; {REBUILD_HINT}")
        problem = _layout_problem(self, full)
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
    tokens, ends = array("i"), array("q", [0])  # flat: ~4 bytes per token, no Python object per token
    for position, title in enumerate(titles):
        seq = list(tokenize(render(title)))
        if not seq or seq == bare:
            raise InputError(
                f"catalogue item at position {position}: title {title[:60]!r} tokenises to nothing; "
                "give every item a non-empty title"
            )
        tokens.extend(seq)
        ends.append(len(tokens))
    flat = FlatSequences(np.frombuffer(tokens, dtype=np.int32) if tokens else np.zeros(0, np.int32),
                         np.frombuffer(ends, dtype=np.int64))
    return TokenTrie.from_sequences(flat, end_token_ids, catalog_fingerprint(titles), tokenizer_sha256)


def _read_legacy(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays and metadata of a format-1 ``.npz`` trie, read into memory."""
    try:
        with np.load(path, allow_pickle=False) as data:
            raw = json.loads(str(data["meta"]))
            arrays = {name: np.ascontiguousarray(data[name]) for name in ARRAYS}
    except NPZ_ERRORS as exc:
        raise InputError(f"{path}: not a gloss token trie ({type(exc).__name__}: {exc}); {REBUILD_HINT}") from None
    return arrays, raw


def _layout_problem(trie: TokenTrie, full: bool = True) -> str | None:
    """A short description of the first inconsistency in the arrays, or None (``full``: scan every value)."""
    offsets, tokens = trie.offsets, trie.tokens
    meta = trie.meta
    if offsets.ndim != 1 or len(offsets) != meta.num_nodes + 1 or len(tokens) != meta.num_nodes - 1:
        return f"{len(offsets) - 1} nodes and {len(tokens)} edges, metadata says {meta.num_nodes} nodes"
    if offsets[0] != 0 or offsets[-1] != len(tokens) or (full and np.any(np.diff(offsets) < 0)):
        return "node offsets are not increasing"
    if len(trie.leaf_offsets) != len(trie.leaf_nodes) + 1 or trie.leaf_offsets[-1] != len(trie.leaf_items):
        return "leaf offsets do not match the leaf items"
    if not full:
        return None
    if len(trie.leaf_items) and (trie.leaf_items.min() < 0 or trie.leaf_items.max() >= meta.num_items):
        return f"an item position is outside 0..{meta.num_items - 1}"
    if len(trie.leaf_nodes) and (trie.leaf_nodes.min() < 1 or trie.leaf_nodes.max() >= meta.num_nodes):
        return "a leaf is not a node"
    return None

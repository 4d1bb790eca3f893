"""Building the catalogue trie's CSR arrays from flat token sequences, in memory linear in the tokens (numpy only).

A million titles are ~25 million tokens: as Python tuples they cost ~1 GB, and a padded (titles x longest title)
matrix several GB. Here the sequences stay one int32 array + offsets; they are sorted lexicographically a block of
tokens at a time (only ties go on to the next block), the common prefix of each sorted neighbour gives the shared
nodes, and the nodes are numbered breadth first one depth at a time, each step touching only the sequences still
that long. The result is the layout :class:`gloss.edge.trie.TokenTrie` documents.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

BLOCK = 8  # tokens compared per sorting pass


@dataclass(frozen=True)
class FlatSequences:
    """Token sequences as one array: sequence ``i`` is ``tokens[offsets[i]:offsets[i + 1]]``."""

    tokens: np.ndarray  # int32 (or int64)
    offsets: np.ndarray  # int64, len = num + 1

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per sequence."""
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @classmethod
    def from_lists(cls, sequences: list[list[int]] | list[tuple[int, ...]]) -> FlatSequences:
        """Flatten Python sequences."""
        lengths = np.array([len(s) for s in sequences], dtype=np.int64)
        tokens = np.fromiter((int(t) for s in sequences for t in s), dtype=np.int64, count=int(lengths.sum()))
        return cls(tokens, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))

    def with_end(self, end: int) -> FlatSequences:
        """Every sequence followed by ``end``."""
        tokens = np.insert(self.tokens, self.offsets[1:], end)
        return FlatSequences(tokens, self.offsets + np.arange(len(self.offsets), dtype=np.int64))

    def column(self, rows: np.ndarray, depth: int, pad: int) -> np.ndarray:
        """Token ``depth`` of each of ``rows`` (``pad`` where a sequence is shorter)."""
        at = self.offsets[rows] + depth
        inside = at < self.offsets[rows + 1]
        return np.where(inside, self.tokens[np.minimum(at, max(len(self.tokens) - 1, 0))], pad)


def lexicographic_order(seqs: FlatSequences) -> np.ndarray:
    """Indices of the sequences in lexicographic order (a shorter sequence before its extensions; equal sequences
    keep their index order)."""
    num = len(seqs)
    order = np.arange(num)
    group = np.zeros(num, dtype=np.int64)  # per sorted slot: first slot of its group of still-tied sequences
    tied = np.arange(num) if num > 1 else np.zeros(0, dtype=np.int64)  # slots whose group has > 1 member
    lengths = seqs.lengths
    depth = 0
    while len(tied):
        rows = order[tied]
        keys = [seqs.column(rows, depth + j, -1) for j in range(BLOCK)]
        perm = np.lexsort([*reversed(keys), group[tied]])  # stable: equal sequences keep index order
        rows, keys = rows[perm], [k[perm] for k in keys]
        order[tied] = rows
        starts = np.ones(len(tied), dtype=bool)
        starts[1:] = group[tied][1:] != group[tied][:-1]
        for key in keys:
            starts[1:] |= key[1:] != key[:-1]
        group[tied] = np.maximum.accumulate(np.where(starts, tied, 0))
        sizes = np.bincount(np.cumsum(starts) - 1)
        many = np.repeat(sizes, sizes) > 1
        tied = tied[many & (lengths[rows] > depth + BLOCK)]  # a group whose members all ended: equal sequences
        depth += BLOCK
    return order


def common_prefixes(seqs: FlatSequences, order: np.ndarray) -> np.ndarray:
    """``lcp[i]``: tokens sorted sequence ``i`` shares with sorted sequence ``i - 1`` (``lcp[0] = 0``)."""
    num = len(order)
    lcp = np.zeros(num, dtype=np.int64)
    pending = np.arange(1, num)
    depth = 0
    while len(pending):
        before, after = order[pending - 1], order[pending]
        differ = np.stack([seqs.column(before, depth + j, -1) != seqs.column(after, depth + j, -2)
                           for j in range(BLOCK)], axis=1)
        found = differ.any(axis=1)
        lcp[pending[found]] = depth + differ[found].argmax(axis=1)
        pending = pending[~found]
        depth += BLOCK
    return lcp


def previous_smaller(values: np.ndarray) -> np.ndarray:
    """For each ``i``, the last ``j < i`` with ``values[j] < values[i]``, or -1 (a monotonic stack)."""
    out = np.full(len(values), -1, dtype=np.int64)
    stack: list[int] = []
    listed = values.tolist()
    for i, value in enumerate(listed):
        while stack and listed[stack[-1]] >= value:
            stack.pop()
        if stack:
            out[i] = stack[-1]
        stack.append(i)
    return out


def csr_arrays(seqs: FlatSequences, items: np.ndarray) -> tuple[dict[str, np.ndarray], int, int]:
    """The trie's arrays for ``seqs`` (each ending with an end token, so none is a prefix of another).

    Args:
        seqs: Token sequences.
        items: Catalogue position of each sequence (equal sequences share one leaf naming them all).

    Returns:
        ``(arrays, num_distinct_sequences, max_length)``; arrays as :data:`gloss.edge.trie.ARRAYS`.
    """
    order = lexicographic_order(seqs)
    lcp = common_prefixes(seqs, order)
    lengths = seqs.lengths[order]
    duplicate = (lcp == lengths) & (np.arange(len(order)) > 0)  # equal to the sequence before it
    leaf_of = np.cumsum(~duplicate) - 1  # distinct-sequence number of each sorted sequence
    keep = ~duplicate
    distinct, lcp, lengths = order[keep], lcp[keep], lengths[keep]
    parent_row = previous_smaller(lcp)  # whose node at depth lcp - 1 a sequence branches from
    num = len(distinct)
    node_of = np.zeros(num, dtype=np.int64)  # each sequence's node at the depth being numbered
    leaf_node = np.zeros(num, dtype=np.int64)
    tokens, parents = [], []
    next_id = 1
    alive = np.arange(num)
    for depth in range(int(lengths.max())):
        alive = alive[lengths[alive] > depth]
        new = alive[lcp[alive] <= depth]
        ids = next_id + np.arange(len(new), dtype=np.int64)
        if depth == 0:
            parent = np.zeros(len(new), dtype=np.int64)
        else:
            branching = lcp[new] == depth
            parent = node_of[np.where(branching, parent_row[new], new)]
        tokens.append(seqs.column(distinct[new], depth, -1))
        parents.append(parent)
        node_of[new] = ids
        ends_here = lengths[new] == depth + 1
        leaf_node[new[ends_here]] = ids[ends_here]
        next_id += len(new)
    parent_all = np.concatenate(parents)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(parent_all, minlength=next_id))])
    by_leaf = np.argsort(leaf_node, kind="stable")  # a short title's leaf is numbered before a longer one's
    counts = np.bincount(leaf_of, minlength=num)[by_leaf]
    # the items of every sorted sequence (equal ones adjacent, in index order), regrouped in leaf order
    rank = np.empty(num, dtype=np.int64)
    rank[by_leaf] = np.arange(num)
    pick = np.argsort(rank[leaf_of], kind="stable")
    grouped = items[order]
    arrays = {
        "offsets": offsets.astype(np.int32),
        "tokens": np.concatenate(tokens).astype(np.int32),
        "leaf_nodes": leaf_node[by_leaf].astype(np.int32),
        "leaf_offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int32),
        "leaf_items": grouped[pick].astype(np.int32),
    }
    return arrays, num, int(lengths.max())

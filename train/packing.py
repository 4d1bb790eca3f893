"""Padding-free batches: each batch's examples are packed into rows, one attention block per example.

A packed row concatenates whole examples; ``position_ids`` restart at 0 for every example and no
``attention_mask`` is passed, which is how transformers (``masking_utils.find_packed_sequence_indices``,
4.5x and 5.x) recognises packed sequences and builds a block-causal mask for sdpa/eager attention, so no token
attends to another example. The row's unused tail is padding with its own restarted positions (a separate
block, never labelled). The first label of every example is -100, so no example predicts the next one's
first token. A batch keeps the same examples as a padded batch would; only the padding is gone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from gloss.edge.errors import InputError

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


def check_pack_length(lengths: Sequence[int], pack_length: int) -> None:
    """Refuse a row length that cannot hold the longest example.

    Raises:
        InputError: If any example is longer than ``pack_length``.
    """
    longest = max(lengths, default=0)
    if longest > pack_length:
        raise InputError(f"--pack-length {pack_length} is shorter than the longest example ({longest} tokens); "
                         "use at least --max-seq-length, or leave --pack-length unset")


def pack_rows(lengths: Sequence[int], pack_length: int) -> list[list[int]]:
    """Group example indices into rows of at most ``pack_length`` tokens (first fit, longest first).

    Args:
        lengths: Token count of each example.
        pack_length: Longest row.

    Returns:
        Rows of example indices; every index appears exactly once.

    Raises:
        InputError: If an example is longer than ``pack_length``.
    """
    check_pack_length(lengths, pack_length)
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for row, free in enumerate(room):
            if lengths[index] <= free:
                rows[row].append(index)
                room[row] -= lengths[index]
                break
        else:
            rows.append([index])
            room.append(pack_length - lengths[index])
    return rows


class PackingCollator:
    """Packs encoded examples (``input_ids``/``labels`` lists) into ``input_ids``, ``labels``, ``position_ids``.

    Args:
        pad_token_id: Fills the tail of rows shorter than the longest row.
        pack_length: Longest row in tokens.
    """

    def __init__(self, pad_token_id: int, pack_length: int) -> None:
        self.pad_token_id = pad_token_id
        self.pack_length = pack_length

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, Any]:
        """Batch encoded examples into packed rows."""
        import torch

        rows = pack_rows([len(f["input_ids"]) for f in features], self.pack_length)
        width = max(sum(len(features[i]["input_ids"]) for i in row) for row in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            at = 0
            for i in row:
                n = len(features[i]["input_ids"])
                ids[r, at:at + n] = torch.tensor(features[i]["input_ids"])
                labels[r, at:at + n] = torch.tensor(features[i]["labels"])
                labels[r, at] = IGNORE_INDEX
                positions[r, at:at + n] = torch.arange(n)
                at += n
            positions[r, at:] = torch.arange(width - at)  # padding tail: a block of its own
        return {"input_ids": ids, "labels": labels, "position_ids": positions}

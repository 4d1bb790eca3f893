"""Training examples: prepared split rows -> token ids with completion-only labels, and the padded collator.

The paper's objective (``last``) has one example per training user: the history before the held-out items and
the item that follows it. The optional ``all`` objective uses the whole training history instead: every item
after the first is a target with the items before it as the history (a user with n training items gives n - 1
examples; validation and test items are never included).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gloss.edge.catalog import load_catalog
from gloss.edge.files import read_jsonl
from gloss.edge.prompt import build_prompt, fit_history, render_item
from gloss.edge.splits import Split
from gloss.train.data import SPLIT_FILES, read_manifest
from gloss.train.model import TokenPolicy

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
TitledRow = tuple[dict[str, Any], list[str], str]


def load_split_titles(
    data_dir: Path, split: Split, max_users: int | None = None
) -> list[tuple[dict[str, Any], list[str], str]]:
    """Rows of a prepared split with their history and target titles: ``(row, history_titles, target_title)``.

    Raises:
        InputError: If the data folder is not a finished ``gloss-train prepare`` output.
    """
    read_manifest(data_dir)
    catalog = load_catalog(Path(data_dir) / "items.jsonl.gz")
    out = []
    for row in read_jsonl(Path(data_dir) / SPLIT_FILES[split]):
        if max_users is not None and len(out) >= max_users:
            break
        out.append((row, catalog.titles_of(row["history"]), catalog.title(row["target"])))
    return out


def encode_example(
    tokenizer: Any, policy: TokenPolicy, history: Sequence[str], target: str, max_seq_length: int
) -> dict[str, list[int]]:
    """Token ids and labels of one training text; labels are -100 on every prompt token.

    Prompt and completion (``Title: <target>`` + EOS) are tokenised separately so that the boundary is exact
    and the prompt ids equal those generation uses; the oldest history items are dropped to fit.
    """
    completion = policy.encode_completion(tokenizer, render_item(target))
    fitted = fit_history(
        history, lambda text: len(policy.encode_prompt(tokenizer, text)), max_seq_length - len(completion)
    )
    prompt = policy.encode_prompt(tokenizer, build_prompt(fitted))
    return {"input_ids": prompt + completion, "labels": [IGNORE_INDEX] * len(prompt) + completion}


class CompletionCollator:
    """Right-pads ``input_ids``/``labels`` of encoded examples into tensors (labels padded with -100)."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, Any]:
        """Batch encoded examples."""
        import torch

        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n] = torch.tensor(f["input_ids"])
            labels[i, :n] = torch.tensor(f["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def expand_histories(rows: Sequence[TitledRow]) -> list[TitledRow]:
    """The ``all`` objective: every item after the first of each training row is a target.

    Args:
        rows: ``(row, history_titles, target_title)`` of the train split.

    Returns:
        One row per (prefix, next item), users in input order, prefixes shortest first.
    """
    out = []
    for row, history, target in rows:
        full = [*history, target]
        out.extend((row, full[:i], full[i]) for i in range(1, len(full)))
    return out

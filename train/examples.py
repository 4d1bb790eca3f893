"""Training examples: prepared split rows -> token ids with completion-only labels, and the padded collator.

The paper's objective (``last``) has one example per training user: the history before the held-out items and
the item that follows it. The optional ``all`` objective uses the whole training history instead: every item
after the first is a target with the items before it as the history (a user with n training items gives n - 1
examples, O(n^2) tokens). ``dense`` gets the same n - 1 targets from one text per user: the ``last`` text (the
paper's prompt as the edge builds it, then the target) with labels also on every history title after the first
(its ``Title: <title>`` line and newline), so each history line is predicted from the lines before it. Validation
and test items are never included in any of them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gloss.edge.catalog import load_catalog
from gloss.edge.errors import GlossError, InputError
from gloss.edge.files import read_jsonl
from gloss.edge.prompt import PROMPT_TEMPLATE, build_prompt, fit_history, render_item
from gloss.edge.splits import Split
from gloss.train.data import SPLIT_FILES, read_manifest
from gloss.train.model import TokenPolicy

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
TitledRow = tuple[dict[str, Any], list[str], str]


class TooLongError(InputError):
    """A text does not fit ``--max-seq-length`` even with only its last history item."""


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
) -> dict[str, Any]:
    """Token ids and labels of one training text; labels are -100 on every prompt token.

    Prompt and completion (``Title: <target>`` + EOS) are tokenised separately so that the boundary is exact
    and the prompt ids equal those generation uses; the oldest history items are dropped to fit.

    Returns:
        ``input_ids``, ``labels`` and ``num_targets`` (1: the supervised next-item predictions).

    Raises:
        TooLongError: If even the last history item alone does not fit ``max_seq_length``.
    """
    completion, fitted = _fit(tokenizer, policy, history, target, max_seq_length)
    prompt = policy.encode_prompt(tokenizer, build_prompt(fitted))
    return {"input_ids": prompt + completion, "labels": [IGNORE_INDEX] * len(prompt) + completion,
            "num_targets": 1}


def encode_dense(
    tokenizer: Any, policy: TokenPolicy, history: Sequence[str], target: str, max_seq_length: int
) -> dict[str, Any]:
    """The ``dense`` text of one user: :func:`encode_example`'s ids, labels also on history titles 2..n.

    The ids are exactly those of :func:`encode_example` (same prompt, same completion, the oldest items dropped
    the same way to fit). The labels add every history line after the first of the *kept* history: the tokens
    that start inside its ``Title: <title>`` line and newline (checked to begin and end on token boundaries),
    so each line is predicted from the lines before it. A user whose kept history has one item supervises the
    target only (the ``last`` text).

    Returns:
        ``input_ids``, ``labels`` and ``num_targets`` (kept history items - 1, + 1 for the target).

    Raises:
        TooLongError: If even the last history item alone does not fit ``max_seq_length``.
        InputError: If the tokenizer gives no offsets.
        GlossError: If a title line does not start and end on a token boundary.
    """
    completion, fitted = _fit(tokenizer, policy, history, target, max_seq_length)
    text = build_prompt(fitted)
    try:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError as exc:  # slow (Python) tokenizers have no offsets
        raise InputError("--objective dense needs a fast tokenizer (offsets of the title lines)") from exc
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    labels = [IGNORE_INDEX] * len(ids)
    for start, end in _title_line_spans(text, fitted)[1:]:
        inside = [i for i, (a, _) in enumerate(offsets) if start <= a < end]
        if not inside or offsets[inside[0]][0] != start or offsets[inside[-1]][1] != end:
            raise GlossError(f"the tokenizer merges across a title line ({text[start:end]!r}); "
                             "--objective dense cannot label it exactly: use --objective last or all")
        for i in inside:
            labels[i] = ids[i]
    prompt = policy.encode_prompt(tokenizer, text)  # [BOS] + the same ids
    bos = [IGNORE_INDEX] * (len(prompt) - len(ids))
    return {"input_ids": prompt + completion, "labels": bos + labels + completion, "num_targets": len(fitted)}


def _fit(
    tokenizer: Any, policy: TokenPolicy, history: Sequence[str], target: str, max_seq_length: int
) -> tuple[list[int], list[str]]:
    """The completion's ids and the newest history items whose prompt fits beside it."""
    completion = policy.encode_completion(tokenizer, render_item(target))
    try:
        fitted = fit_history(
            history, lambda text: len(policy.encode_prompt(tokenizer, text)), max_seq_length - len(completion)
        )
    except InputError as exc:
        raise TooLongError(f"{exc} (--max-seq-length {max_seq_length} less the completion's "
                           f"{len(completion)} tokens)") from exc
    return completion, fitted


def _title_line_spans(prompt: str, history: Sequence[str]) -> list[tuple[int, int]]:
    """Character spans of the history lines (``Title: <title>`` and its newline) in ``build_prompt(history)``."""
    at = PROMPT_TEMPLATE.index("{}")  # the history block is the template's first field
    spans = []
    for title in history:
        line = render_item(title) + "\n"
        if prompt[at:at + len(line)] != line:
            raise GlossError(f"history line {line!r} not found at character {at} of the prompt")
        spans.append((at, at + len(line)))
        at += len(line)
    return spans


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


def encode_texts(
    rows: Sequence[TitledRow], objective: str, tokenizer: Any, policy: TokenPolicy, max_seq_length: int,
    what: str = "training",
) -> list[dict[str, Any]]:
    """Encode rows for an objective; texts that cannot fit ``max_seq_length`` are skipped (with a warning).

    Args:
        rows: ``(row, history_titles, target_title)``; for ``all``, already expanded by :func:`expand_histories`.
        objective: ``last``, ``all`` (one completion-only text per row) or ``dense`` (:func:`encode_dense`).
        tokenizer: The base tokenizer.
        policy: Its token policy.
        max_seq_length: Longest text in tokens.
        what: The rows' name in messages (``training``, ``validation``).

    Returns:
        The encoded texts, in row order.

    Raises:
        InputError: If there are rows but none fits, or (``dense``) no text has a history title to label: every
            kept history has one item, which would make ``dense`` the ``last`` objective.
    """
    encode = encode_dense if objective == "dense" else encode_example
    out, too_long = [], 0
    for _, history, target in rows:
        try:
            out.append(encode(tokenizer, policy, history, target, max_seq_length))
        except TooLongError:
            too_long += 1
    if rows and not out:
        raise InputError(f"all {len(rows)} {what} texts exceed --max-seq-length {max_seq_length} even with only "
                         "their last history item; raise --max-seq-length")
    if too_long:
        logger.warning("%d of %d %s texts exceed --max-seq-length %d even with one history item: skipped",
                       too_long, len(rows), what, max_seq_length)
    if objective == "dense" and out:
        single = sum(e["num_targets"] == 1 for e in out)
        if single == len(out):
            raise InputError(f"--objective dense: none of the {len(out)} {what} texts has a history title to "
                             "supervise (every kept history has a single item); use --objective last")
        if single:
            logger.info("%d of %d dense texts keep a single history item: their target only is labelled",
                        single, len(out))
    return out

"""Beam-search queries of a trained run (transformers), in the queries-file format `gloss-edge eval` reads."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from gloss.edge.errors import InputError, require
from gloss.edge.files import write_jsonl_atomic
from gloss.edge.logs import progress_enabled
from gloss.edge.prompt import build_prompt, fit_history, parse_generated, render_item
from gloss.edge.splits import Split
from gloss.train.data import MANIFEST_NAME
from gloss.train.model import TokenPolicy, token_policy

logger = logging.getLogger(__name__)

DEFAULT_MAX_SEQ_LENGTH = 1024


@dataclass
class LoadedGenerator:
    """A model ready to generate, with the tokenisation it was trained with."""

    model: Any
    tokenizer: Any
    policy: TokenPolicy
    max_seq_length: int
    data_dir: Path | None
    stop_ids: tuple[int, ...] = ()


def load_for_generation(run_dir_or_model: Path | str) -> LoadedGenerator:
    """Load a ``gloss-train fit`` run (base + best adapter, merged) or a plain HF/.gguf model.

    Raises:
        InputError: If the run's manifest or adapter is missing or the model cannot be loaded.
    """
    import torch

    from gloss.export.merge import load_causal_lm, load_tokenizer

    source = Path(run_dir_or_model)
    dtype = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    manifest_path = source / MANIFEST_NAME
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("stage") != "train":
            raise InputError(
                f"{manifest_path}: stage {manifest.get('stage')!r}; pass a `gloss-train fit` run folder"
            )
        config, adapter_dir = manifest["config"], source / "adapter"
        if not (adapter_dir / "adapter_config.json").is_file():
            raise InputError(f"{adapter_dir}: no adapter_config.json; the run did not finish")
        peft = require("peft", "train")
        model, _ = load_causal_lm(config["base_model"], dtype)
        model = peft.PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
        tokenizer = load_tokenizer(adapter_dir)
        policy = TokenPolicy(**manifest["tokenizer"])
        max_len, data_dir = int(config["max_seq_length"]), Path(config["data_dir"])
        loaded = LoadedGenerator(model, tokenizer, policy, max_len, data_dir)
    else:
        model, tokenizer = load_causal_lm(str(run_dir_or_model), dtype)
        loaded = LoadedGenerator(model, tokenizer, token_policy(tokenizer), DEFAULT_MAX_SEQ_LENGTH, None)
    loaded.model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    loaded.stop_ids = tuple(sorted({loaded.policy.eos_token_id, *newline_token_ids(loaded.tokenizer)}))
    return loaded


def newline_token_ids(tokenizer: Any) -> list[int]:
    """Ids of every token whose text contains a newline: generation stops on them as on EOS."""
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return [i for i, text in enumerate(texts) if "\n" in text]


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[Any, Any]:
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    return ids, mask


def beam_queries(
    loaded: LoadedGenerator, histories: list[list[str]], num_beams: int = 5, max_new_tokens: int = 50
) -> list[list[str]]:
    """``num_beams`` queries (``Title: ...``, best first) for each history of titles, in one generate call.

    Histories are cut from the oldest item so that prompt + ``max_new_tokens`` fit the run's max_seq_length.
    """
    import torch

    tok, policy = loaded.tokenizer, loaded.policy
    budget = loaded.max_seq_length - max_new_tokens
    prompts = []
    for history in histories:
        fitted = fit_history(history, lambda text: len(policy.encode_prompt(tok, text)), budget)
        prompts.append(policy.encode_prompt(tok, build_prompt(fitted)))
    ids, mask = _left_pad(prompts, policy.pad_token_id)
    device = next(loaded.model.parameters()).device
    with torch.inference_mode():
        out = loaded.model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), num_beams=num_beams,
            num_return_sequences=num_beams, max_new_tokens=max_new_tokens, do_sample=False,
            eos_token_id=list(loaded.stop_ids or (policy.eos_token_id,)), pad_token_id=policy.pad_token_id,
        )
    texts = tok.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
    queries = [render_item(parse_generated(text)) for text in texts]
    return [queries[i * num_beams:(i + 1) * num_beams] for i in range(len(histories))]


def generate_queries(
    run_dir_or_model: Path | str,
    data_dir: Path | None,
    split: Split,
    out_path: Path,
    num_beams: int = 5,
    max_new_tokens: int = 50,
    batch_size: int = 8,
    max_users: int | None = None,
    show_progress: bool | None = None,
) -> Path:
    """Generate each user's queries with transformers beam search and write a queries file.

    Rows: ``{user, history: [asin], target: asin, queries: ["Title: ...", ...]}`` (``num_beams`` queries,
    best beam first), the format ``gloss-edge eval --queries`` reads.

    Args:
        run_dir_or_model: A ``gloss-train fit`` run folder, or a HF folder / ``.gguf`` of a (merged) model.
        data_dir: Prepared data; None = the run's ``data_dir``.
        split: Which split's users (validation or test for scoring).
        out_path: Output JSONL(.gz), written atomically.
        num_beams: Beams and returned sequences per user.
        max_new_tokens: Token cap per query (generation also stops at EOS or a newline).
        batch_size: Users per ``generate`` call (left-padded).
        max_users: Only the first N users of the split.
        show_progress: Progress bar; None follows the log level.

    Returns:
        ``out_path``.

    Raises:
        InputError: For a bad run folder, model or data folder.
    """
    from gloss.train.loop import load_split_titles

    if num_beams < 1 or max_new_tokens < 1 or batch_size < 1:
        raise InputError("--num-beams, --max-new-tokens and --batch-size must be >= 1")
    loaded = load_for_generation(run_dir_or_model)
    data_dir = Path(data_dir) if data_dir is not None else loaded.data_dir
    if data_dir is None:
        raise InputError(f"{run_dir_or_model} is not a gloss-train run: pass --data-dir")
    rows = load_split_titles(data_dir, Split(split), max_users)
    show = progress_enabled(show_progress, logger)

    def produce() -> Iterator[dict[str, Any]]:
        for start in tqdm(range(0, len(rows), batch_size), disable=not show, desc="generate", unit="batch"):
            batch = rows[start:start + batch_size]
            queries = beam_queries(loaded, [h for _, h, _ in batch], num_beams, max_new_tokens)
            for (row, _, _), qs in zip(batch, queries, strict=True):
                yield {"user": row["user"], "history": row["history"], "target": row["target"], "queries": qs}

    count = write_jsonl_atomic(Path(out_path), produce())
    logger.info("wrote %d users' queries to %s", count, out_path)
    return Path(out_path)

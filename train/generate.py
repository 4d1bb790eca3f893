"""Beam-search queries of a trained run (transformers), in the queries-file format `gloss-edge eval` reads."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from gloss.edge.errors import InputError, require
from gloss.edge.files import write_jsonl_atomic
from gloss.edge.logs import progress_enabled
from gloss.edge.prompt import build_prompt, fit_history, parse_generated, render_item
from gloss.edge.splits import Split
from gloss.train.data import MANIFEST_NAME
from gloss.train.model import TokenPolicy, token_policy

if TYPE_CHECKING:
    from gloss.edge.trie import TokenTrie

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

    from gloss.export.hf_models import load_causal_lm, load_tokenizer

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


def prefix_allowed_tokens(trie: TokenTrie, prompt_width: int, fallback: int) -> Callable[[int, Any], list[int]]:
    """transformers' ``prefix_allowed_tokens_fn`` for catalogue-constrained beams.

    Args:
        trie: The catalogue trie, tokenised with the generating model's tokenizer.
        prompt_width: Columns of the (left-padded) prompt batch; later tokens are the generated ones.
        fallback: Returned for a beam that already left the trie (a finished or -inf beam that transformers
            keeps running): transformers refuses an empty list, and any token keeps such a beam dead.
    """

    def allowed(batch_id: int, sent: Any) -> list[int]:
        tokens = trie.allowed_tokens(sent[prompt_width:].tolist())
        return tokens.tolist() if tokens.size else [fallback]

    return allowed


def load_trie(loaded: LoadedGenerator, data_dir: Path, trie_path: Path | None = None) -> TokenTrie:
    """The catalogue trie for constrained beams: built from ``data_dir``'s catalogue with the model's tokenizer,
    or loaded from ``trie_path`` (e.g. a bundle's ``generator/trie.bin``) and checked against both.

    Raises:
        InputError: If the saved trie was built for another catalogue or tokenizer, ends titles with a token
            generation does not stop on, or a title tokenises to nothing.
    """
    from gloss.edge.catalog import load_catalog
    from gloss.edge.trie import TokenTrie, catalog_fingerprint
    from gloss.export.trie import build_trie_hf, hf_vocab_fingerprint

    catalog = load_catalog(Path(data_dir) / "items.jsonl.gz")
    if trie_path is None:
        trie = build_trie_hf(catalog.titles, loaded.tokenizer, loaded.policy.eos_token_id)
    else:
        trie = TokenTrie.load(trie_path, catalog_fingerprint(catalog.titles), hf_vocab_fingerprint(loaded.tokenizer))
    stops = set(loaded.stop_ids or (loaded.policy.eos_token_id,))
    if not set(trie.meta.end_token_ids) <= stops:
        raise InputError(f"{trie_path}: the trie ends titles with {list(trie.meta.end_token_ids)}, which the "
                         f"model does not stop on ({sorted(stops)[:5]}...); build it from this model's catalogue")
    logger.info("constrained beams: trie of %d items, %d nodes", trie.meta.num_items, trie.num_nodes)
    return trie


def catalog_length_cap(loaded: LoadedGenerator, titles: Iterable[str]) -> int:
    """The edge's length cap with the HF tokenizer: longest rendered title + stop token + margin."""
    from gloss.edge.generation.generate import TITLE_MARGIN_TOKENS

    tok = loaded.tokenizer
    longest = max((len(tok(render_item(t), add_special_tokens=False).input_ids) for t in titles), default=0)
    return longest + 1 + TITLE_MARGIN_TOKENS


def beam_queries(
    loaded: LoadedGenerator, histories: list[list[str]], num_beams: int = 5, max_new_tokens: int = 50,
    trie: TokenTrie | None = None, early_stopping: bool = True, length_cap: int | None = None,
) -> list[list[str]]:
    """``num_beams`` queries (``Title: ...``, best first) for each history of titles, in one generate call.

    Histories are cut from the oldest item so that prompt + ``max_new_tokens`` fit the run's max_seq_length.
    With a ``trie`` every beam is a catalogue title (transformers' ``prefix_allowed_tokens_fn``) and
    ``max_new_tokens`` is the trie's longest title, as on the edge. ``early_stopping`` and ``length_cap``
    (e.g. :func:`catalog_length_cap`; the prompt budget keeps using ``max_new_tokens``) follow the edge's
    stopping rule (``GenerationConfig.early_stopping``, ``LlamaCppGenerator.cap_new_tokens``).
    """
    import torch

    tok, policy = loaded.tokenizer, loaded.policy
    if trie is not None:
        max_new_tokens = trie.meta.max_length
    budget = loaded.max_seq_length - max_new_tokens
    prompts = []
    for history in histories:
        fitted = fit_history(history, lambda text: len(policy.encode_prompt(tok, text)), budget)
        prompts.append(policy.encode_prompt(tok, build_prompt(fitted)))
    ids, mask = _left_pad(prompts, policy.pad_token_id)
    device = next(loaded.model.parameters()).device
    search_tokens = max_new_tokens if length_cap is None else min(max_new_tokens, length_cap)
    constraint = {} if trie is None else {
        "prefix_allowed_tokens_fn": prefix_allowed_tokens(trie, ids.shape[1], policy.eos_token_id),
        # transformers counts its placeholder hypotheses as finished: early stopping would end the search
        # before the real titles are found (see is_placeholder).
        "early_stopping": False, "output_scores": True, "return_dict_in_generate": True,
    }
    with torch.inference_mode():
        out = loaded.model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), num_beams=num_beams,
            num_return_sequences=num_beams, max_new_tokens=search_tokens, do_sample=False,
            eos_token_id=list(loaded.stop_ids or (policy.eos_token_id,)), pad_token_id=policy.pad_token_id,
            **{"early_stopping": early_stopping, **constraint},
        )
    sequences = out if trie is None else out.sequences
    texts = tok.batch_decode(sequences[:, ids.shape[1]:], skip_special_tokens=True)
    queries = [render_item(parse_generated(text)) for text in texts]
    scores = [0.0] * len(queries) if trie is None else out.sequences_scores.tolist()
    pairs = list(zip(queries, scores, strict=True))
    users = [pairs[i * num_beams:(i + 1) * num_beams] for i in range(len(histories))]
    return [[query for query, score in user if not is_placeholder(score)] for user in users]


PLACEHOLDER_SCORE = -1e8


def is_placeholder(score: float) -> bool:
    """True for a hypothesis transformers made from a dead beam, not a real title.

    transformers' beam search keeps a beam that already ended, and the first step's copies of the prompt,
    as running beams scored with a -1e9 penalty instead of dropping them. When a constraint leaves fewer live
    candidates than beams, those beams follow the trie and finish as titles scored about -1e9 / length, to
    fill the ``num_beams`` slots. A real hypothesis is an average log-probability, far above -1e8.
    """
    return score <= PLACEHOLDER_SCORE


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
    constrained: bool = False,
    trie_path: Path | None = None,
    early_stopping: bool = True,
    cap_to_catalog: bool = True,
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
        constrained: Catalogue-constrained beams: every query is a catalogue title of ``data_dir``.
        trie_path: A saved trie to constrain with (implies ``constrained``); default: built from the
            catalogue with the model's tokenizer.
        early_stopping: Stop a user's search at ``num_beams`` finished titles (the edge's default rule).
        cap_to_catalog: Stop searches at the catalogue's longest title (:func:`catalog_length_cap`), as the
            edge does.

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
    trie = load_trie(loaded, data_dir, trie_path) if constrained or trie_path is not None else None
    show = progress_enabled(show_progress, logger)
    length_cap = None
    if cap_to_catalog and trie is None:
        from gloss.edge.catalog import load_catalog

        length_cap = catalog_length_cap(loaded, load_catalog(data_dir / "items.jsonl.gz").titles)

    def produce() -> Iterator[dict[str, Any]]:
        for start in tqdm(range(0, len(rows), batch_size), disable=not show, desc="generate", unit="batch"):
            batch = rows[start:start + batch_size]
            queries = beam_queries(loaded, [h for _, h, _ in batch], num_beams, max_new_tokens, trie,
                                   early_stopping, length_cap)
            for (row, _, _), qs in zip(batch, queries, strict=True):
                yield {"user": row["user"], "history": row["history"], "target": row["target"], "queries": qs}

    count = write_jsonl_atomic(Path(out_path), produce())
    logger.info("wrote %d users' queries to %s", count, out_path)
    return Path(out_path)

"""Offline evaluation: queries (from a file, the last item, or a generator) -> ranking -> metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from gloss.edge.catalog import Catalog
from gloss.edge.embed import Embedder
from gloss.edge.errors import InputError
from gloss.edge.files import read_jsonl, sha256_file, write_jsonl_atomic
from gloss.edge.generation.generate import QueryGenerator
from gloss.edge.logs import progress_enabled
from gloss.edge.metrics import POWER_MIN_DEFAULT, rank_of, summarize
from gloss.edge.prompt import render_item
from gloss.edge.recommend import (
    RetrievalConfig,
    SearchIndex,
    beam_positions,
    embed_queries,
    item_texts,
    query_text,
    rank_items,
    search_depth,
)
from gloss.edge.splits import DEFAULT_SEED, Example, Split, load_sequences, make_examples, validation_users

if TYPE_CHECKING:
    from gloss.edge.bundle import Bundle
    from gloss.edge.fusion import FusionRanker, QuerySignals

logger = logging.getLogger(__name__)

CHUNK_USERS = 1024
GENERATE_CHUNK_USERS = 64  # users handed to generate_batch at once (it keeps EVAL_BATCH_USERS in flight)
EVAL_BATCH_USERS = 4  # users whose beams share a llama_decode in `eval --source bundle`


@dataclass(frozen=True)
class EvalCase:
    """One user: history and target as catalogue ids, and the query texts to search with."""

    user: str
    history: tuple[str, ...]
    target: str
    queries: tuple[str, ...]
    scores: tuple[float, ...] | None = None  # beam scores, when the source knows them
    positions: tuple[int, ...] | None = None  # constrained beams' catalogue positions (-1: free beam)

    def to_row(self) -> dict[str, Any]:
        """The queries-file row of this case (``--save-queries`` writes it, ``--queries`` reads it)."""
        row: dict[str, Any] = {"user": self.user, "history": list(self.history), "target": self.target,
                               "queries": list(self.queries)}
        if self.scores is not None:
            row["scores"] = list(self.scores)
        if self.positions is not None:
            row["positions"] = list(self.positions)
        return row


@dataclass
class EvalReport:
    """Metrics overall and per segment, with what produced them."""

    metrics: dict[str, dict[str, float]]
    config: dict[str, Any]
    seconds: float
    source: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def check_example(user: str, history: Sequence[str], target: str, catalog: Catalog) -> None:
    """Raise InputError if the history is empty or an id is not in the catalogue."""
    if not history:
        raise InputError(f"user {user}: empty history")
    for asin in (*history, target):
        if asin not in catalog:
            raise InputError(f"user {user}: unknown item {asin!r}: not in the catalogue")


def _optional_list(path: Path, number: int, row: dict[str, Any], name: str, kind: type, size: int) -> tuple | None:
    values = row.get(name)
    if values is None:
        return None
    if not isinstance(values, list) or len(values) != size or not all(isinstance(v, (kind, int)) for v in values):
        raise InputError(f"{path}: row {number}: {name!r} must be a list of {size} numbers, one per query")
    return tuple(kind(v) for v in values)


def cases_from_queries_file(path: Path, catalog: Catalog) -> list[EvalCase]:
    """Read a queries file: rows ``{user, history: [asin], target: asin, queries: [title, ...]}``.

    Optional per-query lists: ``scores`` (beam scores) and ``positions`` (constrained beams' catalogue
    positions, -1 for a free beam), as ``--save-queries`` writes them.

    Raises:
        InputError: On a malformed row, an unknown item or an empty history.
    """
    cases = []
    for number, row in enumerate(read_jsonl(path), start=1):
        try:
            user, history, target, queries = row["user"], row["history"], row["target"], row["queries"]
        except KeyError as exc:
            raise InputError(f"{path}: row {number} lacks field {exc.args[0]!r}") from None
        if not isinstance(queries, list) or not queries or not all(isinstance(q, str) for q in queries):
            raise InputError(f"{path}: row {number}: 'queries' must be a non-empty list of titles")
        check_example(user, history, target, catalog)
        scores = _optional_list(path, number, row, "scores", float, len(queries))
        positions = _optional_list(path, number, row, "positions", int, len(queries))
        if positions is not None and any(not -1 <= p < len(catalog) for p in positions):
            raise InputError(f"{path}: row {number}: a position is outside the catalogue (0..{len(catalog) - 1})")
        cases.append(EvalCase(user, tuple(history), target, tuple(query_text(q) for q in queries), scores, positions))
    if not cases:
        raise InputError(f"{path}: no rows")
    return cases


def cases_last_item(examples: Iterable[Example], catalog: Catalog, with_query: bool = True) -> list[EvalCase]:
    """The zero-training baseline: the last history item's own text is the only query.

    ``with_query=False`` gives history-only cases (the fusion re-ranker scores recent items itself).
    """
    cases = []
    for ex in examples:
        check_example(ex.user, ex.history, ex.target, catalog)
        query = (render_item(catalog.title(ex.history[-1])),) if with_query else ()
        cases.append(EvalCase(ex.user, ex.history, ex.target, query))
    return cases


def cases_from_generator(
    examples: Sequence[Example], catalog: Catalog, generator: QueryGenerator, show_progress: bool | None = None
) -> Iterator[EvalCase]:
    """Generate each user's queries with a generator (e.g. the bundle's LLM), lazily.

    A generator with ``generate_batch`` (the llama.cpp one) gets ``GENERATE_CHUNK_USERS`` users per call, so
    several users' beams share each ``llama_decode``.
    """
    batched = getattr(generator, "generate_batch", None)
    size = GENERATE_CHUNK_USERS if batched is not None else 1
    bar = tqdm(total=len(examples), desc="generate", unit="user", disable=not progress_enabled(show_progress, logger))
    for start in range(0, len(examples), size):
        chunk = examples[start : start + size]
        for ex in chunk:
            check_example(ex.user, ex.history, ex.target, catalog)
        histories = [catalog.titles_of(ex.history) for ex in chunk]
        outputs = batched(histories) if batched is not None else [generator.generate(h) for h in histories]
        bar.update(len(chunk))
        for ex, generated in zip(chunk, outputs, strict=True):
            positions = beam_positions(generated)
            yield EvalCase(ex.user, ex.history, ex.target, tuple(query_text(g.title) for g in generated),
                           tuple(g.score for g in generated), None if positions is None else tuple(positions.tolist()))
    bar.close()


def _chunks(cases: Iterable[EvalCase], size: int) -> Iterator[list[EvalCase]]:
    chunk: list[EvalCase] = []
    for case in cases:
        chunk.append(case)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def rank_cases(
    cases: Iterable[EvalCase],
    catalog: Catalog,
    embedder: Embedder,
    index: SearchIndex,
    config: RetrievalConfig,
    show_progress: bool | None = None,
    fusion: FusionRanker | None = None,
) -> Iterator[tuple[EvalCase, list[int]]]:
    """Yield each case with its ranked catalogue positions; queries are embedded and searched in chunks.

    With ``fusion`` the fusion re-ranker orders the items (cases without queries rank on history alone);
    otherwise the paper's rule (:func:`gloss.edge.recommend.rank_items`) does.
    """
    show = progress_enabled(show_progress, logger)
    bar = tqdm(desc="rank", unit="user", disable=not show)
    known = item_texts(catalog)
    for chunk in _chunks(cases, CHUNK_USERS):
        texts = sorted({q for case in chunk for q in case.queries})
        row_of = {text: i for i, text in enumerate(texts)}
        vectors = embed_queries(texts, embedder, index, known) if texts else None
        histories = [[catalog.position(a) for a in case.history] for case in chunk]
        if fusion is not None:
            queries = [signals_of(case, vectors, row_of) for case in chunk]
            for case, ranked in zip(chunk, fusion.rank_batch(histories, queries, k=config.k), strict=True):
                yield case, [item.position for item in ranked]
        else:
            depth = min(len(index), search_depth(config, max(len(set(h)) for h in histories)))
            positions, sims = index.search(vectors, depth)
            for case, seen in zip(chunk, histories, strict=True):
                rows = [row_of[q] for q in case.queries]
                yield case, [item.position for item in rank_items(positions[rows], sims[rows], seen, config)]
        bar.update(len(chunk))
    bar.close()


def evaluate(
    cases: Iterable[EvalCase],
    catalog: Catalog,
    embedder: Embedder,
    index: SearchIndex,
    config: RetrievalConfig,
    source: str,
    power_min: int = POWER_MIN_DEFAULT,
    details_path: Path | None = None,
    show_progress: bool | None = None,
    fusion: FusionRanker | None = None,
    queries_path: Path | None = None,
) -> EvalReport:
    """Score cases with Recall@k, NDCG@k, MRR overall and per user segment.

    Args:
        cases: Users with their queries.
        catalog: Catalogue the index was built from.
        embedder: Embeds query texts.
        index: Catalogue index.
        config: Retrieval rule.
        source: Name of the query source, kept in the report.
        power_min: Users with more interactions than this are "power" users.
        details_path: If set, write one JSONL row per user (ranked ids, rank of the target).
        show_progress: Progress bar; None follows the log level.
        fusion: Rank with this fusion re-ranker instead of the paper's rule.
        queries_path: If set, write each user's queries as a queries file (``--queries`` reads it back),
            e.g. to keep what the bundle's LLM generated.

    Returns:
        The report; segments count interactions as ``len(history) + 1``.
    """
    start = time.perf_counter()
    ranks: list[int | None] = []
    lengths: list[int] = []
    details: list[dict[str, Any]] = []
    kept: list[dict[str, Any]] = []
    for case, ranked in rank_cases(cases, catalog, embedder, index, config, show_progress, fusion):
        ids = [catalog.asins[p] for p in ranked]
        rank = rank_of(ids, case.target)
        ranks.append(rank)
        lengths.append(len(case.history) + 1)
        if details_path is not None:
            details.append({"user": case.user, "target": case.target, "rank": rank, "ranked": ids})
        if queries_path is not None:
            kept.append(case.to_row())
    if not ranks:
        raise InputError("no users to evaluate")
    seconds = time.perf_counter() - start
    if details_path is not None:
        write_jsonl_atomic(details_path, details)
    if queries_path is not None:
        write_jsonl_atomic(queries_path, kept)
    metrics = summarize(ranks, lengths, power_min=power_min)
    logger.info("evaluated %d users in %.1f s", len(ranks), seconds)
    return EvalReport(metrics, {**rule_in_effect(config, fusion), "power_min": power_min}, seconds, source)


def rule_in_effect(config: RetrievalConfig, fusion: FusionRanker | None) -> dict[str, Any]:
    """The ranking rule a report states: the paper preset's settings, or fusion's (its own seen rule)."""
    if fusion is None:
        return {**asdict(config), "rule": "paper"}
    return {"k": config.k, "rule": "fusion", "exclude_seen": fusion.config.exclude_seen,
            "fusion": fusion.config.to_dict()}


def signals_of(case: EvalCase, vectors: Any, row_of: dict[str, int]) -> QuerySignals | None:
    """Fusion signals of one case: its query vectors, beam scores and constrained positions."""
    from gloss.edge.fusion import QuerySignals

    if not case.queries:
        return None
    scores = None if case.scores is None else np.asarray(case.scores)
    positions = None if case.positions is None else np.asarray(case.positions, dtype=np.int64)
    return QuerySignals(vectors[[row_of[q] for q in case.queries]], scores, positions)


def format_report(report: EvalReport) -> str:
    """A readable table: one row per segment, one column per metric."""
    rows = report.metrics
    columns = [c for c in rows["all"] if c != "users"]
    header = f"{'segment':<9}{'users':>8}" + "".join(f"{c:>11}" for c in columns)
    config = report.config
    lines = [f"source: {report.source}   rule: {config.get('rule')}   exclude_seen: {config.get('exclude_seen')}"
             + (f"   ties: {config['ties']}" if "ties" in config else ""), f"settings: {config}",
             "metrics: Recall@k, NDCG@k; MRR = mean of 1/rank of the target within the top 10 (0 if absent)",
             header]
    for name in ("all", "cold", "regular", "power"):
        values = rows[name]
        lines.append(f"{name:<9}{int(values['users']):>8}" + "".join(f"{values[c]:>11.4f}" for c in columns))
    lines.append(f"time: {report.seconds:.1f} s")
    return "\n".join(lines)


def load_cases(
    bundle: Bundle,
    source: str,
    queries_path: Path | None,
    sequences_path: Path | None,
    split: Split,
    max_users: int | None = None,
    seed: int = DEFAULT_SEED,
    fusion: bool = False,
    constrained: bool = False,
) -> Iterable[EvalCase]:
    """Cases for ``gloss-edge eval``: from a queries file, the last item, or the bundle's generator.

    The generator writes free beams (the paper's rule) unless ``constrained`` asks for catalogue titles only.

    With ``fusion`` the last-item source gives history-only cases, and the bundle's co-purchase statistics
    must leave out the held-out items of ``split`` (their ``holdout``), so no target leaks into the ranking.

    Raises:
        InputError: If the source's input is not given, the bundle has no generator for ``bundle``, or
            its co-purchase statistics saw the split's targets.
    """
    if fusion:
        check_fusion_holdout(bundle, split, sequences_path)
    if source == "queries":
        if queries_path is None:
            raise InputError("--source queries needs --queries FILE")
        return cases_from_queries_file(queries_path, bundle.catalog)[:max_users]
    if sequences_path is None:
        raise InputError(f"--source {source} needs --sequences FILE (user, items) and --split")
    sequences = load_sequences(sequences_path)
    held_out = validation_users([s.user for s in sequences], seed=seed) if split is not Split.test else frozenset()
    examples = list(make_examples(sequences, split, held_out))[:max_users]
    if source == "last-item":
        return cases_last_item(examples, bundle.catalog, with_query=not fusion)
    if source == "bundle":
        if bundle.paths.generator is None:
            raise InputError(f"{bundle.dir}: bundle has no generator; add one with gloss-export bundle --gguf")
        from gloss.edge.generation.generate import LlamaCppGenerator, batched_config

        trie = bundle.open_trie() if constrained else None
        config = batched_config(EVAL_BATCH_USERS)
        generator = LlamaCppGenerator.load(bundle.paths.generator, config, constraint=trie)
        if trie is None:
            generator.cap_new_tokens(bundle.catalog.titles)
        return cases_from_generator(examples, bundle.catalog, generator)
    raise InputError(f"unknown --source {source!r}: expected queries, last-item or bundle")


HOLDOUT_NEEDED = {Split.test: 1, Split.validation: 2}


def check_fusion_holdout(bundle: Bundle, split: Split, sequences_path: Path | None = None) -> None:
    """Raise InputError unless the bundle's co-purchase statistics leave out ``split``'s targets.

    The statistics must have been built with a large enough ``holdout`` and, when ``sequences_path`` is
    given, from that very file (its SHA-256 is recorded at build time): a holdout of another file's
    sequences says nothing about these users' targets.
    """
    meta = bundle.fusion_meta
    if meta is None:
        raise InputError(f"{bundle.dir}: bundle has no co-purchase statistics; add them with gloss-export fusion")
    needed = HOLDOUT_NEEDED.get(split, 0)
    if int(meta.get("holdout", 0)) < needed:
        raise InputError(
            f"{bundle.dir}: co-purchase statistics were built with --holdout {meta.get('holdout', 0)}, so they "
            f"include the {split.value} targets; rebuild with gloss-export fusion --holdout {needed} to evaluate"
        )
    recorded = meta.get("sequences_sha256")
    if sequences_path is None or recorded is None:
        logger.warning("co-purchase statistics from %s: %s", meta.get("sequences", "unknown sequences"),
                       "no sequences file given to compare" if recorded else "no SHA-256 recorded (older bundle)")
        return
    actual = sha256_file(Path(sequences_path))
    if actual != recorded:
        raise InputError(
            f"{sequences_path}: SHA-256 {actual[:12]}... differs from the file the co-purchase statistics were "
            f"built from ({meta.get('sequences')}, {recorded[:12]}...); evaluate with that file or rebuild with "
            f"gloss-export fusion --sequences {sequences_path} --holdout {needed}"
        )

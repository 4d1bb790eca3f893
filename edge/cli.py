"""`gloss-edge`: recommend, evaluate and serve from a bundle on a CPU (no torch)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from gloss.edge.cli_errors import OneLineErrors
from gloss.edge.errors import InputError, user_errors
from gloss.edge.files import STDIN, make_parent_dir, read_text, write_json_atomic
from gloss.edge.logs import setup_logging
from gloss.edge.metrics import POWER_MIN, POWER_MIN_DEFAULT
from gloss.edge.recommend import RetrievalConfig
from gloss.edge.report.runs import REPORT_K, prepare_report
from gloss.edge.server.app import ServeConfig
from gloss.edge.splits import DEFAULT_SEED, Split

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__, cls=OneLineErrors)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    """GLoSS on the edge: bundle in, recommendations out."""
    setup_logging(verbose)


# --- commands (one per section; keep each a thin shell over a library function) ---

# --- eval ---


class Ties(str, Enum):
    """How the paper rule orders near-equal similarities."""

    raw = "raw"
    beam_order = "beam-order"


class Source(str, Enum):
    """Where the queries come from."""

    queries = "queries"
    last_item = "last-item"
    bundle = "bundle"


# Shared by eval, recommend and serve.
ExactOption = Annotated[bool, typer.Option("--exact", help="Search every item even where the bundle's index has an "
                                           "HNSW graph (catalogues from 50k items; approximate, Recall@10 >= 0.99 "
                                           "against exact).")]


@app.command("eval")
def eval_command(
    bundle_dir: Annotated[Path, typer.Argument(help="Output of `gloss-export bundle`.")],
    source: Annotated[Source, typer.Option(help="queries: a queries file; last-item: the zero-training "
                                           "baseline; bundle: the bundle's own LLM.")] = Source.queries,
    queries_path: Annotated[Path | None, typer.Option("--queries", help="Queries file (JSONL[.gz]: user, "
                                                      "history, target, queries).")] = None,
    sequences_path: Annotated[Path | None, typer.Option("--sequences", help="User sequences (JSONL[.gz]: "
                                                        "user, items) for last-item/bundle.")] = None,
    split: Annotated[Split, typer.Option(help="Split of --sequences to score.")] = Split.test,
    exclude_seen: Annotated[bool | None, typer.Option("--exclude-seen/--include-seen", help="Drop items already "
                                                      "in the history, or keep them (default: the rule's own: "
                                                      "the paper keeps them, fusion follows the bundle's "
                                                      "config).")] = None,
    ties: Annotated[Ties, typer.Option(help="Paper rule: raw = rank by raw float similarity (the paper's code); "
                                       "beam-order = similarities within 1e-5 tie, kept in beam order.")] = Ties.raw,
    per_query: Annotated[int | None, typer.Option(min=1, help="Neighbours per query (default: 1 per "
                                                  "generated title, 10 for last-item).")] = None,
    power_min: Annotated[int | None, typer.Option(help="Power users have more interactions than this "
                                                  "(default: 14 for beauty, else 13).")] = None,
    fusion: Annotated[bool, typer.Option("--fusion", help="Rank with the bundle's fusion re-ranker (co-purchase "
                                         "+ history text + LLM beams) instead of the paper's rule (the "
                                         "default preset: raw similarity, seen items kept).")] = False,
    constrained: Annotated[bool, typer.Option("--constrained/--free", help="--source bundle: beams constrained "
                                              "to catalogue titles, or free beams (the paper's).")] = False,
    max_users: Annotated[int | None, typer.Option(min=1, help="Score only the first N users.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the validation-user sample.")] = DEFAULT_SEED,
    out_path: Annotated[Path | None, typer.Option("--out", help="Also write the JSON report here.")] = None,
    details_path: Annotated[Path | None, typer.Option("--details", help="Per-user ranks (JSONL).")] = None,
    save_queries: Annotated[Path | None, typer.Option("--save-queries", help="Write each user's queries as a "
                                                      "queries file (e.g. what the bundle's LLM wrote).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")] = False,
    report_path: Annotated[Path | None, typer.Option("--report", help="Also write a self-contained HTML report "
                                                     "(plots; needs gloss[plot]). Ranks 50 items per user, and the "
                                                     "JSON (--out, --json) then carries each user's rank.")] = None,
    compare_path: Annotated[Path | None, typer.Option("--compare", help="With --report: an earlier run's --out "
                                                      "JSON (written with --report) to show side by side, paired "
                                                      "by user, with bootstrap 95% intervals.")] = None,
    exact: ExactOption = False,
) -> None:
    """Score a query source on a bundle: Recall@5/10, NDCG@5/10, MRR, per user segment."""
    import functools
    import sys

    from gloss.edge.bundle import load_bundle
    from gloss.edge.evaluate import evaluate, format_report, load_cases

    with user_errors():
        for path in (out_path, details_path, save_queries, report_path):
            if path is not None:
                make_parent_dir(path)  # a path that cannot be written fails now, not after the evaluation
        other = prepare_report(report_path, compare_path)
        bundle = load_bundle(bundle_dir)
        cases = load_cases(bundle, source.value, queries_path, sequences_path, split, max_users, seed, fusion,
                           constrained=constrained)
        index = bundle.open_index(exact=exact or None)
        config = RetrievalConfig(
            k=10 if report_path is None else REPORT_K, per_query=per_query or (10 if source is Source.last_item else 1),
            exclude_seen=bool(exclude_seen), ties=ties.value,
        )
        ranker = bundle.open_fusion(index) if fusion else None
        if ranker is not None and exclude_seen is not None:
            ranker = ranker.with_config(exclude_seen=exclude_seen)
        power = power_min if power_min is not None else POWER_MIN.get(bundle.name, POWER_MIN_DEFAULT)
        score = functools.partial(evaluate, catalog=bundle.catalog, embedder=bundle.open_embedder(), index=index,
                                  config=config, source=source.value, power_min=power, queries_path=save_queries,
                                  fusion=ranker)
        if report_path is None:
            report = score(cases, details_path=details_path)
        else:
            from gloss.edge.report.runs import evaluate_with_ranks

            report = evaluate_with_ranks(lambda c, d: score(c, details_path=d), cases, details_path)
        if out_path is not None:
            write_json_atomic(out_path, report.to_dict())
        if report_path is not None:
            from gloss.edge.report.html import write_eval_report

            write_eval_report(report_path, report.to_dict(), other, title=str(bundle_dir),
                              command=" ".join(["gloss-edge", *sys.argv[1:]]))
    typer.echo(json.dumps(report.to_dict(), indent=2) if as_json else format_report(report))


# --- recommend ---

# Options that recommend and serve share.
LlmOption = Annotated[bool | None, typer.Option("--llm/--no-llm", help="Run the bundle's LLM (default: yes, "
                                                "unless fusion ranks and its weights give the LLM no say).")]
FusionOption = Annotated[bool | None, typer.Option("--fusion/--no-fusion", help="Fusion re-ranking (default: on "
                                                   "when the bundle has co-purchase statistics).")]
ConstrainedOption = Annotated[bool, typer.Option("--constrained/--free", help="LLM beams constrained to "
                                                 "catalogue titles (the bundle's trie), or free beams.")]


def read_history(path: Path | None, items: list[str] | None) -> list[str]:
    """History items from ``--item`` options or a file ('-' = stdin): a JSON list, or one item per line.

    Raises:
        InputError: If both or neither are given, or the file is unreadable, not UTF-8, or JSON other than a
            list of strings.
    """
    if items and path is not None:
        raise InputError("give the history either as --item ITEM (repeatable) or as --history FILE, not both")
    if items:
        return list(items)
    if path is None:
        raise InputError("no history: pass --history FILE ('-' for stdin) or --item ITEM (repeatable)")
    name = "<stdin>" if str(path) == STDIN else str(path)
    return parse_history(read_text(path, what="history file"), name)


HISTORY_FORMAT = 'a JSON list of item ids or titles (["B000...", "B001..."]) or one item per line'


def parse_history(text: str, name: str) -> list[str]:
    """Items of a history file's text: a JSON list of strings, or one item per line.

    Raises:
        InputError: If the text is JSON but not a list of strings (e.g. an object), naming the file.
    """
    stripped = text.strip()
    if stripped.startswith("{") and _is_json_objects(stripped):
        raise InputError(f"{name}: holds a JSON object; expected {HISTORY_FORMAT}")
    if stripped.startswith("["):
        try:
            values = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise InputError(f"{name}: starts with '[' but is not a JSON list ({exc.msg}); expected "
                             f"{HISTORY_FORMAT}") from None
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise InputError(f"{name}: the JSON list must hold item ids or titles (strings)")
        return [v for v in values if v.strip()]
    return [line.strip() for line in text.splitlines() if line.strip()]


def _is_json_objects(text: str) -> bool:
    """True if the text is one JSON object or JSON Lines of objects (not a title that starts with '{')."""
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        pass
    try:
        return all(isinstance(json.loads(line), dict) for line in text.splitlines() if line.strip())
    except json.JSONDecodeError:
        return False


@app.command()
def recommend(
    bundle_dir: Annotated[Path, typer.Argument(help="Output of `gloss-export bundle`.")],
    history_path: Annotated[Path | None, typer.Option("--history", "-H", help="History file, oldest first: "
                                                      "a JSON list or one ASIN/title per line; '-' = stdin; "
                                                      "not with --item.")] = None,
    items: Annotated[list[str] | None, typer.Option("--item", "-i", help="A history item (ASIN or title), "
                                                    "oldest first; repeatable; not with --history.")] = None,
    k: Annotated[int, typer.Option("--k", "-k", min=1, max=1000, help="Number of items to return.")] = 10,
    include_seen: Annotated[bool, typer.Option("--include-seen/--exclude-seen", help="Keep items already in the "
                                               "history (default: removed).")] = False,
    last_item: Annotated[bool, typer.Option("--last-item", help="Skip the LLM: search with the last "
                                            "item's title (same as --no-llm).")] = False,
    llm: LlmOption = None,
    fusion: FusionOption = None,
    constrained: ConstrainedOption = False,
    exact: ExactOption = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")] = False,
    explain: Annotated[bool, typer.Option("--explain", help="Say why: each item's score split into named parts "
                                          "(and the generated titles / history items behind them).")] = False,
) -> None:
    """Recommend K catalogue items for one user history."""
    from gloss.edge.bundle import load_bundle
    from gloss.edge.recommend import Recommender

    with user_errors():
        history = read_history(history_path, items)
        if not history:
            raise InputError("empty history: give at least one item")
        # Unknown items fail before the slow steps: hashing every bundle file and loading the LLM.
        bundle = load_bundle(bundle_dir, verify=False)
        history = bundle.catalog.resolve_history(history)
        bundle.verify()
        recommender = Recommender.from_bundle(bundle, use_generator=use_llm(llm, last_item), use_fusion=fusion,
                                              exact=exact or None,
                                              exclude_seen=not include_seen, constrained=constrained)
        result = recommender.recommend(history, k=k, explain=explain)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    for query in result.queries:
        typer.echo(f"query: {query}", err=True)
    for rank, item in enumerate(result.items, start=1):
        typer.echo(f"{rank:>3}  {item.score:.4f}  {item.asin}  {item.title}")
        if result.explanations is not None:
            typer.echo(f"     = {result.explanations[rank - 1].describe()}")


def use_llm(llm: bool | None, last_item: bool) -> bool | None:
    """``use_generator`` from ``--llm/--no-llm`` and ``--last-item`` (None: the recommender decides)."""
    if last_item and llm:
        raise InputError("--last-item skips the LLM: not with --llm")
    return False if last_item else llm


# --- serve ---


@app.command()
def serve(
    bundle_dir: Annotated[Path, typer.Argument(help="Output of `gloss-export bundle`.")],
    host: Annotated[str, typer.Option(help="Address to bind; loopback by default (the server has no "
                                      "authentication).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0 = any free port).")] = 8080,
    last_item: Annotated[bool, typer.Option("--last-item", help="Serve without the LLM (last-item search, or "
                                            "fusion when the bundle has it; same as --no-llm).")] = False,
    llm: LlmOption = None,
    fusion: FusionOption = None,
    constrained: ConstrainedOption = False,
    exact: ExactOption = False,
    queue_size: Annotated[int, typer.Option(min=1, help="Requests that may wait for the worker; more get 503 "
                                            "with Retry-After.")] = ServeConfig.queue_size,
    max_batch: Annotated[int | None, typer.Option(min=1, help="Queued requests the worker runs together "
                                                  "(default: 8 without the LLM, 1 with it).")] = None,
    request_timeout: Annotated[float, typer.Option(min=0.001, help="Seconds a queued request may wait for its "
                                                   "answer (504 after).")] = ServeConfig.request_timeout_s,
) -> None:
    """Serve POST /recommend {"history": [...], "k": 10}, GET /health and GET /metrics over HTTP, and a playground
    page at GET / (search the catalogue, build a history, see the recommendations and why)."""
    from gloss.edge.recommend import Recommender
    from gloss.edge.server.app import llm_generation
    from gloss.edge.server.transport import make_server

    with user_errors():
        config = ServeConfig(queue_size=queue_size, max_batch=max_batch, request_timeout_s=request_timeout,
                             bundle_dir=bundle_dir)
        recommender = Recommender.load(bundle_dir, use_generator=use_llm(llm, last_item), use_fusion=fusion,
                                       constrained=constrained, generation=llm_generation(max_batch),
                                       exact=exact or None)
        server = make_server(recommender, host, port, config)
        typer.echo(f"serving {bundle_dir} on {server.url} (playground: {server.url}/; POST /recommend, GET /search, "
                   "GET /bundle, GET /health, GET /metrics)", err=True)
        try:
            server.serve_forever()  # SIGINT/SIGTERM: finish in-flight requests, reject queued ones, exit
        except KeyboardInterrupt:
            typer.echo("stopped", err=True)
        finally:
            server.server_close()

# --- inspect ---


@app.command()
def inspect(
    bundle_dir: Annotated[Path, typer.Argument(help="Output of `gloss-export bundle`.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")] = False,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Check every file's SHA-256 (sizes are "
                                         "always checked).")] = True,
) -> None:
    """Show what a bundle holds (items, embedder, index, generator, fusion, trie, sizes, versions), checked
    against its manifest; exit 2 if a check fails."""
    from gloss.edge.inspect import format_report, inspect_bundle, require_sound

    with user_errors():
        report = inspect_bundle(bundle_dir, verify=verify)
    typer.echo(json.dumps(report.to_dict(), indent=2) if as_json else format_report(report))
    with user_errors():
        require_sound(report)


if __name__ == "__main__":
    app()

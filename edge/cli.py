"""`gloss-edge`: recommend, evaluate and serve from a bundle on a CPU (no torch)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from gloss.edge.errors import InputError, user_errors
from gloss.edge.files import write_json_atomic
from gloss.edge.logs import setup_logging
from gloss.edge.metrics import POWER_MIN, POWER_MIN_DEFAULT
from gloss.edge.recommend import RetrievalConfig
from gloss.edge.splits import DEFAULT_SEED, Split

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    """GLoSS on the edge: bundle in, recommendations out."""
    setup_logging(verbose)


# --- commands (one per section; keep each a thin shell over a library function) ---

# --- eval ---


class Source(str, Enum):
    """Where the queries come from."""

    queries = "queries"
    last_item = "last-item"
    bundle = "bundle"


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
    exclude_seen: Annotated[bool, typer.Option("--exclude-seen", help="Drop items already in the "
                                               "history (the paper keeps them).")] = False,
    per_query: Annotated[int | None, typer.Option(min=1, help="Neighbours per query (default: 1 per "
                                                  "generated title, 10 for last-item).")] = None,
    power_min: Annotated[int | None, typer.Option(help="Power users have more interactions than this "
                                                  "(default: 14 for beauty, else 13).")] = None,
    fusion: Annotated[bool, typer.Option("--fusion", help="Rank with the bundle's fusion re-ranker (co-purchase "
                                         "+ history text + queries) instead of the paper's rule.")] = False,
    max_users: Annotated[int | None, typer.Option(min=1, help="Score only the first N users.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the validation-user sample.")] = DEFAULT_SEED,
    out_path: Annotated[Path | None, typer.Option("--out", help="Also write the JSON report here.")] = None,
    details_path: Annotated[Path | None, typer.Option("--details", help="Per-user ranks (JSONL).")] = None,
    save_queries: Annotated[Path | None, typer.Option("--save-queries", help="Write each user's queries as a "
                                                      "queries file (e.g. what the bundle's LLM wrote).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")] = False,
) -> None:
    """Score a query source on a bundle: Recall@5/10, NDCG@5/10, MRR, per user segment."""
    from gloss.edge.bundle import load_bundle
    from gloss.edge.evaluate import evaluate, format_report, load_cases

    with user_errors():
        bundle = load_bundle(bundle_dir)
        cases = load_cases(bundle, source.value, queries_path, sequences_path, split, max_users, seed, fusion)
        index = bundle.open_index()
        config = RetrievalConfig(
            k=10, per_query=per_query or (10 if source is Source.last_item else 1), exclude_seen=exclude_seen
        )
        power = power_min if power_min is not None else POWER_MIN.get(bundle.name, POWER_MIN_DEFAULT)
        report = evaluate(cases, bundle.catalog, bundle.open_embedder(), index, config,
                          source=source.value, power_min=power, details_path=details_path, queries_path=save_queries,
                          fusion=bundle.open_fusion(index) if fusion else None)
        if out_path is not None:
            write_json_atomic(out_path, report.to_dict())
    typer.echo(json.dumps(report.to_dict(), indent=2) if as_json else format_report(report))


# --- recommend ---


def read_history(path: Path | None, items: list[str] | None) -> list[str]:
    """History items from ``--item`` options or a file ('-' = stdin): a JSON list, or one item per line."""
    if items:
        return items
    if path is None:
        raise InputError("no history: pass --history FILE ('-' for stdin) or --item ITEM (repeatable)")
    if str(path) == "-":
        text = sys.stdin.read()
    elif not path.is_file():
        raise InputError(f"{path}: no such file")
    else:
        text = path.read_text(encoding="utf-8")
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            values = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: starts with '[' but is not a JSON list ({exc.msg})") from None
        if not all(isinstance(v, str) for v in values):
            raise InputError(f"{path}: the JSON list must hold item ids or titles (strings)")
        return [v for v in values if v.strip()]
    return [line.strip() for line in text.splitlines() if line.strip()]


@app.command()
def recommend(
    bundle_dir: Annotated[Path, typer.Argument(help="Output of `gloss-export bundle`.")],
    history_path: Annotated[Path | None, typer.Option("--history", "-H", help="History file, oldest first: "
                                                      "a JSON list or one ASIN/title per line; '-' = stdin.")] = None,
    items: Annotated[list[str] | None, typer.Option("--item", "-i", help="A history item (ASIN or title), "
                                                    "oldest first; repeatable.")] = None,
    k: Annotated[int, typer.Option("--k", "-k", min=1, max=1000, help="Number of items to return.")] = 10,
    exclude_seen: Annotated[bool, typer.Option("--exclude-seen", help="Never recommend history items.")] = False,
    last_item: Annotated[bool, typer.Option("--last-item", help="Skip the LLM: search with the last "
                                            "item's title.")] = False,
    fusion: Annotated[bool | None, typer.Option("--fusion/--no-fusion", help="Fusion re-ranking (default: on "
                                                "when the bundle has co-purchase statistics).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")] = False,
) -> None:
    """Recommend K catalogue items for one user history."""
    from gloss.edge.recommend import Recommender

    with user_errors():
        history = read_history(history_path, items)
        result = Recommender.load(bundle_dir, use_generator=not last_item, use_fusion=fusion).recommend(
            history, k=k, exclude_seen=exclude_seen
        )
    if as_json:
        typer.echo(json.dumps({"items": [asdict(i) for i in result.items], "queries": result.queries}, indent=2))
        return
    for query in result.queries:
        typer.echo(f"query: {query}", err=True)
    for rank, item in enumerate(result.items, start=1):
        typer.echo(f"{rank:>3}  {item.score:.4f}  {item.asin}  {item.title}")


# --- serve ---


@app.command()
def serve(
    bundle_dir: Annotated[Path, typer.Argument(help="Output of `gloss-export bundle`.")],
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0 = any free port).")] = 8080,
    last_item: Annotated[bool, typer.Option("--last-item", help="Serve the no-LLM baseline.")] = False,
) -> None:
    """Serve POST /recommend {"history": [...], "k": 10} and GET /health over HTTP."""
    from gloss.edge.recommend import Recommender
    from gloss.edge.serve import make_server

    with user_errors():
        server = make_server(Recommender.load(bundle_dir, use_generator=not last_item), host, port)
    typer.echo(f"serving {bundle_dir} on http://{server.server_address[0]}:{server.server_address[1]}", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    app()

"""`gloss-edge`: recommend, evaluate and serve from a bundle on a CPU (no torch)."""

from __future__ import annotations

from typing import Annotated

import typer

from gloss.edge.logs import setup_logging

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    """GLoSS on the edge: bundle in, recommendations out."""
    setup_logging(verbose)


# --- commands (one per section; keep each a thin shell over a library function) ---

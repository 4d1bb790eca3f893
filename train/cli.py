"""`gloss-train`: prepare data, QLoRA fine-tune, generate queries for evaluation (GPU box)."""

from __future__ import annotations

from typing import Annotated

import typer

from gloss.edge.logs import setup_logging

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    """Prepare the paper's data and fine-tune a LLaMA-architecture model on it."""
    setup_logging(verbose)


# --- commands (one per section; keep each a thin shell over a library function) ---

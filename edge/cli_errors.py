"""Click's usage errors (bad option values, missing or unknown options) as one ``Error:`` line and exit 2.

Typer prints these in a multi-line box while gloss prints every other expected error as one line
(:func:`gloss.edge.errors.user_errors`). The three CLIs build their apps with ``cls=OneLineErrors`` so that
``-k 0``, ``--lora-r abc`` and a missing ``--catalog`` read like any other input error.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from typer.core import TyperGroup

logger = logging.getLogger(__name__)

# Typer >= 0.2x vendors click (typer._click) and older versions use click itself: take the classes typer uses.
CLICK_EXCEPTION: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
USAGE_ERROR: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


class OneLineErrors(TyperGroup):
    """A typer group whose click errors print one ``Error: ...`` line on stderr and exit with their code."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:  # noqa: D102
        with one_line_click_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:  # noqa: D102
        with one_line_click_errors():
            return super().invoke(ctx)


@contextmanager
def one_line_click_errors() -> Iterator[None]:
    """Turn a click exception into one ``Error:`` line and ``typer.Exit`` with its code (2 for usage errors).

    ``NoArgsIsHelpError`` (a bare command prints its help) passes through unchanged.
    """
    try:
        yield
    except CLICK_EXCEPTION as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # typer's own test, by name, as in its rich_utils
            raise
        logger.debug("click error", exc_info=True)
        print(f"Error: {format_click_error(exc)}", file=sys.stderr)
        raise typer.Exit(getattr(exc, "exit_code", 2)) from None


def format_click_error(exc: Exception) -> str:
    """Click's message on one line, plus where to read the usage (``See 'gloss-edge recommend --help'.``)."""
    message = " ".join(exc.format_message().split())  # type: ignore[attr-defined]
    if not message.endswith((".", "?", "!")):
        message += "."
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, USAGE_ERROR) and ctx is not None and ctx.command.get_help_option(ctx) is not None:
        message += f" See '{ctx.command_path} {ctx.help_option_names[0]}'."
    return message

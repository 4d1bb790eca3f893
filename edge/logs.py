"""Logging setup for the command-line apps (library code only gets loggers)."""

from __future__ import annotations

import logging
import sys


def setup_logging(verbose: bool = False) -> None:
    """Send INFO (DEBUG with ``verbose``) to stderr; keep third-party loggers at WARNING."""
    level = logging.DEBUG if verbose else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("gloss").setLevel(level)


def progress_enabled(show_progress: bool | None, logger: logging.Logger) -> bool:
    """Resolve ``show_progress``: None means on when ``logger`` is at INFO or below."""
    if show_progress is None:
        return logger.isEnabledFor(logging.INFO)
    return show_progress

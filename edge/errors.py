"""Errors shown to users, and the helpers that turn them into one line and an exit code."""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

logger = logging.getLogger(__name__)

MAX_ERROR_CHARS = 600  # longer messages (e.g. a library's list of every model type it knows) are cut


class GlossError(Exception):
    """A run failed for a reason the user can act on (exit code 1)."""

    exit_code = 1


class InputError(GlossError, ValueError):
    """Bad input: a path, a file's content, an option value (exit code 2)."""

    exit_code = 2


class MissingDependencyError(GlossError, ImportError):
    """An optional dependency of another extra is not installed (exit code 1)."""


def require(module: str, extra: str) -> ModuleType:
    """Import an optional dependency or explain which extra provides it.

    Args:
        module: Importable module name, e.g. ``"onnxruntime"``.
        extra: The ``gloss`` extra that installs it, e.g. ``"edge"``.

    Returns:
        The imported module.

    Raises:
        MissingDependencyError: If the import fails.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(f"{module} is needed here: pip install 'gloss[{extra}]'") from exc


@contextmanager
def user_errors() -> Iterator[None]:
    """Print expected errors as one ``Error: ...`` line on stderr and exit non-zero.

    Unexpected exceptions propagate with their traceback. ``-v`` logs the full message and traceback.
    """
    try:
        yield
    except GlossError as exc:
        logger.debug("user-facing error", exc_info=True)
        print(f"Error: {one_line(str(exc))}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        print("Error: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


def one_line(message: str, limit: int = MAX_ERROR_CHARS) -> str:
    """A message as one line (a wrapped library message joined with spaces), cut to ``limit`` characters."""
    text = " ".join(line.strip() for line in message.splitlines() if line.strip())
    if len(text) > limit:
        text = text[:limit].rstrip() + " ... (cut; -v shows all)"
    return text

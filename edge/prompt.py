"""The paper's prompt, shared byte for byte by training, generation and the edge runtime."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from gloss.edge.errors import InputError

# Exact text of GLoSS (Acharya et al., RecSys 2025), including the trailing spaces.
PROMPT_TEMPLATE = (
    "Below is a customer's purchase history on Amazon, listed in chronological order (earliest to latest). \n"
    "Each item is represented by the following format: Title: <item title> \n"
    "Based on this history, predict **only one** item the customer is most likely to purchase next in the "
    "same format.\n\n### Purchase history:\n{}\n\n### Next item:\n{}"
)
ITEM_PREFIX = "Title: "
MAX_TITLE_WORDS = 25


def clean_title(title: str, max_words: int = MAX_TITLE_WORDS) -> str:
    """Cut a title to its first ``max_words`` whitespace-separated words, joined by single spaces."""
    return " ".join(str(title).split()[:max_words])


def render_item(title: str) -> str:
    """Render one item the way the prompt lists it: ``Title: <title>``."""
    return f"{ITEM_PREFIX}{title}"


def build_prompt(history: Sequence[str], target: str | None = None) -> str:
    """Build the prompt for a history of titles (oldest first).

    Args:
        history: Item titles in chronological order.
        target: The next item's title for training text; ``None`` leaves the answer empty.

    Returns:
        The prompt text; with a target it is the full training text.

    Raises:
        InputError: If the history is empty.
    """
    if not history:
        raise InputError("empty history: give at least one item")
    items = "\n".join(render_item(title) for title in history)
    return PROMPT_TEMPLATE.format(items, render_item(target) if target is not None else "")


def parse_generated(text: str) -> str:
    """Turn generated text into a title: first line, without the ``Title:`` prefix."""
    line = text.strip().split("\n", 1)[0].strip()
    if line.startswith(ITEM_PREFIX.strip()):
        line = line[len(ITEM_PREFIX.strip()) :].strip()
    return line


def fit_history(
    history: Sequence[str], count_tokens: Callable[[str], int], max_prompt_tokens: int
) -> list[str]:
    """Drop the oldest items until the prompt fits ``max_prompt_tokens`` (the paper truncates from the left).

    Args:
        history: Titles, oldest first.
        count_tokens: Returns the number of tokens of a prompt text.
        max_prompt_tokens: Token budget for the prompt.

    Returns:
        The longest suffix of ``history`` whose prompt fits; at least the last item.

    Raises:
        InputError: If even the last item alone does not fit.
    """
    items = list(history)
    if not items:
        raise InputError("empty history: give at least one item")
    # Binary search on the number of dropped items: prompt length is monotone in the suffix.
    lo, hi = 0, len(items) - 1
    if count_tokens(build_prompt(items)) <= max_prompt_tokens:
        return items
    if count_tokens(build_prompt(items[-1:])) > max_prompt_tokens:
        raise InputError(f"the prompt for the last item alone exceeds {max_prompt_tokens} tokens")
    while lo < hi:
        mid = (lo + hi) // 2
        if count_tokens(build_prompt(items[mid:])) <= max_prompt_tokens:
            hi = mid
        else:
            lo = mid + 1
    return items[lo:]

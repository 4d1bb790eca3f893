import pytest

from gloss.edge.errors import InputError
from gloss.edge.prompt import PROMPT_TEMPLATE, build_prompt, clean_title, fit_history, parse_generated

PAPER_TEMPLATE = (
    "Below is a customer's purchase history on Amazon, listed in chronological order (earliest to latest). \n"
    "Each item is represented by the following format: Title: <item title> \nBased on this history, predict "
    "**only one** item the customer is most likely to purchase next in the same format.\n\n### Purchase history:"
    "\n{}\n\n### Next item:\n{}"
)


def test_template_is_the_papers_text_byte_for_byte():
    assert PROMPT_TEMPLATE == PAPER_TEMPLATE


def test_build_prompt_lists_items_oldest_first_and_leaves_answer_empty():
    text = build_prompt(["A", "B"])
    assert text.endswith("### Purchase history:\nTitle: A\nTitle: B\n\n### Next item:\n")
    assert build_prompt(["A"], target="C") == build_prompt(["A"]) + "Title: C"


def test_build_prompt_rejects_empty_history():
    with pytest.raises(InputError, match="empty history"):
        build_prompt([])


def test_clean_title_keeps_25_words_and_entities():
    title = " ".join(f"w{i}" for i in range(30)) + " &amp;"
    assert clean_title(title) == " ".join(f"w{i}" for i in range(25))
    assert clean_title("Salt  &amp;\tPepper") == "Salt &amp; Pepper"


@pytest.mark.parametrize(
    "text, title",
    [("Title: Foo Bar", "Foo Bar"), (" Title: Foo\nTitle: Baz", "Foo"), ("Foo", "Foo"), ("Title:Foo", "Foo")],
)
def test_parse_generated_takes_first_line_without_prefix(text, title):
    assert parse_generated(text) == title


def test_fit_history_drops_oldest_items_first():
    history = [f"item {i}" for i in range(50)]

    def count(text: str) -> int:
        return len(text.split())

    budget = count(build_prompt(history[-7:]))
    fitted = fit_history(history, count, budget)
    assert fitted == history[-7:]
    assert fit_history(history, count, 10_000) == history
    with pytest.raises(InputError, match="exceeds"):
        fit_history(history, count, 3)

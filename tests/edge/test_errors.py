"""user_errors: every expected failure is one `Error:` line on stderr and its exit code."""

from __future__ import annotations

import pytest

from gloss.edge.errors import MAX_ERROR_CHARS, GlossError, InputError, one_line, user_errors


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        (InputError("bad.txt: no such file"), 2, "Error: bad.txt: no such file"),
        (GlossError("run failed"), 1, "Error: run failed"),
        (InputError("x.yaml: not valid YAML (while parsing\n  in line 2\n\n  column 3)"), 2,
         "Error: x.yaml: not valid YAML (while parsing in line 2 column 3)"),
    ],
)
def test_user_errors_prints_one_line_and_exits_with_the_code(capsys, error, code, line):
    with pytest.raises(SystemExit) as info, user_errors():
        raise error
    assert info.value.code == code
    assert capsys.readouterr().err == line + "\n"


def test_long_messages_are_cut():
    message = "model: unknown type; known: " + ", ".join(f"type{i}" for i in range(2000))
    short = one_line(message)
    assert short.startswith("model: unknown type; known: type0, type1")
    assert short.endswith("... (cut; -v shows all)") and len(short) < MAX_ERROR_CHARS + 30
    assert one_line("short\nmessage") == "short message"


def test_unexpected_errors_keep_their_traceback():
    with pytest.raises(KeyError), user_errors():
        raise KeyError("bug")

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


# --- a corrupt part whose checksum was fixed in the manifest is still one Error line (issue 17, defect 5) ---


def _trie(tmp_path):
    from gloss.edge.trie import build_trie

    titles = ["red lipstick", "blue nail polish", "green face mask"]
    vocab: dict[str, int] = {}
    tokenize = lambda text: [vocab.setdefault(word, len(vocab) + 1) for word in text.split()]  # noqa: E731
    return build_trie(titles, tokenize, [0], "tokenizer-sha").save(tmp_path / "trie.npz")


def _corruptions(data: bytes):
    """Truncations and single flipped bytes over the whole file (local headers, data, central directory)."""
    for cut in (0, 10, len(data) // 2, len(data) - 22, len(data) - 1):
        yield f"cut at {cut}", data[:cut]
    for offset in range(0, len(data), max(1, len(data) // 97)):
        yield f"flipped byte {offset}", data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1:]


def test_a_corrupt_trie_file_is_an_input_error_or_loads_unchanged(tmp_path):
    from gloss.edge.trie import TokenTrie

    path = _trie(tmp_path)
    original = TokenTrie.load(path)
    data = path.read_bytes()
    for what, corrupt in _corruptions(data):
        path.write_bytes(corrupt)
        try:
            loaded = TokenTrie.load(path)
        except InputError as exc:
            assert "trie" in str(exc), what
            continue
        assert loaded.meta == original.meta and dict(loaded.sequences()) == dict(original.sequences()), what


def test_inspect_reports_a_corrupt_trie_with_a_fixed_checksum_in_one_line(embedder_dir, vocab_gguf_path, tmp_path):
    import json

    from typer.testing import CliRunner

    from gloss.edge.bundle import MANIFEST_NAME, TRIE_FILE
    from gloss.edge.cli import app
    from gloss.edge.files import sha256_file
    from gloss.export.bundle import build_bundle
    from tests.conftest import CATALOG_PATH
    from tests.fakes import error_line

    bundle = build_bundle(CATALOG_PATH, tmp_path / "b", embedder_dir=embedder_dir, gguf_path=vocab_gguf_path,
                          show_progress=False)
    trie = bundle / TRIE_FILE
    data = trie.read_bytes()
    trie.write_bytes(data[: len(data) // 2] + b"\0" * (len(data) - len(data) // 2))  # a zip without its directory
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    manifest["files"][TRIE_FILE] = {"size": trie.stat().st_size, "sha256": sha256_file(trie)}
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest))
    result = CliRunner().invoke(app, ["inspect", str(bundle)])
    assert result.exit_code == 2 and "not a gloss token trie" in error_line(result), result.output
    assert "Traceback" not in result.output

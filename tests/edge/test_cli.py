"""`gloss-edge` end to end through typer's CliRunner on a small real-title bundle."""

from __future__ import annotations

import json
import shutil
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from gloss.edge.bundle import MANIFEST_NAME
from gloss.edge.catalog import load_catalog
from gloss.edge.cli import app
from gloss.edge.files import read_jsonl
from gloss.edge.recommend import Recommender
from gloss.edge.server.app import handle_request
from gloss.edge.server.transport import make_server
from gloss.edge.splits import Split, load_sequences, make_examples
from tests.conftest import FIXTURES
from tests.fakes import error_line

CATALOG_PATH = FIXTURES / "beauty_items.jsonl"
SEQUENCES_PATH = FIXTURES / "beauty_sequences.jsonl"
runner = CliRunner()


@pytest.fixture(scope="module")
def example():
    return next(make_examples(load_sequences(SEQUENCES_PATH), Split.test, frozenset()))


def invoke(*args: str, input: str | None = None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def test_help_lists_the_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("recommend", "eval", "serve"):
        assert command in result.output


def test_recommend_last_item_json(tiny_bundle: Path, example):
    items = [x for asin in example.history for x in ("--item", asin)]
    result = invoke("recommend", tiny_bundle, "--last-item", "--include-seen", "--json", "-k", "7", *items)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert len(out["items"]) == 7
    assert out["items"][0]["asin"] == example.history[-1]  # itself included on request
    default = json.loads(invoke("recommend", tiny_bundle, "--last-item", "--json", "-k", "7", *items).stdout)
    assert not {item["asin"] for item in default["items"]} & set(example.history)  # removed by default
    scores = [item["score"] for item in out["items"]]
    assert scores == sorted(scores, reverse=True)


def test_recommend_reads_titles_from_stdin_and_drops_seen(tiny_bundle: Path, example):
    catalog = load_catalog(CATALOG_PATH)
    titles = "\n".join(catalog.title(a) for a in example.history)
    result = invoke("recommend", tiny_bundle, "--last-item", "--exclude-seen", "--json", "--history", "-", input=titles)
    assert result.exit_code == 0, result.output
    assert not {item["asin"] for item in json.loads(result.stdout)["items"]} & set(example.history)


@pytest.mark.parametrize(
    "args, stdin, message",
    [
        (["--last-item", "--item", "B000NOTREAL"], None, "unknown item 'B000NOTREAL'"),
        (["--last-item", "--history", "-"], "\n\n", "empty history"),
        (["--last-item"], None, "no history"),
        (["--llm", "--item", load_catalog(CATALOG_PATH).asins[0]], None, "bundle has no generator"),
        (["--last-item", "--history", "missing.txt"], None, "missing.txt: no such history file"),
        (["--last-item", "--item", ""], None, "history item 1 is empty"),
        (["--last-item", "--item", "Title: "], None, "history item 1 is empty"),
        (["--last-item", "--history", "-"], '{"history": ["B0"]}', "<stdin>: holds a JSON object; expected a JSON"),
        (["--last-item", "--history", "-"], '{"a": 1}\n{"b": 2}\n', "holds a JSON object; expected a JSON list"),
        (["--last-item", "--history", "-"], '["B000", 3]', "the JSON list must hold item ids or titles"),
        (["--last-item", "--history", "-"], '["B000",', "starts with '[' but is not a JSON list"),
    ],
)
def test_recommend_bad_input_gives_one_error_line(tiny_bundle: Path, args, stdin, message):
    result = invoke("recommend", tiny_bundle, *args, input=stdin)
    assert result.exit_code == 2
    assert message in error_line(result)


def test_recommend_rejects_a_tampered_bundle(tiny_bundle: Path, tmp_path: Path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    with open(broken / "index" / "vectors.npy", "r+b") as handle:
        handle.seek(-8, 2)
        handle.write(b"\xff" * 8)
    result = invoke("recommend", broken, "--last-item", "--item", load_catalog(CATALOG_PATH).asins[0])
    assert result.exit_code == 2
    assert "vectors.npy: SHA-256 differs" in error_line(result)
    # An unknown item is found first: the catalogue is read before every file is hashed (the slow check).
    result = invoke("recommend", broken, "--last-item", "--item", "x")
    assert result.exit_code == 2 and "unknown item 'x'" in error_line(result)


def test_recommend_rejects_a_folder_that_is_not_a_bundle(tmp_path: Path):
    result = invoke("recommend", tmp_path, "--last-item", "--item", "x")
    assert result.exit_code == 2
    assert MANIFEST_NAME in error_line(result)


def test_eval_queries_file_json_report(tiny_bundle: Path, tmp_path: Path):
    catalog = load_catalog(CATALOG_PATH)
    examples = list(make_examples(load_sequences(SEQUENCES_PATH), Split.test, frozenset()))
    rows = [{"user": e.user, "history": list(e.history), "target": e.target,
             "queries": [f"Title: {catalog.title(e.target)}"]} for e in examples]
    queries = tmp_path / "q.jsonl"
    queries.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "report.json"
    result = invoke("eval", tiny_bundle, "--queries", queries, "--json", "--out", out)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["metrics"]["all"]["users"] == len(rows)
    assert report["metrics"]["all"]["recall@5"] == 1.0  # the exact target title always finds the target
    assert report["config"]["power_min"] == 14  # beauty's threshold, from the bundle name
    assert json.loads(out.read_text()) == report


def test_eval_last_item_table(tiny_bundle: Path):
    result = invoke("eval", tiny_bundle, "--source", "last-item", "--sequences", SEQUENCES_PATH, "--exclude-seen")
    assert result.exit_code == 0, result.output
    assert "recall@5" in result.stdout and "power" in result.stdout


def test_eval_saved_queries_score_the_same_when_read_back(tiny_bundle: Path, tmp_path: Path):
    saved = tmp_path / "saved.jsonl.gz"
    first = invoke("eval", tiny_bundle, "--source", "last-item", "--sequences", SEQUENCES_PATH, "--per-query", "1",
                   "--save-queries", saved, "--json")
    assert first.exit_code == 0, first.output
    rows = list(read_jsonl(saved))
    catalog = load_catalog(CATALOG_PATH)
    assert all(r["queries"] == [f"Title: {catalog.title(r['history'][-1])}"] for r in rows)
    again = invoke("eval", tiny_bundle, "--queries", saved, "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["metrics"] == json.loads(first.stdout)["metrics"] and len(rows) > 10


@pytest.mark.parametrize(
    "args, message",
    [
        (["--source", "last-item"], "needs --sequences"),
        (["--source", "queries"], "needs --queries"),
        (["--source", "bundle", "--sequences", SEQUENCES_PATH], "bundle has no generator"),
        (["--queries", FIXTURES / "beauty_items.jsonl"], "lacks field"),
    ],
)
def test_eval_bad_input(tiny_bundle: Path, args, message):
    result = invoke("eval", tiny_bundle, *args)
    assert result.exit_code == 2
    assert message in error_line(result)


def test_eval_rejects_unknown_source(tiny_bundle: Path):
    result = invoke("eval", tiny_bundle, "--source", "magic")
    assert result.exit_code == 2


def test_handle_request_answers_and_rejects(tiny_bundle: Path, example):
    recommender = Recommender.load(tiny_bundle, use_generator=False)
    status, reply = handle_request(recommender, json.dumps({"history": list(example.history), "k": 3}).encode())
    assert status == 200 and len(reply["items"]) == 3
    for body, message in [(b"{", "not JSON"), (b'{"history": "x"}', "'history'"),
                          (b'{"history": ["B000NOTREAL"]}', "unknown item"),
                          (b'{"history": ["x"], "k": 0}', "'k'")]:
        status, reply = handle_request(recommender, body)
        assert status == 400 and message in reply["error"]


@pytest.mark.allow_hosts(["127.0.0.1"])
def test_server_round_trip_on_loopback(tiny_bundle: Path, example):
    server = make_server(Recommender.load(tiny_bundle, use_generator=False), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with urllib.request.urlopen(f"{url}/health", timeout=10) as response:
            assert json.loads(response.read())["status"] == "ok"
        request = urllib.request.Request(f"{url}/recommend", data=json.dumps(
            {"history": list(example.history), "k": 2, "include_seen": True}).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert [i["asin"] for i in json.loads(response.read())["items"]][0] == example.history[-1]
    finally:
        server.shutdown()
        server.server_close()


def test_recommend_uses_fusion_when_the_bundle_has_it(fusion_bundle: Path, example):
    from gloss.edge.bundle import load_bundle

    args = [x for asin in example.history for x in ("--item", asin)]
    fused = invoke("recommend", fusion_bundle, "--last-item", "--json", *args)
    assert fused.exit_code == 0, fused.output
    bundle = load_bundle(fusion_bundle)
    positions = [bundle.catalog.position(a) for a in example.history]
    expected = [bundle.catalog.asins[i.position] for i in bundle.open_fusion().rank(positions, None, k=10)]
    assert [item["asin"] for item in json.loads(fused.stdout)["items"]] == expected
    paper = invoke("recommend", fusion_bundle, "--last-item", "--no-fusion", "--include-seen", "--json", *args)
    assert json.loads(paper.stdout)["items"][0]["asin"] == example.history[-1]


def test_eval_fusion_matches_the_ranker_and_refuses_leaky_statistics(fusion_bundle: Path, tmp_path: Path):
    from gloss.edge.bundle import load_bundle
    from gloss.edge.metrics import rank_of

    details = tmp_path / "details.jsonl"
    result = invoke("eval", fusion_bundle, "--source", "last-item", "--sequences", SEQUENCES_PATH, "--fusion",
                    "--json", "--details", details)
    assert result.exit_code == 0, result.output
    bundle = load_bundle(fusion_bundle)
    ranker = bundle.open_fusion()
    examples = list(make_examples(load_sequences(SEQUENCES_PATH), Split.test, frozenset()))
    hits = 0
    for ex in examples:
        ranked = ranker.rank([bundle.catalog.position(a) for a in ex.history], None, k=10)
        rank = rank_of([bundle.catalog.asins[i.position] for i in ranked], ex.target)
        hits += rank is not None and rank <= 5
    assert json.loads(result.stdout)["metrics"]["all"]["recall@5"] == pytest.approx(hits / len(examples))
    leaky = invoke("eval", fusion_bundle, "--source", "last-item", "--sequences", SEQUENCES_PATH, "--fusion",
                   "--split", "validation")
    assert leaky.exit_code == 2
    assert "--holdout 2" in error_line(leaky)


def test_eval_fusion_needs_statistics(tiny_bundle: Path):
    result = invoke("eval", tiny_bundle, "--source", "last-item", "--sequences", SEQUENCES_PATH, "--fusion")
    assert result.exit_code == 2
    assert "gloss-export fusion" in error_line(result)


@pytest.mark.slow
def test_bundle_generator_end_to_end(tiny_bundle: Path, smollm2_gguf_path: Path, tmp_path: Path, example):
    """The real SmolLM2 GGUF in a bundle: recommend writes 5 beams' titles, eval --source bundle scores users."""
    from gloss.export.bundle import add_generator

    out = tmp_path / "llm"
    shutil.copytree(tiny_bundle, out)
    add_generator(out, smollm2_gguf_path)
    result = invoke("recommend", out, "--json", "-k", "3", *[x for a in example.history for x in ("--item", a)])
    assert result.exit_code == 0, result.output
    reply = json.loads(result.stdout)
    assert len(reply["queries"]) == 5 and all(q.startswith("Title: ") for q in reply["queries"])
    assert 1 <= len(reply["items"]) <= 3
    report = invoke("eval", out, "--source", "bundle", "--sequences", SEQUENCES_PATH, "--max-users", "2", "--json")
    assert report.exit_code == 0, report.output
    assert json.loads(report.stdout)["metrics"]["all"]["users"] == 2


# --- hardening (issue 11): every bad input is one `Error:` line, exit 2, found before anything slow loads ---


@pytest.mark.parametrize(
    "data, offset, line",
    [
        (b"\xff\xfeB\x00", 0, 1),  # UTF-16 with a byte order mark
        (b"B000NOTREAL\nCaf\xe9 cr\xe8me\n", 15, 2),  # Latin-1
        (b'["B000", "\xc3"]', 10, 1),  # truncated UTF-8 sequence
    ],
)
def test_recommend_names_the_byte_offset_of_non_utf8_history(tiny_bundle: Path, tmp_path: Path, data, offset, line):
    path = tmp_path / "history.txt"
    path.write_bytes(data)
    assert data[offset] >= 0x80  # the reference: the first byte that cannot start or continue UTF-8 here
    result = invoke("recommend", tiny_bundle, "--last-item", "--history", path)
    assert result.exit_code == 2
    assert error_line(result) == (f"Error: {path}: not UTF-8 text: byte 0x{data[offset]:02x} at byte offset "
                                  f"{offset} (line {line}); save the file as UTF-8")


def test_recommend_non_utf8_stdin_and_utf8_bom(tiny_bundle: Path, example):
    result = runner.invoke(app, ["recommend", str(tiny_bundle), "--last-item", "--history", "-"], input=b"ok\n\x80")
    assert result.exit_code == 2
    assert "<stdin>: not UTF-8 text: byte 0x80 at byte offset 3 (line 2)" in error_line(result)
    with_bom = "\ufeff" + "\n".join(example.history)  # Windows editors add one; it is not part of the id
    result = runner.invoke(app, ["recommend", str(tiny_bundle), "--last-item", "--json", "--history", "-"],
                           input=with_bom.encode("utf-8"))
    assert result.exit_code == 0, result.output


def test_recommend_refuses_item_and_history_together(tiny_bundle: Path, example, tmp_path: Path):
    path = tmp_path / "history.txt"
    path.write_text("\n".join(example.history), encoding="utf-8")
    result = invoke("recommend", tiny_bundle, "--last-item", "-i", example.history[0], "--history", path)
    assert result.exit_code == 2
    assert "either as --item ITEM (repeatable) or as --history FILE, not both" in error_line(result)
    command = typer.main.get_command(app).commands["recommend"]  # --help says so (its box wraps the text)
    assert "not with --history" in next(p.help for p in command.params if "--item" in p.opts)


def test_recommend_refuses_a_directory_as_history(tiny_bundle: Path, tmp_path: Path):
    result = invoke("recommend", tiny_bundle, "--last-item", "--history", tmp_path)
    assert result.exit_code == 2
    assert error_line(result) == f"Error: {tmp_path}: is a directory; expected a history file"


@pytest.fixture
def bundle_with_generator(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A copy of the bundle whose manifest lists a generator (the GGUF bytes are never read in these tests)."""
    return with_fake_generator(tiny_bundle, tmp_path / "with-generator")


def with_fake_generator(tiny_bundle: Path, out: Path) -> Path:
    """Copy a bundle to ``out`` and list a generator in its manifest (its bytes are not a model)."""
    from gloss.edge.bundle import GENERATOR_FILE
    from gloss.edge.manifest import file_entries

    out = Path(shutil.copytree(tiny_bundle, out))
    (out / GENERATOR_FILE).parent.mkdir()
    (out / GENERATOR_FILE).write_bytes(b"GGUF not a real model")
    manifest = json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8"))
    manifest["generator"] = {"file": GENERATOR_FILE}
    manifest["files"] = file_entries(out)
    (out / MANIFEST_NAME).write_text(json.dumps(manifest), encoding="utf-8")
    return out


@pytest.mark.parametrize(
    "args, stdin, message",
    [
        (["--item", "B000NOTREAL"], None, "unknown item 'B000NOTREAL'"),
        (["--history", "-"], "\n \n", "empty history"),
        (["--history", "-"], "[]", "empty history"),
        (["--item", ""], None, "history item 1 is empty"),
    ],
)
def test_recommend_checks_the_history_before_loading_the_llm(
    bundle_with_generator: Path, monkeypatch: pytest.MonkeyPatch, args, stdin, message
):
    from gloss.edge.generation.generate import LlamaCppGenerator

    def must_not_load(*_args, **_kwargs):
        raise AssertionError("the LLM was loaded before the history was checked")

    monkeypatch.setattr(LlamaCppGenerator, "load", must_not_load)
    result = invoke("recommend", bundle_with_generator, *args, input=stdin)
    assert result.exit_code == 2, result.output
    assert message in error_line(result)


def test_recommend_loads_the_llm_once_the_history_is_valid(
    bundle_with_generator: Path, monkeypatch: pytest.MonkeyPatch, example
):
    """Control for the test above: the patched loader is the one `recommend` calls."""
    from gloss.edge.errors import InputError
    from gloss.edge.generation.generate import LlamaCppGenerator

    calls = []

    def fake_load(path, *_args, **_kwargs):
        calls.append(Path(path).name)
        raise InputError("fake loader reached")

    monkeypatch.setattr(LlamaCppGenerator, "load", fake_load)
    result = invoke("recommend", bundle_with_generator, "--item", example.history[-1])
    assert result.exit_code == 2 and "fake loader reached" in error_line(result)
    assert calls == ["model.gguf"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["-k", "0"], "Invalid value for '--k' / '-k': "),  # the rest is typer's wording, which varies
        (["-k", "1001"], "Invalid value for '--k' / '-k': "),
        (["-k", "many"], "Invalid value for '--k' / '-k': "),
        (["--no-such-flag"], "No such option: --no-such-flag"),
        (["--history"], "Option '--history' requires an argument."),
    ],
)
def test_option_errors_are_one_error_line(tiny_bundle: Path, args, message):
    result = invoke("recommend", tiny_bundle, "--last-item", "--item", "x", *args)
    assert result.exit_code == 2
    line = error_line(result)
    assert line.startswith(f"Error: {message}")
    assert line.endswith("See 'root recommend --help'.") or "--history" in args  # click gives that one no context
    assert "╭" not in result.output and "Usage:" not in result.output


def test_bundle_that_is_a_file_or_has_a_bad_manifest_is_one_error_line(tiny_bundle: Path, tmp_path: Path):
    result = invoke("recommend", CATALOG_PATH, "--last-item", "--item", "x")
    assert result.exit_code == 2 and "not a directory but a file" in error_line(result)
    result = invoke("recommend", tmp_path / "nope", "--last-item", "--item", "x")
    assert result.exit_code == 2 and "nope: no such folder; build a bundle" in error_line(result)
    broken = Path(shutil.copytree(tiny_bundle, tmp_path / "broken"))
    manifest = json.loads((broken / MANIFEST_NAME).read_text(encoding="utf-8"))
    manifest["files"]["catalog.jsonl.gz"] = "sha256:abc"
    (broken / MANIFEST_NAME).write_text(json.dumps(manifest), encoding="utf-8")
    result = invoke("recommend", broken, "--last-item", "--item", "x")
    assert result.exit_code == 2
    assert "files['catalog.jsonl.gz'] should be" in error_line(result)
    data = b'{"format_version": 1, "x": "\xe9"}'
    (broken / MANIFEST_NAME).write_bytes(data)
    result = invoke("recommend", broken, "--last-item", "--item", "x")
    assert result.exit_code == 2
    assert f"{MANIFEST_NAME}: not UTF-8 text: byte 0xe9 at byte offset {data.index(0xE9)}" in error_line(result)


@pytest.mark.parametrize(
    "option, data, line",
    [
        ("--queries", b'\n{"user": "\xe9", "history": ["a"], "target": "b", "queries": ["x"]}\n', 2),
        ("--sequences", b'{"user": "u1", "items": ["\x91a\x92"]}\n', 1),
    ],
)
def test_eval_names_the_byte_offset_of_non_utf8_input(tiny_bundle: Path, tmp_path: Path, option, data, line):
    path = tmp_path / "input.jsonl"
    path.write_bytes(data)
    offset = next(i for i, byte in enumerate(data) if byte >= 0x80)
    args = ["--source", "last-item"] if option == "--sequences" else []
    result = invoke("eval", tiny_bundle, *args, option, path)
    assert result.exit_code == 2
    assert f"{path}: not UTF-8 text: byte 0x{data[offset]:02x} at byte offset {offset} (line {line})" in (
        error_line(result))


@pytest.mark.parametrize(
    "args, message",
    [
        (["bundle", "--out-dir", "x"], "Missing option '--catalog'. See 'root bundle --help'."),
        (["fusion", "b", "--sequences", "s.jsonl", "--holdout", "5"], "Invalid value for '--holdout': "),
        (["quantize", "in.gguf", "-o", "out.gguf", "--method", "Q9"], "Invalid value for '--method': "),
    ],
)
def test_gloss_export_option_errors_are_one_error_line_too(args, message):
    from gloss.export.cli import app as export_app

    result = runner.invoke(export_app, args)
    assert result.exit_code == 2
    assert error_line(result).startswith(f"Error: {message}")
    assert "╭" not in result.output


def test_a_bare_command_still_prints_its_help():
    result = invoke()
    assert "recommend" in result.output and "Error:" not in result.output


@pytest.mark.parametrize(
    "args, llm_weight, loads_llm",
    [
        ([], 0.0, False),  # fusion gives the beams no weight: the LLM is not worth its seconds
        (["--llm"], 0.0, True),
        ([], 1.0, True),
        (["--no-fusion"], 0.0, True),  # the paper's rule needs the beams
        (["--no-llm"], 1.0, False),
    ],
)
def test_recommend_runs_the_llm_only_when_it_can_change_the_ranking(
    fusion_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, example, args, llm_weight, loads_llm
):
    from gloss.edge.errors import InputError
    from gloss.edge.fusion import FusionConfig
    from gloss.edge.generation.generate import LlamaCppGenerator

    bundle = with_fake_generator(fusion_bundle, tmp_path / "llm-fusion")
    monkeypatch.setattr(FusionConfig, "uses_llm", property(lambda self: llm_weight > 0))

    def fake_load(*_args, **_kwargs):
        raise InputError("fake loader reached")

    monkeypatch.setattr(LlamaCppGenerator, "load", fake_load)
    result = invoke("recommend", bundle, "--item", example.history[-1], *args)
    if loads_llm:
        assert result.exit_code == 2 and "fake loader reached" in error_line(result)
    else:
        assert result.exit_code == 0, result.output
        assert "query:" not in result.output


def test_recommend_without_a_generator_falls_back_to_last_item_search(tiny_bundle: Path, example):
    auto = invoke("recommend", tiny_bundle, "--item", example.history[-1], "--json")
    last_item = invoke("recommend", tiny_bundle, "--last-item", "--item", example.history[-1], "--json")
    assert auto.exit_code == 0 and json.loads(auto.stdout) == json.loads(last_item.stdout)


def test_recommend_refuses_last_item_with_llm(tiny_bundle: Path, example):
    result = invoke("recommend", tiny_bundle, "--last-item", "--llm", "--item", example.history[-1])
    assert result.exit_code == 2 and "not with --llm" in error_line(result)


@pytest.mark.parametrize("query_weight, beam_weight, expected", [(0, 0, False), (0.5, 0, True), (0, 0.1, True)])
def test_fusion_config_uses_llm_when_a_beam_signal_has_weight(query_weight, beam_weight, expected):
    from gloss.edge.fusion import FusionConfig

    assert FusionConfig(query_weight=query_weight, beam_weight=beam_weight).uses_llm is expected


def test_eval_exact_searches_every_item_of_an_hnsw_bundle(embedder_dir: Path, tmp_path: Path, monkeypatch):
    """`eval --exact` ranks as a bundle built for exact search; without it the graph's candidates are used."""
    import gloss.edge.index as index_module
    from gloss.export.bundle import build_bundle

    exact_dir = build_bundle(CATALOG_PATH, tmp_path / "exact", embedder_dir=embedder_dir, index_kind="exact")
    hnsw_dir = build_bundle(CATALOG_PATH, tmp_path / "hnsw", embedder_dir=embedder_dir, index_kind="hnsw")

    def poor_graph(graph, queries, count, config, to_positions):  # a graph that only ever finds the first rows
        return np.tile(np.arange(count, dtype=np.int64), (len(queries), 1))

    monkeypatch.setattr(index_module, "graph_candidates", poor_graph)

    def ranks(bundle_dir: Path, *extra: str) -> list:
        details = tmp_path / f"{bundle_dir.name}{''.join(extra)}.jsonl"
        result = invoke("eval", bundle_dir, "--source", "last-item", "--sequences", SEQUENCES_PATH,
                        "--exclude-seen", "--details", details, *extra)
        assert result.exit_code == 0, result.output
        return [(row["user"], row["rank"]) for row in read_jsonl(details)]

    reference = ranks(exact_dir)
    assert ranks(hnsw_dir, "--exact") == reference
    assert ranks(hnsw_dir) != reference

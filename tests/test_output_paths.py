"""Every --out / --out-dir that cannot be created is one `Error:` line and exit 2, never a traceback (issue 17,
defect 6): a path below a file, or a folder nothing may write in. `gloss-train prepare` and `fit` are checked in
tests/train; gguf, quantize, merge and embedder write through the same gloss.edge.files / outdir helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gloss.edge.cli import app as edge_app
from gloss.export.cli import app as export_app
from tests.conftest import CATALOG_PATH, SEQUENCES_PATH
from tests.fakes import error_line

EVAL = ["eval", "{bundle}", "--source", "last-item", "--sequences", str(SEQUENCES_PATH)]
CASES = [
    (edge_app, [*EVAL, "--out", "{bad}/report.json"]),
    (edge_app, [*EVAL, "--details", "{bad}/details.jsonl"]),
    (edge_app, [*EVAL, "--save-queries", "{bad}/queries.jsonl"]),
    (export_app, ["bundle", "--catalog", str(CATALOG_PATH), "--embedder-dir", "{embedder}", "--out-dir", "{bad}/b"]),
]


@pytest.mark.parametrize(("app", "args"), CASES, ids=["eval-out", "eval-details", "eval-save-queries", "bundle"])
def test_an_output_path_below_a_file_is_one_error_line(tiny_bundle: Path, embedder_dir: Path, tmp_path: Path,
                                                       app, args):
    afile = tmp_path / "afile"
    afile.write_text("a file, not a folder")
    values = {"bundle": tiny_bundle, "embedder": embedder_dir, "bad": afile / "sub"}
    result = CliRunner().invoke(app, [arg.format(**values) for arg in args])
    assert result.exit_code == 2, result.output
    assert str(afile) in error_line(result) and "Traceback" not in result.output
    assert afile.read_text() == "a file, not a folder"


def test_eval_checks_its_output_paths_before_loading_the_bundle(tiny_bundle: Path, tmp_path: Path, monkeypatch):
    import gloss.edge.bundle

    def no_load(*args, **kwargs):
        raise AssertionError("the bundle was loaded before the output path was checked")

    monkeypatch.setattr(gloss.edge.bundle, "load_bundle", no_load)
    afile = tmp_path / "afile"
    afile.write_text("x")
    args = [arg.format(bundle=tiny_bundle) for arg in EVAL]
    result = CliRunner().invoke(edge_app, [*args, "--out", str(afile / "sub" / "r.json")])
    assert result.exit_code == 2 and str(afile) in error_line(result)

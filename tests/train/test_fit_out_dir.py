"""`gloss-train fit --out-dir` that cannot be created is one `Error:` line, before the model is loaded (issue 17)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gloss.train.cli import app
from tests.fakes import error_line


def test_fit_into_a_path_below_a_file_is_one_error_line_before_loading(prepared_dir: Path, tiny_llama_dir: Path,
                                                                       tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch):
    from gloss.train import loop

    def load_base_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the output folder was checked")

    monkeypatch.setattr(loop, "load_base_model", load_base_model)
    afile = tmp_path / "afile"
    afile.write_text("a file, not a folder")
    result = CliRunner().invoke(app, ["fit", "--data-dir", str(prepared_dir), "--out-dir", str(afile / "run"),
                                      "--base-model", str(tiny_llama_dir), "--quant", "none", "--max-steps", "1"])
    assert result.exit_code == 2, result.output
    assert str(afile) in error_line(result) and "Traceback" not in result.output

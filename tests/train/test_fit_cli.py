"""`gloss-train fit` bad input: one `Error:` line and exit code 2, before any training step."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from gloss.train.cli import app
from tests.fakes import error_line


@pytest.mark.parametrize(
    ("flags", "yaml_text", "message"),
    [
        (["--max-minutes", "0"], None, "--max-minutes must be > 0 (or unset), got 0.0"),
        (["--max-minutes", "-5"], None, "--max-minutes must be > 0 (or unset), got -5.0"),
        (["--quant", "int3"], None, "'int3' is not one of 'nf4', 'none'"),
        ([], "quant: int3\n", "--quant must be one of nf4, none, got 'int3'"),
        (["--quant", "nf4", "--no-load-in-4bit"], None, "--quant nf4 contradicts load_in_4bit=False"),
        (["--objective", "every"], None, "'every' is not one of 'last', 'all', 'dense'"),
        ([], "objective: every\n", "--objective must be one of last, all, dense, got 'every'"),
        (["--objective", "dense", "--max-seq-length", "64"], None,
         "all 20 training texts exceed --max-seq-length 64 even with only their last history item"),
        (["--max-seq-length", "64"], None, "all 20 training texts exceed --max-seq-length 64"),
        (["--init-adapter", "no-such-adapter"], None, "--adapter no-such-adapter: no such folder"),
        ([], "max_minutes: 5\npackng: true\n", "unknown key(s) packng"),
        (["--pack-length", "64"], None, "--pack-length 64 is shorter than the longest example"),
    ],
)
def test_fit_rejects_bad_input_with_one_error_line(prepared_dir, tiny_llama_dir, tmp_path, flags, yaml_text,
                                                   message):
    base = ["fit", "--data-dir", str(prepared_dir), "--out-dir", str(tmp_path / "run"),
            "--base-model", str(tiny_llama_dir), "--quant", "none"]
    if flags[:1] == ["--quant"] or "--no-load-in-4bit" in flags:
        base = base[:-2]
    if yaml_text is not None:
        (tmp_path / "run.yaml").write_text(yaml_text)
        base = [*base[:-2], "--config", str(tmp_path / "run.yaml")]
    result = CliRunner().invoke(app, [*base, *flags])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output  # other lines: INFO logs
    assert message in errors[0]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_fit_dense_where_every_history_has_one_item_is_one_error_line(one_item_histories_dir, tiny_llama_dir,
                                                                      tmp_path):
    result = CliRunner().invoke(app, ["fit", "--data-dir", str(one_item_histories_dir), "--out-dir",
                                      str(tmp_path / "run"), "--base-model", str(tiny_llama_dir), "--quant", "none",
                                      "--objective", "dense"])
    assert result.exit_code == 2, result.output
    assert "--objective dense: none of the 7 training texts has a history title to supervise" in error_line(result)
    assert "Traceback" not in result.output and not (tmp_path / "run" / "checkpoints").exists()

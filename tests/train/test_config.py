"""gloss.train.config: defaults = paper recipe, precedence flag > YAML > default, errors name the flag."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gloss.edge.errors import InputError
from gloss.train.cli import app
from gloss.train.config import ALL_LINEAR, TrainConfig, load_config
from tests.fakes import error_line


def test_defaults_are_the_paper_recipe():
    config = TrainConfig(data_dir=Path("d"))
    assert (config.lora_r, config.lora_alpha, config.learning_rate) == (16, 16, 1e-4)
    assert (config.per_device_batch_size, config.grad_accum, config.warmup_steps) == (4, 4, 300)
    assert (config.weight_decay, config.epochs, config.early_stopping_patience) == (0.01, 10, 3)
    assert config.max_seq_length == 1024 and config.load_in_4bit and config.target_modules == ALL_LINEAR


def test_cli_flag_beats_yaml_beats_default(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "data_dir: data\nlora_r: 8\nlearning_rate: 2e-4\nepochs: 3\ntarget_modules: [q_proj, v_proj]\n"
        "resume: ckpt/checkpoint-10\n"
    )
    config = load_config(path, {"lora_r": 32, "epochs": None})
    assert config.lora_r == 32  # flag
    assert config.learning_rate == 2e-4 and config.epochs == 3  # YAML ("2e-4" is a string to PyYAML)
    assert config.target_modules == ("q_proj", "v_proj") and config.resume == Path("ckpt/checkpoint-10")
    assert config.lora_alpha == 16 and config.data_dir == Path("data")  # default / YAML path


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"lora_r": 0}, "--lora-r must be > 0, got 0"),
        ({"lora_dropout": 1.0}, "--lora-dropout must be in [0, 1), got 1.0"),
        ({"max_steps": 0}, "--max-steps must be > 0 (or unset), got 0"),
        ({"learning_rate": -1.0}, "--learning-rate must be > 0, got -1.0"),
        ({"max_seq_length": 16}, "--max-seq-length must be >= 64"),
    ],
)
def test_config_rejects_bad_values_naming_the_flag(values, message):
    with pytest.raises(InputError) as info:
        TrainConfig(data_dir=Path("d"), **values)
    assert message in str(info.value)


def test_yaml_wrong_type_is_an_input_error(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data_dir: d\nlora_r: eight\n")
    with pytest.raises(InputError, match="lora_r: cannot use 'eight'"):
        load_config(path)


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("data_dir: d\nlora_rank: 8\nbatch: 2\n", "unknown key(s) batch, lora_rank"),
        ("lora_r: 8\n", "data_dir is not set"),
        ("- a\n- b\n", "expected a mapping of TrainConfig fields"),
        ("data_dir: d\nlora_r: [\n", "not valid YAML"),
    ],
)
def test_fit_cli_rejects_bad_yaml(tmp_path, yaml_text, message):
    path = tmp_path / "run.yaml"
    path.write_text(yaml_text)
    result = CliRunner().invoke(app, ["fit", "--config", str(path)])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_fit_cli_rejects_unprepared_data_dir(tmp_path):
    result = CliRunner().invoke(app, ["fit", "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "no gloss_manifest.json; pass the out dir of a finished `gloss-train prepare` run" in result.output


def test_help_lists_the_commands():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert all(name in result.output for name in ("prepare", "fit", "generate"))


# --- hardening (issue 11): a config file's bytes and syntax errors are one `Error:` line, exit 2 ---


@pytest.mark.parametrize(
    "data",
    [b"data_dir: d\nlora_r: 8  # r\xe9duit\n", b"\xff\xfed\x00a\x00", b"data_dir: d\nbase_model: \xc3\n"],
)
def test_fit_names_the_byte_offset_of_a_non_utf8_config(tmp_path, data):
    path = tmp_path / "run.yaml"
    path.write_bytes(data)
    offset = next(i for i, byte in enumerate(data) if byte >= 0x80)
    line = data[:offset].count(b"\n") + 1
    result = CliRunner().invoke(app, ["fit", "--config", str(path)])
    assert result.exit_code == 2, result.output
    assert error_line(result.output) == (
        f"Error: {path}: not UTF-8 text: byte 0x{data[offset]:02x} at byte offset {offset} "
        f"(line {line}); save the file as UTF-8"
    )


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("data_dir: d\nlora_r: [\n", "not valid YAML (line 3, column 1: "),
        ("data_dir: d\n  lora_r: 8\n", "not valid YAML (line 2, column 9: "),
        ("data_dir: d\n\tlora_r: 8\n", "not valid YAML (line 2, column 1: "),
    ],
)
def test_fit_yaml_syntax_error_is_one_line_with_its_position(tmp_path, yaml_text, message):
    path = tmp_path / "run.yaml"
    path.write_text(yaml_text, encoding="utf-8")
    result = CliRunner().invoke(app, ["fit", "--config", str(path)])
    assert result.exit_code == 2, result.output
    assert f"{path}: {message}" in error_line(result.output)


def test_fit_config_that_is_a_directory(tmp_path):
    result = CliRunner().invoke(app, ["fit", "--config", str(tmp_path)])
    assert result.exit_code == 2
    assert error_line(result.output) == f"Error: {tmp_path}: is a directory; expected a config file"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fit", "--lora-r", "abc"], "Invalid value for '--lora-r': "),
        (["fit", "--no-such"], "No such option: --no-such"),
        (["generate", "run", "--out", "q.jsonl", "--num-beams", "0"], "Invalid value for '--num-beams': "),
        (["generate", "run"], "Missing option '--out'."),
    ],
)
def test_option_errors_are_one_error_line(args, message):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert error_line(result.output).startswith(f"Error: {message}")
    assert "╭" not in result.output


@pytest.mark.parametrize(
    ("values", "quant", "load_in_4bit"),
    [({}, "nf4", True), ({"quant": "none"}, "none", False), ({"load_in_4bit": False}, "none", False),
     ({"quant": "nf4", "load_in_4bit": True}, "nf4", True)],
)
def test_quant_and_its_legacy_alias_resolve_together(values, quant, load_in_4bit):
    config = TrainConfig(data_dir=Path("d"), **values)
    assert (config.quant, config.load_in_4bit) == (quant, load_in_4bit)


def test_new_defaults_are_packing_and_chunked_loss_without_a_time_box():
    config = TrainConfig(data_dir=Path("d"), max_seq_length=512)
    assert config.packing and config.chunked_loss and config.resolved_pack_length == 512
    assert config.max_minutes is None and config.objective == "last"

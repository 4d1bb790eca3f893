"""quantize_gguf: llama.cpp quantizes our f16 GGUF to the requested type; failures are reported."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")

from typer.testing import CliRunner  # noqa: E402

from gloss.edge.errors import GlossError, InputError  # noqa: E402
from gloss.export.cli import app  # noqa: E402
from gloss.export.gguf import check_gguf, write_gguf  # noqa: E402
from gloss.export.quantize import quantize_gguf  # noqa: E402


@pytest.fixture(scope="module")
def f16_gguf(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gguf(tiny_llama_dir, tmp_path_factory.mktemp("quantize") / "tiny-f16.gguf", "f16")


@pytest.mark.parametrize("method", ["Q8_0", "Q4_0", "IQ4_NL"])
def test_quantize_sets_file_type_and_shrinks(f16_gguf: Path, tmp_path: Path, method: str) -> None:
    out = quantize_gguf(f16_gguf, tmp_path / f"tiny-{method}.gguf", method, num_threads=2)
    meta = check_gguf(out)
    assert meta["general.file_type"] == getattr(gguf.LlamaFileType, f"MOSTLY_{method}")
    assert meta["tokenizer.ggml.pre"] == check_gguf(f16_gguf)["tokenizer.ggml.pre"]
    assert out.stat().st_size < f16_gguf.stat().st_size
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temp file left behind


def test_quantize_cli_writes_file(f16_gguf: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.gguf"
    result = CliRunner().invoke(app, ["quantize", str(f16_gguf), "--out", str(out), "--method", "Q8_0"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    assert check_gguf(out)["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0


def test_quantize_reports_llama_cpp_failure(f16_gguf: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    data = f16_gguf.read_bytes()
    broken.write_bytes(data[: len(data) // 2])  # header intact, tensor data cut short
    out = tmp_path / "q.gguf"
    with pytest.raises(GlossError, match="llama.cpp failed to quantize .* to Q8_0"):
        quantize_gguf(broken, out, "Q8_0", num_threads=1)
    assert not out.exists()
    result = CliRunner().invoke(app, ["quantize", str(broken), "--out", str(out)])
    assert result.exit_code == 1
    assert "llama.cpp failed to quantize" in result.output


def test_quantize_rejects_bad_input(f16_gguf: Path, tmp_path: Path) -> None:
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_text("hello")
    with pytest.raises(InputError, match="not a GGUF file"):
        quantize_gguf(not_gguf, tmp_path / "q.gguf")
    with pytest.raises(InputError, match="--method must be one of"):
        quantize_gguf(f16_gguf, tmp_path / "q.gguf", "Q3_X")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="is the input file"):
        quantize_gguf(f16_gguf, f16_gguf)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "Q3_X"], "Invalid value for '--method'"),
        (["--num-threads", "0"], "Invalid value for '--num-threads'"),
    ],
)
def test_quantize_cli_bad_options(f16_gguf: Path, tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["quantize", str(f16_gguf), "--out", str(tmp_path / "q.gguf"), *args])
    assert result.exit_code == 2
    assert message in result.output


def test_quantize_cli_missing_input(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["quantize", str(tmp_path / "none.gguf"), "--out", str(tmp_path / "q.gguf")]
    )
    assert result.exit_code == 2
    assert "no such file; write a GGUF" in result.output

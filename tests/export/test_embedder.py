"""export_embedder: ONNX embeddings match torch (transformers + mean pooling) on real Beauty titles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gloss.edge.catalog import load_catalog
from gloss.edge.embed import CONFIG_NAME, EMBEDDER_FILES, OnnxEmbedder
from gloss.edge.errors import InputError
from gloss.edge.prompt import render_item
from gloss.export.cli import app
from gloss.export.embedder import export_embedder
from tests.conftest import FIXTURES

TITLES = [render_item(t) for t in load_catalog(FIXTURES / "beauty_items.jsonl").titles[:50]]
INT8_MIN_COSINE = 0.98  # per-channel int8 vs fp32 all-MiniLM-L6-v2 (gloss.export.embedder.quantize_int8)


def torch_embed(model_dir: Path, texts: list[str], max_length: int) -> np.ndarray:
    """Reference: transformers encoder, mean over the attention mask, L2 norm (sentence-transformers)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=1).numpy()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer BertModel with a WordPiece vocabulary made of the fixture titles' words."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out = tmp_path_factory.mktemp("tiny-bert")
    words = sorted({w for t in TITLES for w in t.lower().replace(",", " ").split() if w.isalpha()})
    (out / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(out / "vocab.txt"))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    BertModel(config).eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_tiny_bert_export_matches_torch(tiny_bert_dir: Path, tmp_path: Path) -> None:
    out = export_embedder(tmp_path / "embedder", model=tiny_bert_dir)
    assert sorted(p.name for p in out.iterdir()) == sorted(EMBEDDER_FILES)
    assert [p.name for p in tmp_path.iterdir()] == ["embedder"]  # no temp folder left beside it
    config = json.loads((out / CONFIG_NAME).read_text())
    assert (
        config["dim"] == 32 and config["max_length"] == 64 and config["int8"] is False
    )  # capped at positions
    got = OnnxEmbedder.load(out).embed(TITLES, batch_size=16)
    want = torch_embed(tiny_bert_dir, TITLES, max_length=64)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert cosines(got, want).min() > 0.9999


def test_export_refuses_to_replace_a_foreign_folder(tiny_bert_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not written by gloss"):
        export_embedder(tmp_path, model=tiny_bert_dir)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "/no/such/model"], "no such folder"),
        (["--max-length", "1"], "Invalid value for '--max-length'"),
    ],
)
def test_cli_embedder_rejects_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["embedder", "--out-dir", str(tmp_path / "e"), *args])
    assert result.exit_code == 2
    assert message in result.stderr
    assert not (tmp_path / "e").exists()


def test_cli_embedder_error_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["embedder", "--out-dir", str(tmp_path / "e"), "--model", "/no/such/model"]
    )
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert errors == ["Error: --model /no/such/model: no such folder; give a local model folder or a hub id"]


@pytest.fixture(scope="module")
def minilm_exports(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("minilm-onnx")
    return {
        "fp32": export_embedder(root / "fp32", model=minilm_dir),
        "int8": export_embedder(root / "int8", model=minilm_dir, int8=True),
    }


@pytest.mark.slow
def test_minilm_onnx_matches_torch(minilm_dir: Path, minilm_exports: dict[str, Path]) -> None:
    st_max_length = json.loads((minilm_dir / "sentence_bert_config.json").read_text())["max_seq_length"]
    config = json.loads((minilm_exports["fp32"] / CONFIG_NAME).read_text())
    assert config["max_length"] == st_max_length and config["pooling"] == "mean" and config["normalize"]
    want = torch_embed(minilm_dir, TITLES, max_length=st_max_length)
    fp32 = OnnxEmbedder.load(minilm_exports["fp32"]).embed(TITLES)
    assert cosines(fp32, want).min() > 0.9999
    np.testing.assert_allclose(fp32, want, atol=1e-4)
    int8 = OnnxEmbedder.load(minilm_exports["int8"]).embed(TITLES)
    assert json.loads((minilm_exports["int8"] / CONFIG_NAME).read_text())["int8"] is True
    assert cosines(int8, want).min() > 0.98
    # The bundle's default embedder is int8: its vectors must stay close to the fp32 export's (the bound
    # benchmarks/footprint.py checks on all Beauty titles, where Recall@5 and NDCG@5 did not change).
    assert cosines(int8, fp32).min() > INT8_MIN_COSINE
    size = {name: (path / "model.onnx").stat().st_size for name, path in minilm_exports.items()}
    assert size["int8"] < size["fp32"] / 3

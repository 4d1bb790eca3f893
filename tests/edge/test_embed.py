"""OnnxEmbedder against a numpy reference, on a tiny ONNX encoder built in-test (no torch needed)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from gloss.edge.embed import CONFIG_NAME, MODEL_NAME, TOKENIZER_NAME, Embedder, OnnxEmbedder
from gloss.edge.errors import InputError
from tests.fakes import TEXTS, TINY_DIM, TINY_MAX_LENGTH, tiny_vocab, write_tiny_embedder  # noqa: F401


def reference_embed(model_dir: Path, texts: Sequence[str]) -> np.ndarray:
    """numpy reference, one text at a time: table lookup, tanh, mean over tokens, L2 norm."""
    import onnx
    from onnx import numpy_helper
    from tokenizers import Tokenizer

    table = numpy_helper.to_array(onnx.load(str(model_dir / MODEL_NAME)).graph.initializer[0])
    tokenizer = Tokenizer.from_file(str(model_dir / TOKENIZER_NAME))
    tokenizer.enable_truncation(TINY_MAX_LENGTH)
    rows = []
    for text in texts:
        vec = np.tanh(table[tokenizer.encode(text).ids]).mean(axis=0)
        rows.append(vec / np.linalg.norm(vec))
    return np.array(rows, dtype=np.float32)


@pytest.fixture(scope="module")
def tiny_embedder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_embedder(tmp_path_factory.mktemp("tiny-embedder"))


def test_embed_matches_numpy_reference_in_input_order(tiny_embedder_dir: Path) -> None:
    embedder = OnnxEmbedder.load(tiny_embedder_dir, num_threads=1)
    got = embedder.embed(TEXTS, batch_size=2)  # several padded batches, sorted by length internally
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), TINY_DIM)
    np.testing.assert_allclose(got, reference_embed(tiny_embedder_dir, TEXTS), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_int8_embedder_stays_within_its_rounding_bound(tiny_embedder_dir: Path, tmp_path: Path) -> None:
    """The runtime runs a dynamically quantized (int8) model; its vectors differ from fp32 by the rounding only.

    Per-channel int8 rounds each table entry by at most half a step (max |column| / 127 / 2); tanh and the
    mean keep that bound per component, and L2-normalising at most doubles it relative to the vector's norm.
    """
    import onnx
    from onnx import numpy_helper

    from gloss.export.embedder import quantize_int8

    int8_dir = tmp_path / "int8"
    int8_dir.mkdir()
    for name in (TOKENIZER_NAME, CONFIG_NAME):
        (int8_dir / name).write_bytes((tiny_embedder_dir / name).read_bytes())
    quantize_int8(tiny_embedder_dir / MODEL_NAME, int8_dir / MODEL_NAME)
    assert (int8_dir / MODEL_NAME).stat().st_size < (tiny_embedder_dir / MODEL_NAME).stat().st_size
    got = OnnxEmbedder.load(int8_dir).embed(TEXTS)
    want = reference_embed(tiny_embedder_dir, TEXTS)
    table = numpy_helper.to_array(onnx.load(str(tiny_embedder_dir / MODEL_NAME)).graph.initializer[0])
    step = np.abs(table).max() / 127  # the coarsest channel's step bounds every channel's
    pooled_norm = np.array([np.linalg.norm(np.tanh(table[ids]).mean(axis=0)) for ids in _token_ids(tiny_embedder_dir)])
    bound = 2 * np.sqrt(TINY_DIM) * (step / 2) / pooled_norm
    assert (np.linalg.norm(got - want, axis=1) <= bound + 1e-6).all()
    assert not np.allclose(got, want, atol=1e-7)  # the weights really are rounded


def _token_ids(model_dir: Path) -> list[list[int]]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / TOKENIZER_NAME))
    tokenizer.enable_truncation(TINY_MAX_LENGTH)
    return [tokenizer.encode(text).ids for text in TEXTS]


def test_embed_is_independent_of_batch_size(tiny_embedder_dir: Path) -> None:
    embedder = OnnxEmbedder.load(tiny_embedder_dir)
    np.testing.assert_allclose(
        embedder.embed(TEXTS, batch_size=1), embedder.embed(TEXTS, batch_size=64), atol=1e-6
    )


def test_embed_truncates_to_max_length(tiny_embedder_dir: Path) -> None:
    embedder = OnnxEmbedder.load(tiny_embedder_dir)
    words = TEXTS[3].split()
    long_text = " ".join(words * 3)
    cut = " ".join((words * 3)[: TINY_MAX_LENGTH - 2])  # [CLS] + 10 words + [SEP]
    np.testing.assert_allclose(embedder.embed([long_text]), embedder.embed([cut]), atol=1e-6)


def test_embed_empty_list_and_protocol(tiny_embedder_dir: Path) -> None:
    embedder = OnnxEmbedder.load(tiny_embedder_dir)
    assert isinstance(embedder, Embedder)
    assert embedder.dim == TINY_DIM
    assert embedder.embed([]).shape == (0, TINY_DIM)


@pytest.mark.parametrize(
    ("texts", "batch_size", "message"),
    [
        ("a string", 8, "single string"),
        (["ok", 3], 8, "text 1: expected a string"),
        (["ok"], 0, "batch_size"),
    ],
)
def test_embed_rejects_bad_input(
    tiny_embedder_dir: Path, texts: object, batch_size: int, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        OnnxEmbedder.load(tiny_embedder_dir).embed(texts, batch_size=batch_size)  # type: ignore[arg-type]


def _break(folder: Path, case: str) -> str:
    if case == "no-folder":
        return str(folder / "missing")
    if case == "no-model":
        (folder / MODEL_NAME).unlink()
        return MODEL_NAME
    if case == "corrupt-model":
        (folder / MODEL_NAME).write_bytes(b"not an onnx file")
        return "cannot load the ONNX model"
    if case == "corrupt-config":
        (folder / CONFIG_NAME).write_text("{", encoding="utf-8")
        return "not a readable JSON"
    if case == "config-missing-key":
        (folder / CONFIG_NAME).write_text(json.dumps({"dim": TINY_DIM}), encoding="utf-8")
        return "missing keys"
    if case == "wrong-dim":
        config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
        (folder / CONFIG_NAME).write_text(json.dumps({**config, "dim": TINY_DIM + 1}), encoding="utf-8")
        return "output width"
    (folder / TOKENIZER_NAME).write_text("{}", encoding="utf-8")
    return "not a valid tokenizer"


@pytest.mark.parametrize(
    "case",
    [
        "no-folder",
        "no-model",
        "corrupt-model",
        "corrupt-config",
        "config-missing-key",
        "wrong-dim",
        "tokenizer",
    ],
)
def test_load_rejects_broken_folder(tmp_path: Path, case: str) -> None:
    folder = write_tiny_embedder(tmp_path / "embedder")
    message = _break(folder, case)
    with pytest.raises(InputError, match=message):
        OnnxEmbedder.load(folder / "missing" if case == "no-folder" else folder)


def test_streamed_embedding_equals_one_call(tiny_embedder_dir: Path) -> None:
    """embed_stream tokenises a chunk at a time; one chunk is exactly one embed() call, smaller ones agree."""
    embedder = OnnxEmbedder.load(tiny_embedder_dir, num_threads=1)
    texts = TEXTS * 7
    one_call = embedder.embed(texts, batch_size=4)
    whole = np.vstack(list(embedder.embed_stream(iter(texts), batch_size=4, chunk_size=len(texts))))
    np.testing.assert_array_equal(whole, one_call)
    chunks = list(embedder.embed_stream((t for t in texts), batch_size=4, chunk_size=5))
    assert [len(c) for c in chunks] == [5] * 8 + [2]
    np.testing.assert_allclose(np.vstack(chunks), one_call, atol=1e-6)
    with pytest.raises(InputError, match="chunk_size must be >= 1"):
        next(embedder.embed_stream(texts, chunk_size=0))


def test_device_auto_falls_back_to_the_cpu_and_cuda_needs_the_provider(tiny_embedder_dir: Path) -> None:
    import onnxruntime as ort

    assert OnnxEmbedder.load(tiny_embedder_dir).provider == "CPUExecutionProvider"
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    assert OnnxEmbedder.load(tiny_embedder_dir, device="auto").provider == "CPUExecutionProvider"
    with pytest.raises(InputError, match="--device cuda: onnxruntime has no CUDAExecutionProvider"):
        OnnxEmbedder.load(tiny_embedder_dir, device="cuda")
    with pytest.raises(InputError, match="--device must be one of"):
        OnnxEmbedder.load(tiny_embedder_dir, device="tpu")

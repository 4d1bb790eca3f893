"""A stand-in embedder for the memory-only rows of benchmarks/scale.py (10M titles at ~900/s would take 3 h).

It keeps what decides a build's memory: the real export's tokenizer (same tokens per title), its width (384
floats per item) and its output name; the transformer is replaced by one lookup in a seeded random table
(``tanh(E[input_ids])``, mean-pooled and normalised by the runtime as usual). Its vectors are meaningless, so a
bundle built with it says nothing about quality or search results, only about memory and the other stages.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from gloss.edge.embed import CONFIG_NAME, MODEL_NAME, OUTPUT_NAME, TOKENIZER_NAME


def write_stub_embedder(out_dir: Path, real_dir: Path, env: dict[str, str], seed: int = 0) -> Path:
    """Write the stand-in at ``out_dir`` from the real default export at ``real_dir`` (exported if missing)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from tokenizers import Tokenizer

    if not (real_dir / CONFIG_NAME).is_file():
        subprocess.run([sys.executable, "-m", "gloss.export.cli", "embedder", "--int8", "--out-dir", str(real_dir)],
                       check=True, env=env)
    config = json.loads((real_dir / CONFIG_NAME).read_text())
    vocab = Tokenizer.from_file(str(real_dir / TOKENIZER_NAME)).get_vocab_size()
    table = np.random.default_rng(seed).standard_normal((vocab, config["dim"])).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["gathered"], axis=0),
         helper.make_node("Tanh", ["gathered"], [OUTPUT_NAME])],
        "stub-encoder",
        inputs=[helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
                helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        outputs=[helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", "seq", config["dim"]])],
        initializer=[numpy_helper.from_array(table, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_dir / MODEL_NAME))
    shutil.copyfile(real_dir / TOKENIZER_NAME, out_dir / TOKENIZER_NAME)
    stub = {**config, "source": f"stub embedder (lookup table, tokenizer of {config.get('source')})", "int8": False}
    (out_dir / CONFIG_NAME).write_text(json.dumps(stub))
    return out_dir

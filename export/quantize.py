"""Quantize a GGUF file with llama.cpp (through llama-cpp-python's ctypes binding)."""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from gloss.edge.errors import GlossError, InputError, require
from gloss.edge.files import atomic_path
from gloss.export.gguf import check_gguf

logger = logging.getLogger(__name__)

QuantMethod = Literal["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "IQ4_NL", "F16"]
# Method name -> llama_cpp constant (llama_ftype). Q8_0 keeps ~97% top-1 agreement on SmolLM2 (MODELS.md).
FTYPES: dict[str, str] = {
    "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "Q6_K": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "Q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "IQ4_NL": "LLAMA_FTYPE_MOSTLY_IQ4_NL",
    "F16": "LLAMA_FTYPE_MOSTLY_F16",
}


@contextmanager
def _quiet_llama_cpp() -> Iterator[None]:
    """Show llama.cpp's per-tensor log only at -v (llama-cpp-python prints it unless its logger is > INFO)."""
    llama_logger = logging.getLogger("llama-cpp-python")  # the logger llama_cpp._logger's callback consults
    previous = llama_logger.level
    llama_logger.setLevel(logging.DEBUG if logger.isEnabledFor(logging.DEBUG) else logging.ERROR)
    try:
        yield
    finally:
        llama_logger.setLevel(previous)


def quantize_gguf(
    in_path: Path, out_path: Path, method: QuantMethod = "Q8_0", num_threads: int | None = None
) -> Path:
    """Quantize an f32/f16 LLaMA GGUF file (the output of :func:`write_gguf`) with llama.cpp.

    Args:
        in_path: Input ``.gguf`` (f32 or f16).
        out_path: Output ``.gguf``, written atomically (temp file + rename).
        method: llama.cpp quantization type.
        num_threads: Threads for llama.cpp; ``None`` uses all cores.

    Returns:
        ``out_path``.

    Raises:
        InputError: If the input is not a LLaMA GGUF, the method is unknown, or in and out are the same file.
        GlossError: If llama.cpp reports a failure.
    """
    llama_cpp = require("llama_cpp", "edge")
    in_path, out_path = Path(in_path), Path(out_path)
    if method not in FTYPES:
        raise InputError(f"--method must be one of {', '.join(FTYPES)}, got {method!r}")
    if num_threads is not None and num_threads < 1:
        raise InputError(f"--num-threads must be >= 1, got {num_threads}")
    check_gguf(in_path)
    if out_path.exists() and out_path.resolve() == in_path.resolve():
        raise InputError(f"--out {out_path} is the input file; pass another output path")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, FTYPES[method])
    params.nthread = num_threads or os.cpu_count() or 1
    with atomic_path(out_path) as tmp, _quiet_llama_cpp():
        code = llama_cpp.llama_model_quantize(str(in_path).encode(), str(tmp).encode(), ctypes.byref(params))
        if code != 0:
            raise GlossError(
                f"llama.cpp failed to quantize {in_path} to {method} (code {code}); pass an intact f16/f32 "
                "GGUF from gloss-export gguf (requantizing is refused); rerun with -v to see llama.cpp's log"
            )
    logger.info("quantized %s -> %s (%s)", in_path, out_path, method)
    return out_path

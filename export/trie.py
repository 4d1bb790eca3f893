"""Build the catalogue's token trie at bundle time, with the generator's own tokenizer.

The bundle's generator runs in llama.cpp, so its trie is tokenised by llama.cpp from the generator GGUF
(vocabulary only, no weights); ``gloss-train generate --constrained`` builds the same trie with the
transformers tokenizer (:func:`build_trie_hf`). A test checks that both give the same trie.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gloss.edge.errors import InputError, require
from gloss.edge.generation.generate import vocab_texts
from gloss.edge.generation.gguf_header import check_gguf
from gloss.edge.trie import TokenTrie, build_trie, vocab_fingerprint

logger = logging.getLogger(__name__)


@contextmanager
def gguf_vocab(gguf_path: Path) -> Iterator[Any]:
    """llama.cpp's model of a GGUF loaded vocabulary-only (no tensors), freed on exit.

    Raises:
        InputError: If the file is not a LLaMA-architecture GGUF llama.cpp can read.
    """
    gguf_path = Path(gguf_path)
    check_gguf(gguf_path, stop_after="general.architecture")
    lib = require("llama_cpp", "edge")
    from llama_cpp import _internals

    params = lib.llama_model_default_params()
    params.vocab_only = True
    try:
        model = _internals.LlamaModel(path_model=str(gguf_path), params=params, verbose=False)
    except ValueError as exc:
        raise InputError(f"{gguf_path}: llama.cpp could not read its vocabulary ({exc})") from exc
    try:
        yield model
    finally:
        model.close()


def build_trie_gguf(titles: Sequence[str], gguf_path: Path) -> TokenTrie:
    """The trie of ``Title: <title>`` + EOS for every title, tokenised by llama.cpp from the GGUF.

    Args:
        titles: Catalogue titles in catalogue order.
        gguf_path: The generator GGUF the trie is for.

    Raises:
        InputError: For a bad GGUF, an empty catalogue or a title that tokenises to nothing.
    """
    lib = require("llama_cpp", "edge")
    with gguf_vocab(gguf_path) as model:

        def tokenize(text: str) -> list[int]:
            # What LlamaCppGenerator.tokenize calls, without BOS (a completion has none) and with a buffer
            # sized to the text (llama-cpp-python's wrapper allocates n_ctx_train ids per call: 2x slower).
            data = text.encode("utf-8")
            size = len(data) + 2
            buf = (lib.llama_token * size)()
            count = lib.llama_tokenize(model.vocab, data, len(data), buf, size, False, False)
            if count < 0:  # cannot happen for byte-level vocabularies (<= 1 token per byte); kept for others
                return list(model.tokenize(data, False, False))
            return buf[:count]

        fingerprint = vocab_fingerprint(vocab_texts(lib, model))
        return build_trie(titles, tokenize, [model.token_eos()], fingerprint)


def hf_vocab_fingerprint(tokenizer: Any) -> str:
    """:func:`gloss.edge.trie.vocab_fingerprint` of a transformers tokenizer (equal to its GGUF's)."""
    return vocab_fingerprint(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))))


def build_trie_hf(titles: Sequence[str], tokenizer: Any, eos_token_id: int) -> TokenTrie:
    """The same trie tokenised by a transformers tokenizer, as training encodes a completion.

    Args:
        titles: Catalogue titles in catalogue order.
        tokenizer: The generating model's tokenizer.
        eos_token_id: The EOS that ends every training completion (``TokenPolicy.eos_token_id``).

    Raises:
        InputError: For an empty catalogue or a title that tokenises to nothing.
    """

    def tokenize(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])  # TokenPolicy.encode_completion

    return build_trie(titles, tokenize, [eos_token_id], hf_vocab_fingerprint(tokenizer))


def write_trie(titles: Sequence[str], gguf_path: Path, out_path: Path, rel_path: str) -> dict[str, Any]:
    """Build the GGUF's trie, save it to ``out_path`` and return its bundle-manifest section.

    Args:
        titles: Catalogue titles in catalogue order.
        gguf_path: The generator GGUF (already in the bundle being built).
        out_path: Where to write the ``.npz``.
        rel_path: The file's path inside the bundle, recorded in the section.

    Returns:
        ``{"file", **TrieMeta, "num_bytes", "build_seconds"}``.
    """
    start = time.perf_counter()
    trie = build_trie_gguf(titles, gguf_path)
    trie.save(out_path)
    seconds = time.perf_counter() - start
    logger.info("trie: %d items, %d nodes, %.1f MB, built in %.1f s", trie.meta.num_items, trie.num_nodes,
                Path(out_path).stat().st_size / 1e6, seconds)
    return {"file": rel_path, **trie.meta.to_dict(), "num_bytes": trie.nbytes, "build_seconds": round(seconds, 3)}

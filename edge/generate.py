"""Query generation on the edge: transformers-compatible beam search over a llama.cpp context.

llama.cpp has no beam search, so it is written here: one context holds every beam as a sequence of a
unified KV cache. The prompt is decoded once; each step decodes the last token of all live beams in
one ``llama_decode`` call and reorders the cache by copying sequences between two halves of the
sequence ids (``llama_memory_seq_cp`` shares cells in a unified cache, so a copy is cheap).

The candidate selection (:func:`gloss.edge.beam.beam_step`) is a pure function that follows transformers' beam search
(4.57, ``early_stopping=False``) step for step, so both runtimes return the same titles in the same order.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from gloss.edge.beam import Beams, BeamSettings, log_softmax, run_beam_search
from gloss.edge.errors import GlossError, InputError, require
from gloss.edge.gguf_header import check_gguf
from gloss.edge.prompt import build_prompt, fit_history, parse_generated

logger = logging.getLogger(__name__)

MAX_SEQUENCES = 256  # llama.cpp's LLAMA_MAX_SEQ: seq 0 holds the prompt, 2 * num_beams hold the beams
NEG_INF = -math.inf


@dataclass(frozen=True)
class GenerationConfig:
    """How titles are generated (defaults: the paper's 5-beam search).

    Attributes:
        num_beams: Beams kept per step.
        num_return_sequences: Finished titles returned, best first (<= num_beams).
        max_new_tokens: Generated tokens per title at most.
        n_ctx: Token budget for prompt + new tokens; the oldest history items are dropped to fit.
        length_penalty: Finished scores are ``sum_logprobs / length ** length_penalty``.
        num_threads: CPU threads for llama.cpp; None uses half the cores.
    """

    num_beams: int = 5
    num_return_sequences: int = 5
    max_new_tokens: int = 50
    n_ctx: int = 1024
    length_penalty: float = 1.0
    num_threads: int | None = None

    def __post_init__(self) -> None:
        max_beams = (MAX_SEQUENCES - 1) // 2
        if not 1 <= self.num_beams <= max_beams:
            raise InputError(f"--num-beams must be in [1, {max_beams}], got {self.num_beams}")
        if not 1 <= self.num_return_sequences <= self.num_beams:
            raise InputError(
                f"--num-return-sequences must be in [1, --num-beams={self.num_beams}], "
                f"got {self.num_return_sequences}"
            )
        if self.max_new_tokens < 1:
            raise InputError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.n_ctx <= self.max_new_tokens:
            raise InputError(
                f"--n-ctx must be > --max-new-tokens={self.max_new_tokens} to leave room for the prompt, "
                f"got {self.n_ctx}"
            )
        if not math.isfinite(self.length_penalty):
            raise InputError(f"--length-penalty must be a finite number, got {self.length_penalty}")
        if self.num_threads is not None and self.num_threads < 1:
            raise InputError(f"--num-threads must be >= 1, got {self.num_threads}")

    @property
    def max_prompt_tokens(self) -> int:
        """Tokens left for the prompt once the new tokens are reserved."""
        return self.n_ctx - self.max_new_tokens


@dataclass(frozen=True)
class GeneratedQuery:
    """One generated title: parsed title, its beam score and the raw generated text."""

    title: str
    score: float
    text: str


class QueryGenerator(Protocol):
    """Anything that turns a history of titles (oldest first) into scored query titles, best first."""

    def generate(self, history: Sequence[str]) -> list[GeneratedQuery]: ...


# ---------------------------------------------------------------------------------------------------------
# GGUF header and llama.cpp runtime

@dataclass
class SearchStats:
    """Counters of the last search (tests and benchmarks read them)."""

    num_steps: int = 0
    num_decode_calls: int = 0
    batch_sizes: list[int] = field(default_factory=list)


class LlamaCppGenerator:
    """Beam search (and greedy decoding) of query titles with a LLaMA-architecture GGUF in llama.cpp.

    Create it with :meth:`load`. Not thread-safe: one search at a time per instance.
    """

    def __init__(self, lib: Any, model: Any, ctx: Any, config: GenerationConfig, add_bos: bool) -> None:
        self._lib, self._model, self._ctx, self.config, self.add_bos = lib, model, ctx, config, add_bos
        self._memory = lib.llama_get_memory(ctx.ctx)
        self._vocab = model.vocab
        self.n_vocab = model.n_vocab()
        self._batch = lib.llama_batch_init(config.n_ctx, 0, 1)
        self.stop_token_ids = frozenset(self._find_stop_tokens())
        self.settings = BeamSettings(
            config.num_beams, config.max_new_tokens, self.stop_token_ids, config.length_penalty
        )
        self.stats = SearchStats()

    @classmethod
    def load(
        cls,
        gguf_path: Path,
        config: GenerationConfig = GenerationConfig(),  # noqa: B008 (frozen, so a shared default is safe)
        add_bos: bool | None = None,
        verbose: bool = False,
    ) -> LlamaCppGenerator:
        """Load a GGUF and create the context that holds all beams.

        Args:
            gguf_path: LLaMA-architecture GGUF (e.g. from ``gloss-export gguf``).
            config: Generation settings.
            add_bos: Prepend BOS to the prompt; None follows the GGUF's ``tokenizer.ggml.add_bos_token``
                (what llama.cpp does). It must match how the model saw prompts in training.
            verbose: Let llama.cpp log to stderr.

        Returns:
            A ready generator.

        Raises:
            InputError: If the file is missing, not a GGUF, or not a LLaMA-architecture model.
            MissingDependencyError: If llama-cpp-python is not installed.
        """
        gguf_path = Path(gguf_path)
        arch = check_gguf(gguf_path, stop_after="general.architecture")["general.architecture"]
        lib = require("llama_cpp", "edge")
        from llama_cpp import _internals, _logger  # llama-cpp-python's own thin wrappers (freed on close)

        _logger.set_verbose(verbose)  # the same switch Llama(verbose=...) flips
        model_params = lib.llama_model_default_params()
        model_params.n_gpu_layers = 0
        try:
            model = _internals.LlamaModel(path_model=str(gguf_path), params=model_params, verbose=verbose)
        except ValueError as exc:
            raise InputError(f"{gguf_path}: llama.cpp could not load it ({exc}); re-export the GGUF") from exc
        ctx = _internals.LlamaContext(model=model, params=cls._context_params(lib, config), verbose=verbose)
        resolved_bos = model.add_bos_token() if add_bos is None else add_bos
        logger.info(
            "loaded %s (%s, vocab %d), add_bos=%s, context %d tokens for %d beams",
            gguf_path.name,
            arch,
            model.n_vocab(),
            resolved_bos,
            ctx.n_ctx(),
            config.num_beams,
        )
        if config.n_ctx > model.n_ctx_train():
            logger.warning("--n-ctx %d exceeds the training context %d", config.n_ctx, model.n_ctx_train())
        return cls(lib, model, ctx, config, bool(resolved_bos))

    @staticmethod
    def _context_params(lib: Any, config: GenerationConfig) -> Any:
        """One unified KV cache: every beam shares the prompt's cells and adds its own tokens."""
        params = lib.llama_context_default_params()
        params.n_ctx = config.n_ctx + config.num_beams * config.max_new_tokens
        params.n_batch = config.n_ctx  # the whole prompt goes in one llama_decode call
        params.n_ubatch = min(512, config.n_ctx)
        params.n_seq_max = 2 * config.num_beams + 1
        params.kv_unified = True
        # Beams are ranked by small score differences: an f16 KV cache or flash attention moved SmolLM2's
        # log-probs by ~2e-3, an f32 cache without it matches transformers to ~1e-5 (same weights).
        params.type_k = params.type_v = lib.GGML_TYPE_F32
        params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        threads = config.num_threads or max(1, (os.cpu_count() or 2) // 2)
        params.n_threads = params.n_threads_batch = threads
        return params

    def close(self) -> None:
        """Free the batch, the context and the model."""
        if self._batch is not None:
            self._lib.llama_batch_free(self._batch)
            self._batch = None
        self._ctx.close()
        self._model.close()

    def __enter__(self) -> LlamaCppGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- tokens ------------------------------------------------------------------------------------------

    def _piece(self, token: int, special: bool = False) -> bytes:
        """Bytes of one token (llama_token_to_piece with a buffer that fits)."""
        buf = ctypes.create_string_buffer(64)
        n = self._lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def _find_stop_tokens(self) -> list[int]:
        """End-of-generation tokens, plus every token containing a newline: a title is one line."""
        is_eog = self._lib.llama_vocab_is_eog
        pieces = (self._piece(t) for t in range(self.n_vocab))
        return [t for t, p in enumerate(pieces) if b"\n" in p or b"\r" in p or is_eog(self._vocab, t)]

    def tokenize(self, text: str) -> list[int]:
        """Tokenize prompt text with llama.cpp (BOS as decided at load; special tokens not parsed)."""
        # llama_tokenize's add_special follows the GGUF's add_bos flag; BOS is added here to honour add_bos.
        tokens = self._model.tokenize(text.encode("utf-8"), False, False)
        return [self._model.token_bos(), *tokens] if self.add_bos else tokens

    def detokenize(self, tokens: Sequence[int]) -> str:
        """Generated text of tokens (control tokens such as EOS render as nothing)."""
        return b"".join(self._piece(t) for t in tokens).decode("utf-8", errors="replace")

    def prompt_tokens(self, history: Sequence[str]) -> list[int]:
        """Prompt tokens for a history; the oldest items are dropped to fit ``n_ctx - max_new_tokens``.

        Raises:
            InputError: If even the newest item alone does not fit.
        """
        budget = self.config.max_prompt_tokens
        try:
            kept = fit_history(history, lambda text: len(self.tokenize(text)), budget)
        except InputError as exc:
            raise InputError(
                f"{exc} (--n-ctx {self.config.n_ctx} minus --max-new-tokens {self.config.max_new_tokens}); "
                "raise --n-ctx or shorten the titles"
            ) from exc
        self.last_items_kept = len(kept)  # read by Recommender to tell the user about a cut history
        if len(kept) < len(history):
            logger.debug("history cut from %d to %d items to fit %d tokens", len(history), len(kept), budget)
        return self.tokenize(build_prompt(kept))

    # -- decoding ----------------------------------------------------------------------------------------

    def _decode(
        self, tokens: Sequence[int], positions: Sequence[int], seq_ids: Sequence[int], outputs: int
    ) -> np.ndarray:
        """Decode one batch; the last ``outputs`` tokens return logits, as a ``(outputs, vocab)`` array."""
        batch, n = self._batch, len(tokens)
        first_output = n - outputs
        for i, (token, pos, seq) in enumerate(zip(tokens, positions, seq_ids, strict=True)):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = i >= first_output
        batch.n_tokens = n
        rc = self._lib.llama_decode(self._ctx.ctx, batch)
        self.stats.num_decode_calls += 1
        self.stats.batch_sizes.append(n)
        if rc != 0:
            raise GlossError(f"llama_decode failed with code {rc} for a batch of {n} tokens; lower --n-ctx")
        rows = [self._lib.llama_get_logits_ith(self._ctx.ctx, i) for i in range(first_output, n)]
        return np.stack([np.ctypeslib.as_array(row, shape=(self.n_vocab,)) for row in rows])

    def _start(self, prompt_tokens: Sequence[int]) -> np.ndarray:
        """Clear the cache, decode the prompt in sequence 0 and return its last logits."""
        if not prompt_tokens:
            raise InputError("empty prompt: give at least one token")
        if len(prompt_tokens) > self.config.max_prompt_tokens:
            raise InputError(
                f"prompt has {len(prompt_tokens)} tokens, more than --n-ctx {self.config.n_ctx} minus "
                f"--max-new-tokens {self.config.max_new_tokens}; truncate the history (prompt_tokens does)"
            )
        self.stats = SearchStats()
        self._lib.llama_memory_clear(self._memory, True)
        n = len(prompt_tokens)
        return self._decode(prompt_tokens, range(n), [0] * n, outputs=1)

    def beam_search(self, prompt_tokens: Sequence[int]) -> list[tuple[list[int], float]]:
        """Beam search from prompt tokens, as transformers' ``generate(num_beams=...)`` does.

        Args:
            prompt_tokens: Prompt token ids (BOS included if wanted); at most ``n_ctx - max_new_tokens``.

        Returns:
            Up to ``num_return_sequences`` ``(generated token ids, score)``, best first; the ids end with
            the stop token unless the length limit ended them.
        """
        prompt_len, num_beams = len(prompt_tokens), self.config.num_beams
        halves = (1, 1 + num_beams)  # ping-pong: beams live in seqs [1..B] or [B+1..2B]
        state = {"seqs": [0], "half": 0}

        def advance(beams: Beams, parents: tuple[int, ...]) -> np.ndarray:
            base = halves[state["half"]]
            new_seqs = [base + i for i in range(len(parents))]
            for dst, parent in zip(new_seqs, parents, strict=True):
                self._lib.llama_memory_seq_cp(self._memory, state["seqs"][parent], dst, -1, -1)
            for old in state["seqs"]:
                self._lib.llama_memory_seq_rm(self._memory, old, -1, -1)
            state["seqs"], state["half"] = new_seqs, 1 - state["half"]
            step = len(beams.sequences[0]) - 1
            self.stats.num_steps += 1
            tokens = [seq[-1] for seq in beams.sequences]
            return log_softmax(self._decode(tokens, [prompt_len + step] * len(tokens), new_seqs, len(tokens)))

        first = log_softmax(self._start(prompt_tokens))
        self.stats.num_steps += 1
        beams = run_beam_search(first, advance, self.settings)
        return [(list(seq), score) for score, seq in beams.finished[: self.config.num_return_sequences]]

    def _queries(self, results: Sequence[tuple[Sequence[int], float]]) -> list[GeneratedQuery]:
        """Turn token results into parsed queries."""
        out = []
        for tokens, score in results:
            text = self.detokenize(tokens)
            out.append(GeneratedQuery(title=parse_generated(text), score=float(score), text=text))
        return out

    def generate(self, history: Sequence[str]) -> list[GeneratedQuery]:
        """Generate ``num_return_sequences`` next-item titles for a history (oldest first), best first.

        Raises:
            InputError: If the history is empty or its newest item alone does not fit the context.
        """
        return self._queries(self.beam_search(self.prompt_tokens(history)))

    def generate_greedy(self, history: Sequence[str]) -> GeneratedQuery:
        """One greedy decode of the same prompt (a speed baseline); score is its mean log-probability."""
        prompt = self.prompt_tokens(history)
        log_probs = log_softmax(self._start(prompt))[0]
        tokens: list[int] = []
        total = 0.0
        while True:
            token = int(np.argmax(log_probs))
            tokens.append(token)
            total += float(log_probs[token])
            self.stats.num_steps += 1
            if token in self.stop_token_ids or len(tokens) >= self.config.max_new_tokens:
                break
            log_probs = log_softmax(self._decode([token], [len(prompt) + len(tokens) - 1], [0], 1))[0]
        return self._queries([(tokens, total / len(tokens) ** self.config.length_penalty)])[0]

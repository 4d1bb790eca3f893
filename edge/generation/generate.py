"""Query generation on the edge: transformers-compatible beam search over a llama.cpp context.

llama.cpp has no beam search, so it is written here: one context holds every beam as a sequence of a
unified KV cache. The prompt is decoded once; each step decodes the last token of all live beams (of every
user in flight, :mod:`gloss.edge.generation.beam_batch`) in one ``llama_decode`` call and reorders the cache by copying
sequences between two halves of each user's sequence ids (``llama_memory_seq_cp`` shares cells in a unified
cache, so a copy is cheap). A prompt starts from the saved KV cells of its longest prefix shared with an earlier
prompt (:mod:`gloss.edge.generation.kvcache`).

The candidate selection (:func:`~.beam.beam_step`) is a pure function that follows transformers' beam search
(4.57; ``early_stopping=True`` by default, ``False`` as an option) step for step, so both runtimes return the same
titles in the same order.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from gloss.edge.errors import GlossError, InputError, require
from gloss.edge.generation.beam import Beams, BeamSettings, log_softmax
from gloss.edge.generation.beam_batch import BatchedBeamSearch, BatchLimits, SearchStats
from gloss.edge.generation.gguf_header import check_gguf
from gloss.edge.generation.kvcache import PrefixCache
from gloss.edge.prompt import build_prompt, fit_history, parse_generated, render_item
from gloss.edge.trie import vocab_fingerprint

if TYPE_CHECKING:
    from gloss.edge.trie import TokenTrie

logger = logging.getLogger(__name__)

MAX_SEQUENCES = 256  # llama.cpp's LLAMA_MAX_SEQ: each user in flight owns 2 * num_beams sequences
NEG_INF = -math.inf
TITLE_MARGIN_TOKENS = 4  # slack over the catalogue's longest title: in-context tokenisation may differ by a few
KV_TYPES = ("f32", "f16")
UBATCH_TOKENS = 256


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
        early_stopping: Stop once ``num_beams`` titles are finished (transformers' ``early_stopping=True``);
            False goes on while a running beam could still beat the finished ones.
        prefix_cache_mb: Host memory for the KV cells of earlier prompts, reused for the longest shared
            token prefix (least recently used dropped first); 0 turns prompt reuse off. A Beauty prompt's cells
            take ~10 MB in the f32 cache, so 16 MB keeps the latest prompt: every new user reuses its header, and
            a user who comes back next reuses the whole earlier history.
        max_batch_users: Users whose searches share one ``llama_decode`` per step in :meth:`generate_batch`
            (each adds ``2 * num_beams`` sequences and their logits buffer; :func:`batched_config` sets it with
            the KV cells it needs).
        kv_tokens: KV cells of the context; None = room for one user's longest prompt and beams. More cells
            let :meth:`generate_batch` run more users at once.
        kv_type: Precision of the KV cache. ``f32`` (default): log-probs match transformers to ~1e-5 on the same
            weights. ``f16`` halves the cache and the prefix cache's saved prompts, but with the Q8_0 generator
            it moved teacher-forced log-probs by 0.06 nats per token on average (as much as Q8_0 itself moves
            them from F16; benchmarks/results/footprint.md), so it is an option, not the default.
    """

    num_beams: int = 5
    num_return_sequences: int = 5
    max_new_tokens: int = 50
    n_ctx: int = 1024
    length_penalty: float = 1.0
    num_threads: int | None = None
    early_stopping: bool = True
    prefix_cache_mb: int = 16
    max_batch_users: int = 1
    kv_tokens: int | None = None
    kv_type: str = "f32"

    def __post_init__(self) -> None:
        if self.kv_type not in KV_TYPES:
            raise InputError(f"--kv-type must be one of {', '.join(KV_TYPES)}, got {self.kv_type!r}")
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
        if self.prefix_cache_mb < 0:
            raise InputError(f"--prefix-cache-mb must be >= 0, got {self.prefix_cache_mb}")
        if not 1 <= self.max_batch_users <= self.users_limit:
            raise InputError(f"--max-batch-users must be in [1, {self.users_limit}], got {self.max_batch_users}")
        if self.kv_tokens is not None and self.kv_tokens < self.user_kv_tokens:
            raise InputError(f"--kv-tokens must be >= {self.user_kv_tokens} (one user), got {self.kv_tokens}")

    @property
    def users_limit(self) -> int:
        """Users whose searches fit one context at most: llama.cpp's sequence limit over each user's
        ``2 * num_beams`` sequences."""
        return MAX_SEQUENCES // (2 * self.num_beams)

    @property
    def user_kv_tokens(self) -> int:
        """KV cells one user's search needs at most: the longest prompt and every beam's new tokens."""
        return self.n_ctx + self.num_beams * self.max_new_tokens

    @property
    def max_prompt_tokens(self) -> int:
        """Tokens left for the prompt once the new tokens are reserved."""
        return self.n_ctx - self.max_new_tokens


def batched_config(num_users: int, config: GenerationConfig | None = None) -> GenerationConfig:
    """``config`` with a context for ``num_users`` searches at once (prompts of up to half ``n_ctx``).

    Users with longer prompts still run, with fewer users in flight: each admission checks its own prompt.
    """
    config = config or GenerationConfig()
    per_user = config.n_ctx // 2 + config.num_beams * config.max_new_tokens
    kv_tokens = max(config.user_kv_tokens, num_users * per_user)
    return replace(config, max_batch_users=num_users, kv_tokens=kv_tokens)


@dataclass(frozen=True)
class GeneratedQuery:
    """One generated title: parsed title, its beam score and the raw generated text.

    ``items`` holds the catalogue positions the title names when the beam was constrained to the catalogue
    (several for a duplicated title, empty if the length limit cut it); None for a free beam.
    """

    title: str
    score: float
    text: str
    items: tuple[int, ...] | None = None


class QueryGenerator(Protocol):
    """Anything that turns a history of titles (oldest first) into scored query titles, best first."""

    def generate(self, history: Sequence[str]) -> list[GeneratedQuery]: ...


def vocab_texts(lib: Any, model: Any) -> list[str]:
    """The vocabulary's token strings in id order (the GGUF's ``tokenizer.ggml.tokens``)."""
    vocab = model.vocab
    return [lib.llama_vocab_get_text(vocab, t).decode("utf-8") for t in range(model.n_vocab())]


# ---------------------------------------------------------------------------------------------------------
# GGUF header and llama.cpp runtime

class _LlamaKv:
    """:class:`gloss.edge.generation.beam_batch.KvRuntime` over a llama.cpp context (unified KV cache)."""

    def __init__(self, gen: LlamaCppGenerator) -> None:
        self.gen, self.lib, self.ctx, self.memory = gen, gen._lib, gen._ctx.ctx, gen._memory

    def decode(self, tokens: list[int], positions: list[int], seq_ids: list[int], outputs: list[bool]) -> np.ndarray:
        return self.gen._decode(tokens, positions, seq_ids, outputs)

    def clear(self) -> None:
        self.lib.llama_memory_clear(self.memory, True)

    def seq_cp(self, src: int, dst: int) -> None:
        self.lib.llama_memory_seq_cp(self.memory, src, dst, -1, -1)  # a unified cache shares the cells

    def seq_rm(self, seq: int, start: int = -1) -> None:
        self.lib.llama_memory_seq_rm(self.memory, seq, start, -1)

    def save_seq(self, seq: int, max_bytes: int) -> tuple[Any, int] | None:
        size = self.lib.llama_state_seq_get_size(self.ctx, seq)
        if size > max_bytes:  # a long prompt's cells would not be kept: do not even copy them
            return None
        state = (ctypes.c_uint8 * size)()
        written = self.lib.llama_state_seq_get_data(self.ctx, state, size, seq)
        return (state, written) if written else None

    def load_seq(self, seq: int, state: Any, size: int) -> bool:
        return self.lib.llama_state_seq_set_data(self.ctx, state, size, seq) != 0


class LlamaCppGenerator:
    """Beam search (and greedy decoding) of query titles with a LLaMA-architecture GGUF in llama.cpp.

    Create it with :meth:`load`. Not thread-safe: one search at a time per instance.
    """

    def __init__(
        self, lib: Any, model: Any, ctx: Any, config: GenerationConfig, add_bos: bool,
        constraint: TokenTrie | None = None,
    ) -> None:
        self._lib, self._model, self._ctx, self.config, self.add_bos = lib, model, ctx, config, add_bos
        self.constraint = constraint  # catalogue trie: beams may only write catalogue titles
        self._memory = lib.llama_get_memory(ctx.ctx)
        self._vocab = model.vocab
        self.n_vocab = model.n_vocab()
        self._batch = lib.llama_batch_init(config.n_ctx, 0, 1)
        self.stop_token_ids = frozenset(self._find_stop_tokens())
        if constraint is not None and not set(constraint.meta.end_token_ids) <= self.stop_token_ids:
            raise InputError(
                f"the trie ends titles with tokens {list(constraint.meta.end_token_ids)}, which this model does "
                "not stop on; rebuild the trie from this generator's GGUF"
            )
        self.settings = BeamSettings(
            num_beams=config.num_beams,
            max_new_tokens=config.max_new_tokens,
            stop_token_ids=self.stop_token_ids,
            length_penalty=config.length_penalty,
            early_stopping=config.early_stopping,
            constraint=constraint,
        )
        self.stats = SearchStats()
        self.prefix_cache: PrefixCache[Any] = PrefixCache(config.prefix_cache_mb * 2**20)
        self.kv_capacity = config.kv_tokens or config.user_kv_tokens

    @classmethod
    def load(
        cls,
        gguf_path: Path,
        config: GenerationConfig = GenerationConfig(),  # noqa: B008 (frozen, so a shared default is safe)
        add_bos: bool | None = None,
        verbose: bool = False,
        constraint: TokenTrie | None = None,
    ) -> LlamaCppGenerator:
        """Load a GGUF and create the context that holds all beams.

        Args:
            gguf_path: LLaMA-architecture GGUF (e.g. from ``gloss-export gguf``).
            config: Generation settings.
            add_bos: Prepend BOS to the prompt; None follows the GGUF's ``tokenizer.ggml.add_bos_token``
                (what llama.cpp does). It must match how the model saw prompts in training.
            verbose: Let llama.cpp log to stderr.
            constraint: A catalogue trie (``Bundle.open_trie()``): every beam is then a catalogue title and
                ``max_new_tokens`` becomes the trie's longest title, which every constrained beam ends by.

        Returns:
            A ready generator.

        Raises:
            InputError: If the file is missing, not a GGUF, or not a LLaMA-architecture model, or the trie
                was built with another tokenizer.
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
        if constraint is not None:
            constraint.check(None, vocab_fingerprint(vocab_texts(lib, model)), str(gguf_path))
            config = replace(config, max_new_tokens=constraint.meta.max_length)
        ctx = _internals.LlamaContext(model=model, params=cls._context_params(lib, config), verbose=verbose)
        resolved_bos = model.add_bos_token() if add_bos is None else add_bos
        logger.info(
            "loaded %s (%s, vocab %d), add_bos=%s, context %d tokens (%s KV) for %d beams",
            gguf_path.name,
            arch,
            model.n_vocab(),
            resolved_bos,
            ctx.n_ctx(),
            config.kv_type,
            config.num_beams,
        )
        if config.n_ctx > model.n_ctx_train():
            logger.warning("--n-ctx %d exceeds the training context %d", config.n_ctx, model.n_ctx_train())
        return cls(lib, model, ctx, config, bool(resolved_bos), constraint)

    @staticmethod
    def _context_params(lib: Any, config: GenerationConfig) -> Any:
        """One unified KV cache: every beam shares the prompt's cells and adds its own tokens."""
        params = lib.llama_context_default_params()
        params.n_ctx = config.kv_tokens or config.user_kv_tokens
        params.n_batch = config.n_ctx  # the whole prompt goes in one llama_decode call
        # 256-token micro-batches: half the compute buffer of 512 (49 against 98 MiB at the default n_ctx) for prompt
        # decodes ~5% slower on 2 cores (benchmarks/results/runtime_memory.md); memory is the scarcer resource here.
        params.n_ubatch = min(UBATCH_TOKENS, config.n_ctx)
        params.n_seq_max = 2 * config.num_beams * config.max_batch_users
        params.kv_unified = True
        # Beams are ranked by small score differences: an f32 cache without flash attention matches transformers
        # to ~1e-5 on the same weights; an f16 cache is an option (see kv_type).
        params.type_k = params.type_v = lib.GGML_TYPE_F32 if config.kv_type == "f32" else lib.GGML_TYPE_F16
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
        self, tokens: Sequence[int], positions: Sequence[int], seq_ids: Sequence[int], outputs: int | Sequence[bool]
    ) -> np.ndarray:
        """Decode one batch and return the logits of the output tokens as a ``(outputs, vocab)`` view.

        ``outputs`` is a count (the last tokens return logits) or one flag per token. The view is only valid
        until the next decode.
        """
        batch, n = self._batch, len(tokens)
        flags = [i >= n - outputs for i in range(n)] if isinstance(outputs, int) else outputs
        for i, (token, pos, seq, out) in enumerate(zip(tokens, positions, seq_ids, flags, strict=True)):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = out
        batch.n_tokens = n
        rc = self._lib.llama_decode(self._ctx.ctx, batch)
        self.stats.num_decode_calls += 1
        self.stats.batch_sizes.append(n)
        if rc != 0:
            raise GlossError(f"llama_decode failed with code {rc} for a batch of {n} tokens; lower --n-ctx")
        # Output rows are contiguous, in batch order: one view, no per-row copy.
        return np.ctypeslib.as_array(self._lib.llama_get_logits(self._ctx.ctx), shape=(sum(flags), self.n_vocab))

    def _check_prompt(self, prompt_tokens: Sequence[int]) -> None:
        """Raise InputError for an empty prompt or one longer than the context leaves room for."""
        if not prompt_tokens:
            raise InputError("empty prompt: give at least one token")
        if len(prompt_tokens) > self.config.max_prompt_tokens:
            raise InputError(
                f"prompt has {len(prompt_tokens)} tokens, more than --n-ctx {self.config.n_ctx} minus "
                f"--max-new-tokens {self.config.max_new_tokens}; truncate the history (prompt_tokens does)"
            )

    def _start(self, prompt_tokens: Sequence[int]) -> np.ndarray:
        """Clear the cache, decode the prompt in sequence 0 and return its last logits."""
        self._check_prompt(prompt_tokens)
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
        return self.beam_search_batch([prompt_tokens])[0]

    def beam_search_batch(
        self, prompts: Sequence[Sequence[int]], observe: Callable[[int, Beams, int], None] | None = None
    ) -> list[list[tuple[list[int], float]]]:
        """Beam searches of several prompts, up to ``max_batch_users`` at once in one ``llama_decode`` per step.

        Each step decodes every running beam of every user in flight, plus the prompts of users admitted
        while sequence ids and KV cells are free (a user is admitted as another finishes); each prompt starts
        from the cached KV cells of its longest prefix shared with an earlier prompt. Each search makes the same
        choices as alone; only float rounding of the batched kernels can differ.

        Args:
            prompts: Prompt token ids, each at most ``n_ctx - max_new_tokens``.
            observe: Called after every beam step with (prompt index, beams, steps).

        Returns:
            For each prompt, what :meth:`beam_search` returns.
        """
        for prompt in prompts:
            self._check_prompt(prompt)
        self.stats = SearchStats()
        return self._searcher(observe).run(prompts)

    def warm_prefix(self, prompt_tokens: Sequence[int]) -> None:
        """Decode a prompt into the prefix cache without searching (e.g. a returning user's last history, or
        any prompt at start-up so that the first request already reuses the prompt header)."""
        self._check_prompt(prompt_tokens)
        self._searcher().warm(prompt_tokens)

    def _searcher(self, observe: Callable[[int, Beams, int], None] | None = None) -> BatchedBeamSearch:
        limits = BatchLimits(
            self.config.num_return_sequences, self.config.max_batch_users, self.kv_capacity, self.config.n_ctx
        )
        return BatchedBeamSearch(_LlamaKv(self), self.settings, limits, self.prefix_cache, self.stats, observe)

    def _queries(self, results: Sequence[tuple[Sequence[int], float]]) -> list[GeneratedQuery]:
        """Turn token results into parsed queries (with their catalogue positions when constrained)."""
        out = []
        for tokens, score in results:
            text = self.detokenize(tokens)
            items = self.constraint.items(tokens) if self.constraint is not None else None
            out.append(GeneratedQuery(title=parse_generated(text), score=float(score), text=text, items=items))
        return out

    def generate(self, history: Sequence[str]) -> list[GeneratedQuery]:
        """Generate ``num_return_sequences`` next-item titles for a history (oldest first), best first.

        Raises:
            InputError: If the history is empty or its newest item alone does not fit the context.
        """
        return self._queries(self.beam_search(self.prompt_tokens(history)))

    def generate_batch(self, histories: Sequence[Sequence[str]]) -> list[list[GeneratedQuery]]:
        """:meth:`generate` for several histories, their searches batched (see :meth:`beam_search_batch`).

        Raises:
            InputError: If a history is empty or its newest item alone does not fit the context.
        """
        results = self.beam_search_batch([self.prompt_tokens(history) for history in histories])
        return [self._queries(result) for result in results]

    def cap_new_tokens(self, titles: Iterable[str], margin: int = TITLE_MARGIN_TOKENS) -> int:
        """Stop searches at the longest rendered catalogue title in tokens (+ stop token + ``margin``).

        A beam that has not ended a title by then never names a catalogue item, so the cap only cuts
        runaway beams. The configured ``max_new_tokens`` stays the upper bound and keeps setting the prompt
        budget, so histories are cut as before. Returns the new cap.
        """
        enough = self.config.max_new_tokens - 1 - margin  # a title this long leaves the configured cap as is
        longest = 0
        for title in sorted(titles, key=len, reverse=True):  # long texts first: usually stops at the first
            longest = max(longest, len(self._model.tokenize(render_item(title).encode("utf-8"), False, False)))
            if longest >= enough:
                break
        cap = min(self.config.max_new_tokens, longest + 1 + margin)
        self.settings = replace(self.settings, max_new_tokens=cap)
        logger.info("searches stop at %d new tokens (catalogue titles reach %d tokens)", cap, longest)
        return cap

    def completion_log_probs(self, prompt_tokens: Sequence[int], completion: Sequence[int]) -> np.ndarray:
        """Teacher-forced ``(len(completion), vocab)`` next-token log-probabilities of a completion after a
        prompt (row i predicts ``completion[i]``), from one decode of prompt + completion.

        Raises:
            InputError: If the prompt or completion is empty, or both do not fit ``n_ctx``.
        """
        self._check_prompt(prompt_tokens)
        tokens = [*prompt_tokens, *completion]
        if not completion or len(tokens) > self.config.n_ctx:
            room = self.config.n_ctx - len(prompt_tokens)
            raise InputError(f"need 1 to {room} completion tokens after this prompt, got {len(completion)}")
        self._lib.llama_memory_clear(self._memory, True)
        first, n = len(prompt_tokens) - 1, len(tokens)
        logits = self._decode(tokens, range(n), [0] * n, [first <= i < n - 1 for i in range(n)])
        return log_softmax(logits)

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
            if token in self.stop_token_ids or len(tokens) >= self.settings.max_new_tokens:
                break
            log_probs = log_softmax(self._decode([token], [len(prompt) + len(tokens) - 1], [0], 1))[0]
        return self._queries([(tokens, total / len(tokens) ** self.config.length_penalty)])[0]

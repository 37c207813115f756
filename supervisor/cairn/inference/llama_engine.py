"""Batched GGUF inference: one decode thread runs every active sequence in one llama_batch.

llama-cpp-python's `Llama` decodes one sequence at a time. Here the context holds `slots`
sequences (seq_id 0..slots-1); each step builds one batch with the next token of every
generating sequence plus prompt tokens of newly admitted ones, calls llama_decode once and
samples each sequence from its own row of logits with its own sampler chain.

KV layout: `n_seq_max = slots` with `kv_unified = False`, so llama.cpp gives every sequence its
own KV stream of `n_ctx // slots` cells. A sequence then attends over exactly the cells it
would have alone, which keeps batched output identical to solo output, and a sequence can
never crowd another out of the cache. Prompt plus completion of one request is limited to
`n_ctx_seq` (= n_ctx // slots) tokens.

Prompt cache: the KV is allocated once, at load (n_ctx cells, nothing grows), and a slot keeps
its stream after its request ends; the slot remembers which tokens it holds. A queued request
goes to the free slot whose tokens share the longest prefix with its prompt (ties, or no
prefix of `_MIN_REUSE` tokens anywhere: the least recently used slot), the cells past that
prefix are removed (llama_memory_seq_rm) and only the rest of the prompt is decoded, at
least its last token, whose logits start the completion. A prefix held by another slot, busy
or not, is copied when it is longer by `_MIN_COPY` tokens: with per-sequence streams
llama_memory_seq_cp copies the donor's whole stream (a memcpy of one slot's KV, far cheaper
than decoding hundreds of tokens), then the cells past the shared prefix are removed. A
request admitted while another one is still decoding the same long prefix waits for it and
copies, so N agents sending one system prompt at once decode it once. A unified KV would
share cells without copying, but every sequence would attend over all slots' cells, and
batched output would no longer be the solo output; the copy keeps both properties. KV entries
depend only on the tokens before them, so reuse does not change the output.

Sampling: llama.cpp's samplers in llama-server's order (logit bias, penalties over the last
`penalty_last_n` tokens of prompt and output, top-k, top-p, min-p, temperature, then a seeded
draw, or greedy at temperature 0). A grammar is applied as llama.cpp's common_sampler does:
the chain picks from the unconstrained row, the grammar checks that one token, and only a
rejected token costs a grammar pass over the vocabulary and a second pick.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import contextlib
import ctypes
import enum
import logging
import math
import os
import re
import threading
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
import numpy as np
import numpy.typing as npt

from cairn.errors import CairnError
from cairn.inference.chat import ChatTemplate
from cairn.inference.types import (
    Chunk,
    EngineStats,
    FinishReason,
    ModelLoadError,
    PromptTooLong,
    QueueFull,
    SamplingParams,
    Timings,
    TokenLogprob,
    TooManyTokens,
    TopLogprob,
)

log = logging.getLogger(__name__)

_RATE_WINDOW_S = 10.0  # tokens_per_second looks back this far
_LOAD_ERRORS_KEPT = 8
_Sampler = Any  # llama_cpp.llama_sampler_p: a ctypes pointer to a native sampler
# A free slot's prefix shorter than this does not choose the slot.
_MIN_REUSE = 16
# Copy another slot's stream only for a prefix at least this much longer than the own one:
# below it, decoding the difference costs about what the copy does.
_MIN_COPY = 32
# After the grammar rejects the chain's pick, this many tokens are sampled grammar-first.
_GRAMMAR_FIRST_AFTER_REJECT = 8
# std::regex constructs Python's `re` accepts but ECMAScript does not; llama.cpp compiles the
# trigger patterns with std::regex, whose exception would abort the process.
_NON_ECMA = re.compile(r"\(\?[^:=!]|\\[AZzG]")


class EngineError(CairnError):
    """A request failed inside the engine (decode error, engine closed)."""


class InvalidGrammar(CairnError, ValueError):
    """A grammar or grammar trigger llama.cpp cannot parse (the request's fault)."""


class _Phase(enum.Enum):
    WAITING = "waiting"
    PROMPT = "prompt"  # admitted, prompt not fully decoded yet
    GENERATING = "generating"
    DONE = "done"  # slot released; nothing more will be posted


@dataclass(eq=False)
class _Slot:
    """One sequence's KV stream and the tokens it holds (position i holds cached[i])."""

    seq_id: int
    cached: list[int] = field(default_factory=list)
    used_at: float = 0.0
    req: _Request | None = None


@dataclass(eq=False)
class _Request:
    """One generation as both sides see it; fields below `out` belong to the decode thread."""

    tokens: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[Chunk | BaseException]
    released: asyncio.Event
    enqueued_at: float
    sampler: _Sampler | None  # the chain: logit bias, penalties, truncation, temperature, pick
    grammar: _Sampler | None  # sampled separately; see LlamaEngine._sample_constrained
    phase: _Phase = _Phase.WAITING
    cancelled: bool = False
    slot: _Slot | None = None
    # Admitted while another request decodes the same prefix: wait for it, then copy.
    share_from: _Request | None = None
    share_len: int = 0
    cached_tokens: int = 0
    grammar_first: int = 0  # tokens left to sample grammar-first (see _sample_constrained)
    last_token: int = -1
    completion: int = 0
    unsent_ids: list[int] = field(default_factory=list)
    unsent_logprobs: list[TokenLogprob] = field(default_factory=list)
    text: _TextStream | None = None
    admitted_at: float = 0.0
    first_token_at: float = 0.0
    last_token_at: float = 0.0

    def post(self, item: Chunk | BaseException) -> None:
        """Hand an item to the consumer's event loop (thread-safe)."""
        # RuntimeError: the consumer's loop is closed, nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.out.put_nowait, item)

    def signal_released(self) -> None:
        """Wake a consumer waiting for the slot to be freed (thread-safe)."""
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.released.set)

    def free_samplers(self) -> None:
        """Free the native sampler objects (once)."""
        if self.sampler is not None:
            llama_cpp.llama_sampler_free(self.sampler)
            self.sampler = None
        if self.grammar is not None:
            llama_cpp.llama_sampler_free(self.grammar)
            self.grammar = None


class _TextStream:
    """Bytes in, text out: holds back partial UTF-8 and anything that may begin a stop string."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        # errors="replace": a random or byte-level model can emit invalid UTF-8; the
        # incremental decoder still holds back a sequence that may yet complete.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = tuple(s for s in stops if s)
        self._pending = ""
        self.stopped = False

    def feed(self, data: bytes) -> str:
        """Add a token's bytes; return the text that is now safe to send."""
        self._pending += self._decoder.decode(data)
        return self._release(final=False)

    def finish(self) -> str:
        """Flush everything still held back (the generation ended)."""
        self._pending += self._decoder.decode(b"", final=True)
        return self._release(final=True)

    def _release(self, *, final: bool) -> str:
        hits = [i for i in (self._pending.find(s) for s in self._stops) if i >= 0]
        if hits:
            out, self._pending, self.stopped = self._pending[: min(hits)], "", True
            return out
        keep = 0 if final else self._partial_stop_len()
        cut = len(self._pending) - keep
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out

    def _partial_stop_len(self) -> int:
        """Length of the longest tail of the pending text that is a proper prefix of a stop."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(self._pending)), best, -1):
                if self._pending.endswith(stop[:n]):
                    best = n
                    break
        return best


class _LlamaLog:
    """Routes llama.cpp's log lines to logging and keeps the latest errors for load failures."""

    # ggml.h's ggml_log_level (llama-cpp-python's own _logger maps an older numbering).
    # llama.cpp's INFO is a page of loader chatter per model: DEBUG for us.
    _LEVELS = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.WARNING, 4: logging.ERROR}
    _CONT = 5  # continues the previous line (progress dots and the like)

    def __init__(self) -> None:
        self.errors: collections.deque[str] = collections.deque(maxlen=_LOAD_ERRORS_KEPT)
        self._last_level = logging.DEBUG
        # Keep a reference: ctypes callbacks are freed with their Python object.
        self.callback = llama_cpp.llama_log_callback(self._on_log)

    def _on_log(self, level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        py_level = (
            self._last_level if level == self._CONT else self._LEVELS.get(level, logging.DEBUG)
        )
        self._last_level = py_level
        line = text.decode("utf-8", errors="replace").rstrip()
        if not line:
            return
        if py_level >= logging.WARNING:
            self.errors.append(line)
        log.log(py_level, "llama.cpp: %s", line)


_backend_lock = threading.Lock()
_llama_log: _LlamaLog | None = None


def _init_backend() -> _LlamaLog:
    """Initialise llama.cpp once per process and install the log router."""
    global _llama_log
    with _backend_lock:
        if _llama_log is None:
            _llama_log = _LlamaLog()
            llama_cpp.llama_log_set(_llama_log.callback, ctypes.c_void_p(0))
            llama_cpp.llama_backend_init()
        return _llama_log


def load_model(path: str, n_gpu_layers: int) -> tuple[llama_cpp.llama_model_p, _LlamaLog]:
    """Load a GGUF model, or raise ModelLoadError with llama.cpp's own reason."""
    llama_log = _init_backend()
    if not os.path.isfile(path):
        raise ModelLoadError(f"{path}: no such file")
    mparams = llama_cpp.llama_model_default_params()
    # The library default is -1 (offload everything); offload only what was asked for.
    mparams.n_gpu_layers = n_gpu_layers
    llama_log.errors.clear()
    model = llama_cpp.llama_model_load_from_file(path.encode(), mparams)
    if model is None:
        raise ModelLoadError(f"{path}: {reason_for(llama_log, 'not a loadable GGUF model')}")
    return model, llama_log


class LlamaEngine:
    """A GGUF model with `slots` parallel sequences behind a bounded FIFO queue."""

    def __init__(
        self,
        path: str,
        *,
        n_ctx: int,
        n_threads: int,
        n_gpu_layers: int = 0,
        n_batch: int = 512,
        slots: int = 4,
        queue_limit: int = 16,
    ) -> None:
        if slots < 1 or queue_limit < 0 or n_batch < slots or n_threads < 1:
            raise ValueError("need slots >= 1, queue_limit >= 0, n_batch >= slots, n_threads >= 1")
        self.slots = slots
        self.n_threads = n_threads
        self.queue_limit = queue_limit
        self._model, self._ctx = self._load(path, n_ctx, n_threads, n_gpu_layers, n_batch, slots)
        # n_gpu_layers < 0 means "all of them" to llama.cpp.
        self.gpu_offload = bool(llama_cpp.llama_supports_gpu_offload()) and n_gpu_layers != 0
        self.n_ctx = int(llama_cpp.llama_n_ctx(self._ctx))
        self.n_ctx_seq = int(llama_cpp.llama_n_ctx_seq(self._ctx))
        self.n_batch = int(llama_cpp.llama_n_batch(self._ctx))
        vocab = llama_cpp.llama_model_get_vocab(self._model)
        if vocab is None:
            self._free_native()
            raise ModelLoadError(f"{path}: the model has no vocabulary")
        self._vocab = vocab
        self._n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._bos = int(llama_cpp.llama_vocab_bos(self._vocab))
        self._add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))
        self._pieces: dict[int, bytes] = {}
        template = llama_cpp.llama_model_chat_template(self._model, None)
        self.chat_template = ChatTemplate(
            template.decode("utf-8", errors="replace") if template else None,
            bos=self._token_text(self._bos),
            eos=self._token_text(llama_cpp.llama_vocab_eos(self._vocab)),
        )
        # One sequence id per token is all we ever use, hence n_seq_max=1 for the batch.
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._b_token = np.ctypeslib.as_array(self._batch.token, shape=(self.n_batch,))
        self._b_pos = np.ctypeslib.as_array(self._batch.pos, shape=(self.n_batch,))
        self._b_logits = np.ctypeslib.as_array(self._batch.logits, shape=(self.n_batch,))
        np.ctypeslib.as_array(self._batch.n_seq_id, shape=(self.n_batch,))[:] = 1
        self._b_seq = [self._batch.seq_id[i] for i in range(self.n_batch)]
        # The whole vocabulary as llama_token_data, for sampling a row outside the C chain.
        self._cand_buf = (llama_cpp.llama_token_data * self._n_vocab)()
        self._cand = np.ctypeslib.as_array(self._cand_buf)
        self._cand_ids = np.arange(self._n_vocab, dtype=np.int32)
        self._cand_arr = llama_cpp.llama_token_data_array(self._cand_buf, self._n_vocab, -1, False)
        self._one_buf = (llama_cpp.llama_token_data * 1)()
        self._one_arr = llama_cpp.llama_token_data_array(self._one_buf, 1, -1, False)
        self._cand_ref = ctypes.byref(self._cand_arr)
        self._one_ref = ctypes.byref(self._one_arr)

        self._cond = threading.Condition()
        self._waiting: collections.deque[_Request] = collections.deque()
        self._active: dict[int, _Request] = {}
        self._slots = [_Slot(seq_id) for seq_id in range(slots)]
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._closed = False
        # When the decode thread last made progress, or work arrived at an idle engine: a
        # thread that hangs in llama_decode shows as work standing still (`stalled_seconds`),
        # which the supervisor's probe tells apart from a busy engine.
        self._progress_at = time.monotonic()
        self._prompt_tokens_total = 0
        self._cached_tokens_total = 0
        self._completion_tokens_total = 0
        self._requests_total = 0
        self._cancelled_total = 0
        self._steps: collections.deque[tuple[float, int, float]] = collections.deque()
        log.info(
            "loaded %s: n_ctx %d (%d per slot), %d slots, %d threads, gpu offload %s",
            path,
            self.n_ctx,
            self.n_ctx_seq,
            slots,
            n_threads,
            self.gpu_offload,
        )

    # ---- lifecycle ---------------------------------------------------------------------

    @staticmethod
    def _load(
        path: str, n_ctx: int, n_threads: int, n_gpu_layers: int, n_batch: int, slots: int
    ) -> tuple[llama_cpp.llama_model_p, llama_cpp.llama_context_p]:
        """Load model and context, or raise ModelLoadError with llama.cpp's own reason."""
        model, llama_log = load_model(path, n_gpu_layers)
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_batch  # one physical pass per batch where the KV layout allows it
        cparams.n_seq_max = slots
        cparams.kv_unified = False  # per-sequence KV streams; see the module docstring
        cparams.n_threads = n_threads
        cparams.n_threads_batch = n_threads
        cparams.no_perf = True
        ctx = llama_cpp.llama_init_from_model(model, cparams)
        if ctx is None:
            llama_cpp.llama_model_free(model)
            reason = reason_for(llama_log, "could not create a context")
            raise ModelLoadError(f"{path}: {reason}")
        return model, ctx

    def start(self) -> None:
        """Start the decode thread."""
        if self._closed:
            raise EngineError("engine is closed")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="llama-decode", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the decode thread, fail what is left and free the native memory."""
        if self._closed:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        with self._cond:
            self._closed = True
            leftovers = list(self._waiting) + list(self._active.values())
            self._waiting.clear()
            for req in leftovers:
                self._release(req)
                req.post(EngineError("engine closed"))
        llama_cpp.llama_batch_free(self._batch)
        self._free_native()

    def _free_native(self) -> None:
        llama_cpp.llama_free(self._ctx)
        llama_cpp.llama_model_free(self._model)

    # ---- prompts -----------------------------------------------------------------------

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return bytes(llama_cpp.llama_vocab_get_text(self._vocab, token) or b"").decode(
            "utf-8", errors="replace"
        )

    def tokenize(self, text: str) -> list[int]:
        """Tokenize a prompt as generate() does (BOS added once, special tokens parsed)."""
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (llama_cpp.llama_token * cap)()
        n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, cap, True, True)
        if n < 0:  # the buffer was too small; -n is the size needed
            cap = -n
            buf = (llama_cpp.llama_token * cap)()
            n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, cap, True, True)
        tokens = list(buf[:n])
        # A chat template that writes {{ bos_token }} plus the tokenizer's own BOS would give
        # two; models are trained on one.
        if self._add_bos and len(tokens) >= 2 and tokens[0] == tokens[1] == self._bos:
            tokens = tokens[1:]
        return tokens

    # ---- samplers ----------------------------------------------------------------------

    def _new_sampler(self, params: SamplingParams, prompt: list[int]) -> _Sampler:
        """The chain llama-server builds: bias, penalties, top-k, top-p, min-p, temp, pick."""
        chain_params = llama_cpp.llama_sampler_chain_default_params()
        chain_params.no_perf = True
        chain = llama_cpp.llama_sampler_chain_init(chain_params)

        def add(sampler: _Sampler) -> None:
            llama_cpp.llama_sampler_chain_add(chain, sampler)

        if params.logit_bias:
            for token, _ in params.logit_bias:
                if not 0 <= token < self._n_vocab:
                    llama_cpp.llama_sampler_free(chain)
                    raise ValueError(
                        f"logit_bias names token {token}; the vocabulary has {self._n_vocab}"
                    )
            biases = (llama_cpp.llama_logit_bias * len(params.logit_bias))(
                *(llama_cpp.llama_logit_bias(token, bias) for token, bias in params.logit_bias)
            )
            add(llama_cpp.llama_sampler_init_logit_bias(self._n_vocab, len(biases), biases))
        penalised = (
            params.repeat_penalty != 1.0
            or params.presence_penalty != 0.0
            or params.frequency_penalty != 0.0
        ) and params.penalty_last_n != 0
        if penalised:
            last_n = self.n_ctx_seq if params.penalty_last_n < 0 else params.penalty_last_n
            add(
                llama_cpp.llama_sampler_init_penalties(
                    self._n_vocab,
                    last_n,
                    params.repeat_penalty,
                    params.frequency_penalty,
                    params.presence_penalty,
                )
            )
        if params.temperature <= 0:
            add(llama_cpp.llama_sampler_init_greedy())
        else:
            if params.top_k > 0:
                add(llama_cpp.llama_sampler_init_top_k(params.top_k))
            if params.top_p < 1.0:
                add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
            if params.min_p > 0.0:
                add(llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
            add(llama_cpp.llama_sampler_init_temp(params.temperature))
            seed = llama_cpp.LLAMA_DEFAULT_SEED if params.seed is None else params.seed
            add(llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        if penalised:
            # As llama-server: the penalties look back over the prompt's tail too.
            for token in prompt[-last_n:]:
                llama_cpp.llama_sampler_accept(chain, token)
        return chain

    def _new_grammar(self, params: SamplingParams) -> _Sampler | None:
        """The request's grammar sampler, or None; InvalidGrammar if llama.cpp refuses it."""
        if params.grammar is None:
            return None
        grammar = params.grammar.encode("utf-8")
        if not params.grammar_triggers:
            sampler = llama_cpp.llama_sampler_init_grammar(self._vocab, grammar, b"root")
        else:
            for pattern in params.grammar_triggers:
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise InvalidGrammar(f"grammar trigger {pattern!r}: {err}") from None
                if _NON_ECMA.search(pattern):
                    raise InvalidGrammar(f"grammar trigger {pattern!r}: not an ECMAScript regex")
            patterns = (ctypes.c_char_p * len(params.grammar_triggers))(
                *(p.encode("utf-8") for p in params.grammar_triggers)
            )
            no_tokens = (llama_cpp.llama_token * 1)()
            sampler = llama_cpp.llama_sampler_init_grammar_lazy_patterns(
                self._vocab, grammar, b"root", patterns, len(patterns), no_tokens, 0
            )
        if not sampler:
            raise InvalidGrammar("the grammar does not parse (GBNF with a root rule expected)")
        return sampler

    # ---- the asyncio side --------------------------------------------------------------

    async def generate(self, prompt: str, params: SamplingParams) -> AsyncGenerator[Chunk, None]:
        """Stream a completion: text chunks, then one chunk with finish_reason and usage."""
        if params.max_tokens is not None and params.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        tokens = self.tokenize(prompt)
        if not tokens:
            raise ValueError("the prompt is empty")
        if len(tokens) >= self.n_ctx_seq:
            raise PromptTooLong(
                f"prompt has {len(tokens)} tokens; a slot holds {self.n_ctx_seq} in all"
            )
        if params.max_tokens is not None and len(tokens) + params.max_tokens > self.n_ctx_seq:
            raise TooManyTokens(
                f"prompt has {len(tokens)} tokens and max_tokens is {params.max_tokens}: "
                f"{len(tokens) + params.max_tokens} in all; a slot holds {self.n_ctx_seq}"
            )
        sampler = self._new_sampler(params, tokens)
        try:
            grammar = self._new_grammar(params)
        except BaseException:
            llama_cpp.llama_sampler_free(sampler)
            raise
        loop = asyncio.get_running_loop()
        req = _Request(
            tokens=tokens,
            params=params,
            loop=loop,
            out=asyncio.Queue(),
            released=asyncio.Event(),
            enqueued_at=time.monotonic(),
            sampler=sampler,
            grammar=grammar,
        )
        with self._cond:
            if self._closed or self._stopping:
                req.free_samplers()
                raise EngineError("engine is closed")
            if len(self._waiting) + len(self._active) >= self.slots + self.queue_limit:
                req.free_samplers()
                raise QueueFull(
                    f"{len(self._active)} slots busy and {len(self._waiting)} requests queued"
                )
            if not (self._waiting or self._active):
                self._progress_at = req.enqueued_at
            self._waiting.append(req)
            self._requests_total += 1
            self._cond.notify()
        try:
            while True:
                item = await req.out.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            await self._abandon(req)

    async def _abandon(self, req: _Request) -> None:
        """Take an unfinished request back: dequeue it, or wait until its slot is released."""
        with self._cond:
            if req.phase is _Phase.DONE:
                return
            self._cancelled_total += 1
            if req.phase is _Phase.WAITING:
                self._waiting.remove(req)
                req.phase = _Phase.DONE
                req.free_samplers()
                return
            req.cancelled = True
            self._cond.notify()
            running = self._thread is not None and self._thread.is_alive()
        # Waiting for the release makes "aclose() returned" mean "the slot is free again";
        # it takes at most one decode step.
        if running:
            await req.released.wait()

    def stats(self) -> EngineStats:
        """Counters and gauges for /status and /metrics."""
        now = time.monotonic()
        with self._cond:
            self._forget_old_steps(now)
            busy = sum(s[2] for s in self._steps)
            working = bool(self._waiting or self._active)
            generated = sum(s[1] for s in self._steps)
            return EngineStats(
                slots=self.slots,
                active=len(self._active),
                queued=len(self._waiting),
                prompt_tokens_total=self._prompt_tokens_total,
                cached_tokens_total=self._cached_tokens_total,
                completion_tokens_total=self._completion_tokens_total,
                requests_total=self._requests_total,
                cancelled_total=self._cancelled_total,
                # Generated tokens per second of decode time over the last few seconds: the
                # speed the model runs at while busy, not diluted by idle time.
                tokens_per_second=generated / busy if busy > 0 else 0.0,
                # Seconds the work has stood still: no decode step finished meanwhile.
                stalled_seconds=now - self._progress_at if working else 0.0,
            )

    def _forget_old_steps(self, now: float) -> None:
        while self._steps and now - self._steps[0][0] > _RATE_WINDOW_S:
            self._steps.popleft()

    # ---- the decode thread -------------------------------------------------------------

    def _run(self) -> None:
        log.debug("decode thread started")
        while True:
            with self._cond:
                while not (self._stopping or self._waiting or self._active):
                    self._cond.wait()
                if self._stopping:
                    break
                self._drop_cancelled()
                self._admit()
                self._take_shared_prefixes()
                work = list(self._active.values())
            if not work:
                continue
            try:
                self._step(work)
            except Exception as err:  # keep serving: fail these requests, not the process
                log.exception("decode step failed")
                with self._cond:
                    for req in work:
                        if req.phase is not _Phase.DONE:
                            self._release(req, forget=True)
                            req.post(EngineError(f"decode failed: {err}"))
        log.debug("decode thread stopped")

    def _drop_cancelled(self) -> None:
        for req in [r for r in self._active.values() if r.cancelled]:
            self._release(req)

    def _admit(self) -> None:
        """Move queued requests into free slots, FIFO, each to the slot that saves most work."""
        while self._waiting:
            free = [s for s in self._slots if s.req is None]
            if not free:
                return
            req = self._waiting.popleft()
            tokens = req.tokens
            # At least the last prompt token is decoded: its logits start the completion.
            limit = len(tokens) - 1
            slot, reuse = max(
                ((s, _common_prefix(s.cached, tokens, limit)) for s in free),
                key=lambda pair: (pair[1], -pair[0].used_at),
            )
            if reuse < _MIN_REUSE:
                # A BOS or a template's first line in common is no reason to overwrite a
                # conversation's cache: take the least recently used slot instead.
                slot = min(free, key=lambda s: s.used_at)
                reuse = _common_prefix(slot.cached, tokens, limit)
            donor, shared = max(
                ((s, _common_prefix(s.cached, tokens, limit)) for s in self._slots),
                key=lambda pair: pair[1],
            )
            # A longer prefix that another admitted request is still decoding: wait for it.
            pending = max(
                (
                    (other, _common_prefix(other.tokens, tokens, limit))
                    for other in self._active.values()
                    if other.phase is _Phase.PROMPT and other.share_from is None
                ),
                key=lambda pair: pair[1],
                default=None,
            )
            if pending is not None and pending[1] >= max(reuse, shared) + _MIN_COPY:
                req.share_from, req.share_len = pending
                self._copy_prefix(slot, slot, reuse)
            elif shared >= reuse + _MIN_COPY:
                self._copy_prefix(donor, slot, shared)
                reuse = shared
            else:
                self._copy_prefix(slot, slot, reuse)
            req.slot = slot
            slot.req = req
            slot.used_at = time.monotonic()
            req.cached_tokens = reuse
            req.phase = _Phase.PROMPT
            req.admitted_at = slot.used_at
            req.text = _TextStream(req.params.stop)
            self._active[slot.seq_id] = req

    def _copy_prefix(self, donor: _Slot, slot: _Slot, length: int) -> None:
        """Give slot the first `length` tokens of donor's KV (a whole-stream copy, then a cut).

        With donor == slot, this only cuts the slot's own cache to its first `length` tokens.
        """
        if donor is not slot:
            # Across streams llama.cpp copies whole streams only; the data moves at the start
            # of the next llama_decode, before that batch writes anything.
            llama_cpp.llama_memory_seq_cp(self._memory, donor.seq_id, slot.seq_id, -1, -1)
            slot.cached[:] = donor.cached[:length]
        llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, length, -1)
        del slot.cached[length:]

    def _take_shared_prefixes(self) -> None:
        """Copy the prefix a waiting request shares once its donor has decoded it."""
        for req in self._active.values():
            donor = req.share_from
            if donor is not None and donor.slot and len(donor.slot.cached) >= req.share_len:
                self._share(req, donor.slot)

    def _share(self, req: _Request, donor: _Slot) -> None:
        """Stop waiting for a donor and copy what its slot holds of the request's prompt."""
        req.share_from = None
        assert req.slot is not None
        length = _common_prefix(donor.cached, req.tokens, req.share_len)
        if length > req.cached_tokens:
            self._copy_prefix(donor, req.slot, length)
            req.cached_tokens = length

    def _release(self, req: _Request, *, forget: bool = False) -> None:
        """Free the request's slot (its KV stays, as a cache) and samplers (lock held)."""
        slot = req.slot
        if slot is not None:
            if forget:  # a failed step may have written some cells: trust none
                llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
                slot.cached.clear()
            del self._active[slot.seq_id]
            slot.req = None
            slot.used_at = time.monotonic()
            req.slot = None
            for other in self._active.values():
                if other.share_from is req:  # cancelled before its prompt was done
                    self._share(other, slot)
        req.free_samplers()
        req.phase = _Phase.DONE
        req.signal_released()

    def _step(self, work: list[_Request]) -> None:
        """Build one batch from every active sequence, decode it, sample and dispatch."""
        b_token, b_pos, b_logits, b_seq = self._b_token, self._b_pos, self._b_logits, self._b_seq
        n = 0
        outputs: list[tuple[int, _Request]] = []  # (batch index with logits, request)
        # Generating sequences first: one token each, so a long prompt never stalls them.
        for req in work:
            if req.phase is _Phase.GENERATING:
                cached = req.slot.cached  # type: ignore[union-attr]
                b_token[n] = req.last_token
                b_pos[n] = len(cached)
                b_logits[n] = 1
                b_seq[n][0] = req.slot.seq_id  # type: ignore[union-attr]
                cached.append(req.last_token)
                outputs.append((n, req))
                n += 1
        # Then prompt chunks, oldest request first, in whatever room the batch has left.
        for req in work:
            if req.phase is not _Phase.PROMPT or req.share_from is not None:
                continue
            slot = req.slot
            assert slot is not None
            start = len(slot.cached)
            end = min(len(req.tokens), start + self.n_batch - n)
            take = end - start
            chunk = req.tokens[start:end]
            b_token[n : n + take] = chunk
            b_pos[n : n + take] = range(start, end)
            b_logits[n : n + take] = 0
            for i in range(n, n + take):
                b_seq[i][0] = slot.seq_id
            slot.cached.extend(chunk)
            n += take
            if end == len(req.tokens):
                b_logits[n - 1] = 1
                outputs.append((n - 1, req))
            if n == self.n_batch:
                break
        if n == 0:  # everyone waits for a shared prefix being decoded: cannot happen alone
            return
        self._batch.n_tokens = n

        started = time.monotonic()
        rc = llama_cpp.llama_decode(self._ctx, self._batch)
        if rc != 0:
            # 1 = no KV room (cannot happen with per-slot limits), <0 = invalid batch or fatal.
            raise EngineError(f"llama_decode returned {rc}")
        now = time.monotonic()

        generated = 0
        with self._cond:
            self._progress_at = now
            for index, req in outputs:
                if req.phase is _Phase.DONE or req.cancelled:
                    continue
                if req.grammar is None:
                    token = llama_cpp.llama_sampler_sample(req.sampler, self._ctx, index)
                else:
                    token = self._sample_constrained(req, index)
                    if token < 0:
                        self._release(req)
                        req.post(EngineError("the grammar allows no token here"))
                        continue
                if req.phase is _Phase.PROMPT:
                    req.phase = _Phase.GENERATING
                    req.first_token_at = now
                    self._prompt_tokens_total += len(req.tokens)
                    self._cached_tokens_total += req.cached_tokens
                generated += 1
                self._on_token(req, token, index, now)
            self._steps.append((now, generated, now - started))
            self._forget_old_steps(now)

    def _sample_constrained(self, req: _Request, index: int) -> int:
        """Sample under a grammar as llama.cpp's common_sampler does; -1 if nothing fits.

        The chain picks from the unconstrained row first and the grammar only checks that one
        token, which is cheap; only a token the grammar rejects costs a pass of the grammar
        over the whole vocabulary and a second pick. After a rejection the next few tokens go
        grammar-first at once: a model that keeps straying (a random one, or a small
        vocabulary where the grammar pass is cheap) then pays for one pick, not two.
        """
        grammar = req.grammar
        assert grammar is not None
        logits = self._row(index)
        token = -1
        if req.grammar_first == 0:
            self._fill(logits)
            llama_cpp.llama_sampler_apply(req.sampler, self._cand_ref)
            token = int(self._cand["id"][self._cand_arr.selected])
            self._one_buf[0] = llama_cpp.llama_token_data(token, 1.0, 0.0)
            self._one_arr.size, self._one_arr.selected, self._one_arr.sorted = 1, -1, False
            llama_cpp.llama_sampler_apply(grammar, self._one_ref)
            if self._one_buf[0].logit == -math.inf:
                token = -1
                req.grammar_first = _GRAMMAR_FIRST_AFTER_REJECT
        else:
            req.grammar_first -= 1
        if token < 0:
            self._fill(logits)
            llama_cpp.llama_sampler_apply(grammar, self._cand_ref)
            llama_cpp.llama_sampler_apply(req.sampler, self._cand_ref)
            selected = self._cand_arr.selected
            if selected < 0 or self._cand["logit"][selected] == -math.inf:
                return -1
            token = int(self._cand["id"][selected])
        llama_cpp.llama_sampler_accept(req.sampler, token)
        # An end-of-generation token ends the request; the grammar never sees it.
        if not llama_cpp.llama_vocab_is_eog(self._vocab, token):
            llama_cpp.llama_sampler_accept(grammar, token)
        return token

    def _fill(self, logits: npt.NDArray[np.float32]) -> None:
        """Load a row of logits into the candidate array, in vocabulary order."""
        self._cand["id"] = self._cand_ids
        self._cand["logit"] = logits
        arr = self._cand_arr
        arr.size, arr.selected, arr.sorted = self._n_vocab, -1, False

    def _row(self, index: int) -> npt.NDArray[np.float32]:
        """The raw logits of one batch row (valid until the next decode)."""
        ptr = llama_cpp.llama_get_logits_ith(self._ctx, index)
        return np.ctypeslib.as_array(ptr, shape=(self._n_vocab,))

    def _logprob(self, index: int, token: int, top_n: int) -> TokenLogprob:
        """The token's log-softmax over the raw logits, and the top_n most likely tokens."""
        logits = self._row(index).astype(np.float64)
        peak = logits.max()
        logprobs = logits - (peak + math.log(float(np.exp(logits - peak).sum())))
        top: tuple[TopLogprob, ...] = ()
        if top_n > 0:
            top_n = min(top_n, len(logprobs))
            best = np.argpartition(-logprobs, top_n - 1)[:top_n]
            best = best[np.argsort(-logprobs[best], kind="stable")]
            top = tuple(self._top(int(t), float(logprobs[t])) for t in best)
        piece = self._piece(token)
        return TokenLogprob(
            token=piece.decode("utf-8", errors="replace"),
            bytes=tuple(piece),
            logprob=float(logprobs[token]),
            top=top,
        )

    def _top(self, token: int, logprob: float) -> TopLogprob:
        piece = self._piece(token)
        return TopLogprob(
            token=piece.decode("utf-8", errors="replace"), bytes=tuple(piece), logprob=logprob
        )

    def _on_token(self, req: _Request, token: int, index: int, now: float) -> None:
        """Turn a sampled token into text, detect the end, post chunks (lock held)."""
        text_stream = req.text
        assert text_stream is not None
        req.last_token_at = now
        if llama_cpp.llama_vocab_is_eog(self._vocab, token):
            self._finish(req, FinishReason.STOP)
            return
        req.completion += 1
        self._completion_tokens_total += 1
        req.last_token = token
        req.unsent_ids.append(token)
        top_n = req.params.logprobs
        if top_n is not None:
            req.unsent_logprobs.append(self._logprob(index, token, top_n))
        text = text_stream.feed(self._piece(token))
        if text:
            req.post(
                Chunk(
                    text=text,
                    token_ids=tuple(req.unsent_ids),
                    logprobs=tuple(req.unsent_logprobs),
                )
            )
            req.unsent_ids.clear()
            req.unsent_logprobs.clear()
        if text_stream.stopped:
            self._finish(req, FinishReason.STOP)
        elif req.completion >= (req.params.max_tokens or self.n_ctx_seq) or (
            len(req.slot.cached) + 1 >= self.n_ctx_seq  # type: ignore[union-attr]
        ):
            # The slot holds prompt + completion - 1 (this token is not decoded yet):
            # together they never exceed one slot.
            self._finish(req, FinishReason.LENGTH)

    def _finish(self, req: _Request, reason: FinishReason) -> None:
        assert req.text is not None
        rest = req.text.finish() if not req.text.stopped else ""
        if rest:
            req.post(
                Chunk(
                    text=rest,
                    token_ids=tuple(req.unsent_ids),
                    logprobs=tuple(req.unsent_logprobs),
                )
            )
            req.unsent_ids.clear()
            req.unsent_logprobs.clear()
        timings = Timings(
            queue=req.admitted_at - req.enqueued_at,
            prompt=req.first_token_at - req.admitted_at,
            generation=req.last_token_at - req.first_token_at,
        )
        self._release(req)
        req.post(
            Chunk(
                finish_reason=reason,
                prompt_tokens=len(req.tokens),
                completion_tokens=req.completion,
                timings=timings,
                token_ids=tuple(req.unsent_ids),
                logprobs=tuple(req.unsent_logprobs),
                cached_tokens=req.cached_tokens,
            )
        )

    def _piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            piece = buf.raw[: max(n, 0)]
            self._pieces[token] = piece
        return piece


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    """Length of the common prefix of a and b, at most limit."""
    n = min(len(a), len(b), limit)
    if a[:n] == b[:n]:  # the usual case (an extension), compared in C
        return n
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def reason_for(llama_log: _LlamaLog, fallback: str) -> str:
    """The last few llama.cpp warnings/errors, which say why a load failed."""
    return "; ".join(llama_log.errors) or fallback

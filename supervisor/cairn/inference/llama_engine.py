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
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import contextlib
import ctypes
import enum
import logging
import os
import threading
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

import llama_cpp

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
)

log = logging.getLogger(__name__)

_RATE_WINDOW_S = 10.0  # tokens_per_second looks back this far
_LOAD_ERRORS_KEPT = 8


class EngineError(CairnError):
    """A request failed inside the engine (decode error, engine closed)."""


class _Phase(enum.Enum):
    WAITING = "waiting"
    PROMPT = "prompt"  # admitted, prompt not fully decoded yet
    GENERATING = "generating"
    DONE = "done"  # slot released; nothing more will be posted


@dataclass(eq=False)
class _Request:
    """One generation as both sides see it; fields below `out` belong to the decode thread."""

    tokens: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[Chunk | BaseException]
    released: asyncio.Event
    enqueued_at: float
    phase: _Phase = _Phase.WAITING
    cancelled: bool = False
    seq_id: int = -1
    n_past: int = 0  # tokens of this sequence in its KV stream
    sampler: int | None = None
    last_token: int = -1
    completion: int = 0
    unsent_ids: list[int] = field(default_factory=list)
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

        self._cond = threading.Condition()
        self._waiting: collections.deque[_Request] = collections.deque()
        self._active: dict[int, _Request] = {}
        self._free_seqs = list(range(slots))
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._closed = False
        # When the decode thread last made progress, or work arrived at an idle engine: a
        # thread that hangs in llama_decode shows as work standing still (`stalled_seconds`),
        # which the supervisor's probe tells apart from a busy engine.
        self._progress_at = time.monotonic()
        self._prompt_tokens_total = 0
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
        loop = asyncio.get_running_loop()
        req = _Request(
            tokens=tokens,
            params=params,
            loop=loop,
            out=asyncio.Queue(),
            released=asyncio.Event(),
            enqueued_at=time.monotonic(),
        )
        with self._cond:
            if self._closed or self._stopping:
                raise EngineError("engine is closed")
            if len(self._waiting) + len(self._active) >= self.slots + self.queue_limit:
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
                            self._release(req)
                            req.post(EngineError(f"decode failed: {err}"))
        log.debug("decode thread stopped")

    def _drop_cancelled(self) -> None:
        for req in [r for r in self._active.values() if r.cancelled]:
            self._release(req)

    def _admit(self) -> None:
        """Move queued requests into free slots, FIFO; the lowest free seq_id goes first."""
        while self._waiting and self._free_seqs:
            req = self._waiting.popleft()
            req.seq_id = self._free_seqs.pop(0)
            req.phase = _Phase.PROMPT
            req.admitted_at = time.monotonic()
            req.sampler = self._new_sampler(req.params)
            req.text = _TextStream(req.params.stop)
            self._active[req.seq_id] = req

    def _release(self, req: _Request) -> None:
        """Free the request's KV cells, sampler and slot (caller holds the lock)."""
        if req.seq_id >= 0:
            llama_cpp.llama_memory_seq_rm(self._memory, req.seq_id, -1, -1)
            del self._active[req.seq_id]
            self._free_seqs.append(req.seq_id)
            self._free_seqs.sort()
            req.seq_id = -1
        if req.sampler is not None:
            llama_cpp.llama_sampler_free(req.sampler)
            req.sampler = None
        req.phase = _Phase.DONE
        req.signal_released()

    def _new_sampler(self, params: SamplingParams) -> int:
        chain_params = llama_cpp.llama_sampler_chain_default_params()
        chain_params.no_perf = True
        chain: int = llama_cpp.llama_sampler_chain_init(chain_params)
        if params.temperature <= 0:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
            return chain
        seed = llama_cpp.LLAMA_DEFAULT_SEED if params.seed is None else params.seed & 0xFFFFFFFF
        if params.top_p < 1.0:
            llama_cpp.llama_sampler_chain_add(
                chain, llama_cpp.llama_sampler_init_top_p(params.top_p, 1)
            )
        llama_cpp.llama_sampler_chain_add(
            chain, llama_cpp.llama_sampler_init_temp(params.temperature)
        )
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(seed))
        return chain

    def _step(self, work: list[_Request]) -> None:
        """Build one batch from every active sequence, decode it, sample and dispatch."""
        batch = self._batch
        n = 0
        outputs: list[tuple[int, _Request]] = []  # (batch index with logits, request)

        def add(req: _Request, token: int, want_logits: bool) -> None:
            nonlocal n
            batch.token[n] = token
            batch.pos[n] = req.n_past
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = req.seq_id
            batch.logits[n] = want_logits
            if want_logits:
                outputs.append((n, req))
            req.n_past += 1
            n += 1

        # Generating sequences first: one token each, so a long prompt never stalls them.
        for req in work:
            if req.phase is _Phase.GENERATING:
                add(req, req.last_token, True)
        # Then prompt chunks, oldest request first, in whatever room the batch has left.
        for req in work:
            if req.phase is not _Phase.PROMPT:
                continue
            take = min(len(req.tokens) - req.n_past, self.n_batch - n)
            for _ in range(take):
                add(req, req.tokens[req.n_past], req.n_past + 1 == len(req.tokens))
            if n == self.n_batch:
                break
        batch.n_tokens = n

        started = time.monotonic()
        rc = llama_cpp.llama_decode(self._ctx, batch)
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
                assert req.sampler is not None
                token = int(llama_cpp.llama_sampler_sample(req.sampler, self._ctx, index))
                if req.phase is _Phase.PROMPT:
                    req.phase = _Phase.GENERATING
                    req.first_token_at = now
                    self._prompt_tokens_total += len(req.tokens)
                generated += 1
                self._on_token(req, token, now)
            self._steps.append((now, generated, now - started))
            self._forget_old_steps(now)

    def _on_token(self, req: _Request, token: int, now: float) -> None:
        """Turn a sampled token into text, detect the end, post chunks (lock held)."""
        assert req.text is not None
        req.last_token_at = now
        if llama_cpp.llama_vocab_is_eog(self._vocab, token):
            self._finish(req, FinishReason.STOP)
            return
        req.completion += 1
        self._completion_tokens_total += 1
        req.last_token = token
        req.unsent_ids.append(token)
        text = req.text.feed(self._piece(token))
        if text:
            req.post(Chunk(text=text, token_ids=tuple(req.unsent_ids)))
            req.unsent_ids.clear()
        if req.text.stopped:
            self._finish(req, FinishReason.STOP)
        elif req.completion >= (req.params.max_tokens or self.n_ctx_seq) or (
            req.n_past + 1 >= self.n_ctx_seq
        ):
            # n_past + 1 is prompt + completion: together they never exceed one slot.
            self._finish(req, FinishReason.LENGTH)

    def _finish(self, req: _Request, reason: FinishReason) -> None:
        assert req.text is not None
        rest = req.text.finish() if not req.text.stopped else ""
        if rest:
            req.post(Chunk(text=rest, token_ids=tuple(req.unsent_ids)))
            req.unsent_ids.clear()
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


def reason_for(llama_log: _LlamaLog, fallback: str) -> str:
    """The last few llama.cpp warnings/errors, which say why a load failed."""
    return "; ".join(llama_log.errors) or fallback

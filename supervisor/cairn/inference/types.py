"""What engines, the worker and the front agree on: requests, chunks, health, typed errors."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import msgspec

from cairn.config import ModelKind
from cairn.errors import CairnError


class QueueFull(CairnError):
    """Every slot is busy and the FIFO queue behind them is full."""


class PromptTooLong(CairnError, ValueError):
    """The prompt leaves no room for a completion in one slot's context."""


class TooManyTokens(CairnError, ValueError):
    """Prompt plus the asked max_tokens do not fit in one slot's context."""


class ModelLoadError(CairnError):
    """The model file could not be loaded; the message says why."""


class FinishReason(enum.StrEnum):
    """Why a generation ended (OpenAI's values)."""

    STOP = "stop"  # end-of-generation token or a stop sequence
    LENGTH = "length"  # max_tokens or the context size reached


@dataclass(frozen=True)
class SamplingParams:
    """One request's generation settings, as the engine honours them (the API validated them).

    Every field changes the answer, and every one is honoured by the engine; a request field
    the engine cannot honour is refused by the API with a 400, never dropped here.
    """

    # None: as many as fit in the slot after the prompt. A number that does not fit is the
    # request's fault (TooManyTokens), never cut silently.
    max_tokens: int | None = None
    temperature: float = 0.8
    top_p: float = 0.95
    seed: int | None = None
    stop: tuple[str, ...] = ()
    top_k: int = 0  # 0: off
    min_p: float = 0.0  # 0: off
    repeat_penalty: float = 1.0  # 1: off (llama.cpp's multiplicative penalty)
    presence_penalty: float = 0.0  # OpenAI's, -2..2
    frequency_penalty: float = 0.0  # OpenAI's, -2..2
    penalty_last_n: int = 64  # how many recent tokens the three penalties look at
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)
    # None: no logprobs; n >= 0: each generated token's logprob and the n most likely
    # alternatives (OpenAI's top_logprobs, 0..20).
    logprobs: int | None = None
    grammar: str | None = None  # GBNF (root rule "root") every generated token must fit
    # With a grammar: empty means it applies from the first token. Otherwise it is lazy:
    # llama.cpp's trigger patterns, regular expressions matched against the output from its
    # start; once one matches, the grammar constrains the rest, fed from the first capture
    # group (e.g. r"[\s\S]*?(<tool_call>[\s\S]*)").
    grammar_triggers: tuple[str, ...] = ()


@dataclass(frozen=True)
class TopLogprob:
    """One candidate token at one position: its text, bytes and log probability."""

    token: str
    bytes: tuple[int, ...]
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log probability and the most likely alternatives at its position.

    Log probabilities are of the model's own distribution (softmax of the raw logits), as
    OpenAI reports them, before temperature, penalties or a grammar reshape it.
    """

    token: str
    bytes: tuple[int, ...]
    logprob: float
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class Timings:
    """Where one request's time went, in seconds."""

    queue: float  # waiting for a free slot
    prompt: float  # prompt evaluation
    generation: float  # from the first to the last generated token


@dataclass(frozen=True)
class Chunk:
    """A piece of streamed output; the last one carries finish_reason, usage and timings."""

    text: str = ""
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    timings: Timings | None = None
    token_ids: tuple[int, ...] = field(default=())
    # With SamplingParams.logprobs: one entry per token whose text is in this chunk.
    logprobs: tuple[TokenLogprob, ...] = ()
    # Final chunk: prompt tokens taken from the KV cache instead of being decoded again.
    cached_tokens: int = 0


class ModelState(enum.StrEnum):
    """A model's worker as /status and the gossip digest name it."""

    STARTING = "starting"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    SOCKET = "socket"  # socket-activated on the first request; not known yet
    ASLEEP = "asleep"  # stopped when idle, woken by the next request


class EngineStats(msgspec.Struct, frozen=True, omit_defaults=True):
    """A text engine's counters and gauges: all of them, or none ({}) for an embedding worker."""

    slots: int | None = None
    active: int | None = None  # slots decoding a request
    queued: int | None = None  # requests waiting for a slot
    prompt_tokens_total: int | None = None
    completion_tokens_total: int | None = None
    requests_total: int | None = None
    cancelled_total: int | None = None
    tokens_per_second: float | None = None  # over the last few seconds of decode time
    stalled_seconds: float | None = None  # work standing still: no decode step finished
    cached_tokens_total: int | None = None  # prompt tokens taken from the KV cache, not decoded


class WorkerHealth(msgspec.Struct, frozen=True):
    """What a worker's GET /health says of itself."""

    model: str
    kind: ModelKind
    state: ModelState  # a worker that answers is ready
    pid: int
    load_seconds: float
    device: str  # cpu or cuda
    device_reason: str
    cores: list[int]  # the compute threads' cores, one each
    threads: dict[str, list[int]]  # thread id -> allowed cores
    stats: EngineStats


class ModelView(msgspec.Struct, frozen=True):
    """One model in /status: the front's view of its worker, and the worker's last health."""

    kind: ModelKind
    state: ModelState
    reason: str  # why it is not ready; empty otherwise
    pid: int | None
    starts: int | None  # worker starts so far (standalone only)
    load_seconds: float | None
    device: str | None
    device_reason: str | None
    cores: list[int]
    threads: dict[str, list[int]]
    stats: EngineStats

"""What engines and the worker agree on: request parameters, streamed chunks, typed errors."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from cairn.errors import CairnError


class QueueFull(CairnError):
    """Every slot is busy and the FIFO queue behind them is full."""


class PromptTooLong(CairnError, ValueError):
    """The prompt leaves no room for a completion in one slot's context."""


class ModelLoadError(CairnError):
    """The model file could not be loaded; the message says why."""


class FinishReason(enum.StrEnum):
    """Why a generation ended (OpenAI's values)."""

    STOP = "stop"  # end-of-generation token or a stop sequence
    LENGTH = "length"  # max_tokens or the context size reached


@dataclass(frozen=True)
class SamplingParams:
    """One request's generation settings."""

    max_tokens: int = 128
    temperature: float = 0.8
    top_p: float = 0.95
    seed: int | None = None
    stop: tuple[str, ...] = ()


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

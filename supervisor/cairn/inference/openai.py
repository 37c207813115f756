"""OpenAI wire format: request schemas (validated, errors name the field) and response shapes."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler

from cairn.inference.types import Chunk, SamplingParams, Timings
from cairn.validation import locate

log = logging.getLogger(__name__)

PREFIX = "/v1"  # where the daemon mounts the app below
MAX_STOP = 4
T = TypeVar("T")
_OWN = web.AppKey("openai", bool)  # marks the app: auth answers its refusals in this shape too


class ContentPart(msgspec.Struct, frozen=True):
    """One part of a multi-part message; only text parts are supported."""

    type: Literal["text"]
    text: str


class Message(msgspec.Struct, frozen=True):
    """One chat message."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart]

    def text(self) -> str:
        """The message's text, parts joined."""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(msgspec.Struct, frozen=True):
    """OpenAI's stream_options."""

    include_usage: bool = False


Temperature = Annotated[float, msgspec.Meta(ge=0, le=2)]
TopP = Annotated[float, msgspec.Meta(gt=0, le=1)]
MaxTokens = Annotated[int, msgspec.Meta(ge=1)]


class _Generation(msgspec.Struct, frozen=True, kw_only=True):
    """Fields shared by chat and text completions; unknown fields are ignored, as OpenAI does."""

    model: str
    max_tokens: MaxTokens | None = None
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=1)] = 1

    def sampling(self, default_max: int) -> SamplingParams:
        """The engine's view of these settings."""
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(
            max_tokens=self.max_tokens or default_max,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            stop=tuple(s for s in stop if s),
        )


class ChatRequest(_Generation, frozen=True, kw_only=True):
    """POST /v1/chat/completions."""

    messages: Annotated[list[Message], msgspec.Meta(min_length=1)]
    max_completion_tokens: MaxTokens | None = None


class CompletionRequest(_Generation, frozen=True, kw_only=True):
    """POST /v1/completions."""

    prompt: str | Annotated[list[str], msgspec.Meta(min_length=1, max_length=1)]

    def text(self) -> str:
        """The single prompt."""
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class EmbeddingRequest(msgspec.Struct, frozen=True, kw_only=True):
    """POST /v1/embeddings."""

    model: str
    input: str | Annotated[list[str], msgspec.Meta(min_length=1, max_length=2048)]
    encoding_format: Literal["float", "base64"] = "float"

    def texts(self) -> list[str]:
        """The inputs as a list."""
        return [self.input] if isinstance(self.input, str) else list(self.input)


class RequestError(Exception):
    """A request body OpenAI clients would get a 400 for; names the offending field."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.param = param


def parse(body: bytes, kind: type[T]) -> T:
    """Decode and validate a request body; RequestError names the field or the fault."""
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as err:
        raise RequestError(f"invalid request: {err}", locate(err).path or None) from None
    except msgspec.DecodeError as err:
        raise RequestError(f"request body is not valid JSON: {err}", None) from None
    except UnicodeDecodeError as err:
        raise RequestError(f"request body is not valid UTF-8: {err}", None) from None
    except RecursionError:  # msgspec's decoder recurses per level: e.g. 100000 '['
        raise RequestError("request body is not valid JSON: nested too deeply", None) from None


def check_stop(stop: tuple[str, ...]) -> None:
    """OpenAI allows at most four stop sequences."""
    if len(stop) > MAX_STOP:
        raise RequestError(f"at most {MAX_STOP} stop sequences are allowed", "stop")


def error(
    status: int,
    message: str,
    kind: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An error in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.Response(
        body=msgspec.json.encode(body),
        status=status,
        headers=headers,
        content_type="application/json",
    )


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The router's 404 and 405 and any unexpected exception, in OpenAI's shape too."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        kind = "server_error" if exc.status >= 500 else "invalid_request_error"
        return error(exc.status, exc.reason, kind, headers=allow)
    except Exception:
        log.exception("unhandled error serving %s %s", request.method, request.path)
        return error(500, "internal error; see the node's log", "server_error")


def create_app(routes: Iterable[web.AbstractRouteDef]) -> web.Application:
    """The OpenAI API as an app of its own, to mount at PREFIX: every answer in OpenAI's shape."""
    app = web.Application(middlewares=[_errors])
    app[_OWN] = True
    app.add_routes(routes)
    return app


def serves(request: web.Request) -> bool:
    """Whether the request is routed to the OpenAI app (any path under PREFIX, known or not)."""
    return any(_OWN in app for app in request.match_info.apps)


def timings_json(t: Timings | None, load: float) -> dict[str, float]:
    """Per-request timings, seconds: queue, load (cold start), prompt, generation."""
    if t is None:
        return {"queue": 0.0, "load": load, "prompt": 0.0, "generation": 0.0}
    return {"queue": t.queue, "load": load, "prompt": t.prompt, "generation": t.generation}


def usage(last: Chunk) -> dict[str, int]:
    """OpenAI's usage block from the final chunk."""
    return {
        "prompt_tokens": last.prompt_tokens,
        "completion_tokens": last.completion_tokens,
        "total_tokens": last.prompt_tokens + last.completion_tokens,
    }


class Envelope:
    """Id, creation time and model shared by every chunk of one response."""

    def __init__(self, model: str, prefix: str) -> None:
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model

    def chat(self, text: str, last: Chunk, extra: dict[str, Any]) -> dict[str, Any]:
        """A whole chat.completion."""
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": str(last.finish_reason),
                }
            ],
            "usage": usage(last),
            **extra,
        }

    def chat_chunk(self, delta: dict[str, str], finish: str | None) -> dict[str, Any]:
        """One chat.completion.chunk."""
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    def text(self, text: str, last: Chunk, extra: dict[str, Any]) -> dict[str, Any]:
        """A whole text_completion."""
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "text": text,
                    "logprobs": None,
                    "finish_reason": str(last.finish_reason),
                }
            ],
            "usage": usage(last),
            **extra,
        }

    def text_chunk(self, text: str, finish: str | None) -> dict[str, Any]:
        """One streamed text_completion piece."""
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
        }

    def usage_chunk(self, obj: str, last: Chunk) -> dict[str, Any]:
        """The final usage-only chunk of a stream with include_usage."""
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage(last),
        }

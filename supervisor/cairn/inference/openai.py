"""OpenAI wire format: request schemas (validated, errors name the field) and response shapes."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler

from cairn.inference import grammars
from cairn.inference.types import Chunk, SamplingParams, Timings, TokenLogprob
from cairn.validation import locate

log = logging.getLogger(__name__)

PREFIX = "/v1"  # where the daemon mounts the app below
MAX_STOP = 4
T = TypeVar("T")
V = TypeVar("V")
_OWN = web.AppKey("openai", bool)  # marks the app: auth answers its refusals in this shape too


class ContentPart(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One part of a multi-part message; only text parts are supported."""

    type: Literal["text"]
    text: str


class FunctionCall(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A call's function: its name and its arguments as a JSON text."""

    name: str
    arguments: str


class ToolCall(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A tool call an earlier assistant message made."""

    id: str
    type: Literal["function"]
    function: FunctionCall


class Message(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One chat message."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # assistant
    tool_call_id: str | None = None  # tool
    refusal: str | None = None  # assistant: a refusal it wrote
    audio: Any = None  # refused unless null
    function_call: Any = None  # the deprecated form of tool_calls: refused unless null

    def text(self) -> str | None:
        """The message's text, parts joined; None when it has none."""
        if self.content is None:
            return self.refusal
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)

    def template(self) -> dict[str, Any]:
        """The message as tools.template_messages takes it (OpenAI's shape, text joined)."""
        msg: dict[str, Any] = {"role": self.role, "content": self.text()}
        if self.name is not None:
            msg["name"] = self.name
        if self.tool_calls:
            msg["tool_calls"] = msgspec.to_builtins(self.tool_calls)
        if self.tool_call_id is not None:
            msg["tool_call_id"] = self.tool_call_id
        return msg


class StreamOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """OpenAI's stream_options (include_obfuscation changes nothing here: no padding is sent)."""

    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class FunctionDef(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A function the model may call."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None  # calls always follow the schema; see docs/api.md


class Tool(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One entry of `tools`: only functions."""

    type: Literal["function"]
    function: FunctionDef


class ChosenFunction(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The function a named tool_choice forces."""

    name: str


class NamedToolChoice(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """tool_choice naming one function."""

    type: Literal["function"]
    function: ChosenFunction


class TextFormat(
    msgspec.Struct, frozen=True, tag="text", tag_field="type", forbid_unknown_fields=True
):
    """response_format text: free text."""


class JsonObjectFormat(
    msgspec.Struct, frozen=True, tag="json_object", tag_field="type", forbid_unknown_fields=True
):
    """response_format json_object: any JSON object."""


class JsonSchemaSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """response_format json_schema's json_schema."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: str | None = None
    schema: dict[str, Any] | None = None  # none: any JSON object
    strict: bool | None = None  # the answer always follows the schema; see docs/api.md


class JsonSchemaFormat(
    msgspec.Struct, frozen=True, tag="json_schema", tag_field="type", forbid_unknown_fields=True
):
    """response_format json_schema: JSON valid under a schema."""

    json_schema: JsonSchemaSpec


Temperature = Annotated[float, msgspec.Meta(ge=0, le=2)]
Unit = Annotated[float, msgspec.Meta(ge=0, le=1)]
Penalty = Annotated[float, msgspec.Meta(ge=-2, le=2)]
Bias = Annotated[float, msgspec.Meta(ge=-100, le=100)]
MaxTokens = Annotated[int, msgspec.Meta(ge=1)]
Count = Annotated[int, msgspec.Meta(ge=0)]
Positive = Annotated[float, msgspec.Meta(gt=0)]

_OFF = SamplingParams()  # the samplers' neutral settings
OPENAI_TEMPERATURE = OPENAI_TOP_P = 1.0  # OpenAI's defaults, not llama.cpp's


def _given(value: V | None, default: V) -> V:
    """A field's value, or its default where it is null or absent."""
    return default if value is None else value


class _Generation(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Fields shared by chat and text completions; an unknown field is a 400, as at OpenAI."""

    model: str
    max_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: Unit | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: Annotated[int, msgspec.Meta(ge=1)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, Bias] | None = None
    # llama.cpp's samplers, as llama-server names them
    top_k: Count | None = None
    min_p: Unit | None = None
    repeat_penalty: Positive | None = None
    repeat_last_n: Count | None = None
    # accepted, no effect on the answer
    user: str | None = None
    metadata: Any = None  # an object of strings; checked in check(), so depth errors say so
    store: bool | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None

    def _refusals(self) -> list[tuple[str, bool, str]]:
        """(field, whether its value asks for something not honoured, why) for check()."""
        return [("n", self.n not in (None, 1), "only n = 1 is supported")]

    def check(self) -> None:
        """Refuse, naming the field, whatever this request asks that is not honoured."""
        for name, refused, why in self._refusals():
            if refused:
                raise RequestError(f"`{name}` is not supported: {why}", name)
        meta = self.metadata
        if meta is not None and not (
            isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())
        ):
            raise RequestError("metadata must be an object of strings", "metadata")
        stops = self.stops()
        if len(stops) > MAX_STOP:
            raise RequestError(f"at most {MAX_STOP} stop sequences are allowed", "stop")
        for key in self.logit_bias or {}:
            if not (key.isascii() and key.isdigit()):
                raise RequestError(
                    f"logit_bias keys must be token ids (non-negative integers), not {key!r}",
                    "logit_bias",
                )

    def stops(self) -> tuple[str, ...]:
        """The stop sequences, empty ones dropped."""
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return tuple(s for s in stop if s)

    def wants_usage(self) -> bool:
        """Whether a stream ends with a usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)

    def _limit(self) -> int | None:
        return self.max_tokens

    def _logprobs(self) -> int | None:
        return None

    def sampling(
        self, grammar: str | None = None, triggers: tuple[str, ...] = ()
    ) -> SamplingParams:
        """The engine's view of these settings (check() passed)."""
        return SamplingParams(
            max_tokens=self._limit(),
            temperature=_given(self.temperature, OPENAI_TEMPERATURE),
            top_p=_given(self.top_p, OPENAI_TOP_P),
            seed=self.seed,
            stop=self.stops(),
            top_k=_given(self.top_k, _OFF.top_k),
            min_p=_given(self.min_p, _OFF.min_p),
            repeat_penalty=_given(self.repeat_penalty, _OFF.repeat_penalty),
            presence_penalty=_given(self.presence_penalty, _OFF.presence_penalty),
            frequency_penalty=_given(self.frequency_penalty, _OFF.frequency_penalty),
            penalty_last_n=_given(self.repeat_last_n, _OFF.penalty_last_n),
            logit_bias=tuple(sorted((int(k), v) for k, v in (self.logit_bias or {}).items())),
            logprobs=self._logprobs(),
            grammar=grammar,
            grammar_triggers=triggers if grammar else (),
        )


class ChatRequest(_Generation, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/chat/completions."""

    messages: Annotated[list[Message], msgspec.Meta(min_length=1)]
    max_completion_tokens: MaxTokens | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: TextFormat | JsonObjectFormat | JsonSchemaFormat | None = None
    prompt_cache_retention: str | None = None  # no effect on the answer
    # refused unless null or neutral (see _refusals)
    audio: Any = None
    modalities: list[str] | None = None
    prediction: Any = None
    web_search_options: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    functions: Any = None
    function_call: Any = None

    def _refusals(self) -> list[tuple[str, bool, str]]:
        return [
            *super()._refusals(),
            ("audio", self.audio is not None, "no audio output"),
            ("modalities", self.modalities not in (None, ["text"]), "text output only"),
            ("prediction", self.prediction is not None, "no predicted outputs"),
            ("web_search_options", self.web_search_options is not None, "no web search"),
            ("reasoning_effort", self.reasoning_effort is not None, "no reasoning models"),
            ("verbosity", self.verbosity is not None, "no verbosity control"),
            ("functions", self.functions is not None, "deprecated; use `tools`"),
            ("function_call", self.function_call is not None, "deprecated; use `tool_choice`"),
        ]

    def check(self) -> None:
        """The shared checks, then messages, tools and response_format."""
        super().check()
        if self.top_logprobs is not None and not self.logprobs:
            raise RequestError("`top_logprobs` needs `logprobs` set to true", "top_logprobs")
        for i, m in enumerate(self.messages):
            _check_message(m, f"messages.{i}")
        names = [t.function.name for t in self.tools or []]
        if len(set(names)) != len(names):
            raise RequestError("tool names must be unique", "tools")
        for i, t in enumerate(self.tools or []):
            _check_schema(t.function.parameters, f"tools.{i}.function.parameters")
        choice = self.tool_choice
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise RequestError(
                f"tool_choice names {choice.function.name!r}, which is not in `tools`",
                "tool_choice",
            )
        if choice not in (None, "none") and not names:
            raise RequestError("tool_choice needs `tools`", "tool_choice")
        fmt = self.response_format
        if isinstance(fmt, JsonSchemaFormat):
            _check_schema(fmt.json_schema.schema, "response_format.json_schema.schema")

    def choice(self) -> tuple[str, str | None]:
        """(none | auto | required | named, the named function's name)."""
        c = self.tool_choice
        if isinstance(c, NamedToolChoice):
            return "named", c.function.name
        return c or ("auto" if self.tools else "none"), None

    def answer_schema(self) -> dict[str, Any] | None:
        """The JSON schema an answer follows (response_format), None for free text."""
        fmt = self.response_format
        if isinstance(fmt, JsonObjectFormat):
            return {"type": "object"}
        if isinstance(fmt, JsonSchemaFormat):
            return fmt.json_schema.schema or {"type": "object"}
        return None

    def _limit(self) -> int | None:
        # OpenAI: max_completion_tokens replaces the deprecated max_tokens.
        return self.max_completion_tokens or self.max_tokens

    def limit_param(self) -> str:
        """The field that set the completion limit."""
        return "max_completion_tokens" if self.max_completion_tokens else "max_tokens"

    def _logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


def _check_message(m: Message, path: str) -> None:
    for name in ("audio", "function_call"):
        if getattr(m, name) is not None:
            raise RequestError(f"`{name}` in messages is not supported", f"{path}.{name}")
    if m.role == "assistant":
        if m.content is None and not m.tool_calls and m.refusal is None:
            raise RequestError("an assistant message needs content or tool_calls", path)
    elif m.content is None:
        raise RequestError(f"a {m.role} message needs content", f"{path}.content")
    elif m.tool_calls:
        raise RequestError("only assistant messages carry tool_calls", f"{path}.tool_calls")
    if m.role == "tool" and not m.tool_call_id:
        raise RequestError("a tool message needs tool_call_id", f"{path}.tool_call_id")


def _check_schema(schema: dict[str, Any] | None, path: str) -> None:
    if schema is None:
        return
    try:
        grammars.check(schema)
    except grammars.SchemaError as err:
        where = ".".join(p for p in (path, err.path) if p)
        raise RequestError(f"{err} (at {where})", where) from None


class CompletionRequest(_Generation, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/completions."""

    prompt: str | Annotated[list[str], msgspec.Meta(min_length=1, max_length=1)]
    logprobs: Annotated[int, msgspec.Meta(ge=0, le=5)] | None = None
    # refused unless null or neutral (see _refusals)
    echo: bool | None = None
    suffix: str | None = None
    best_of: Annotated[int, msgspec.Meta(ge=1)] | None = None

    def _refusals(self) -> list[tuple[str, bool, str]]:
        return [
            *super()._refusals(),
            ("echo", bool(self.echo), "the prompt is not echoed"),
            ("suffix", bool(self.suffix), "no insertion (fill-in-the-middle)"),
            ("best_of", self.best_of not in (None, 1), "only best_of = 1 is supported"),
        ]

    def text(self) -> str:
        """The single prompt."""
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def limit_param(self) -> str:
        """The field that set the completion limit."""
        return "max_tokens"

    def _logprobs(self) -> int | None:
        return self.logprobs


class EmbeddingRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/embeddings."""

    model: str
    input: str | Annotated[list[str], msgspec.Meta(min_length=1, max_length=2048)]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = None  # refused: the model's own size only
    user: str | None = None

    def check(self) -> None:
        """Refuse `dimensions`: vectors keep the model's own size."""
        if self.dimensions is not None:
            raise RequestError(
                "`dimensions` is not supported: vectors keep the model's own size", "dimensions"
            )

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
        where = locate(err)
        if where.key == "unknown":
            raise RequestError(
                f"Unrecognized request argument supplied: {where.path}", where.path
            ) from None
        # A dict's values show as NAME[...]: the param is the dict's own field.
        raise RequestError(
            f"invalid request: {err}", where.path.replace("[...]", "") or None
        ) from None
    except msgspec.DecodeError as err:
        raise RequestError(f"request body is not valid JSON: {err}", None) from None
    except UnicodeDecodeError as err:
        raise RequestError(f"request body is not valid UTF-8: {err}", None) from None
    except RecursionError:  # msgspec's decoder recurses per level: e.g. 100000 '['
        raise RequestError("request body is not valid JSON: nested too deeply", None) from None


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


def usage(last: Chunk) -> dict[str, Any]:
    """OpenAI's usage block from the final chunk."""
    return {
        "prompt_tokens": last.prompt_tokens,
        "completion_tokens": last.completion_tokens,
        "total_tokens": last.prompt_tokens + last.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": last.cached_tokens},
    }


def chat_logprobs(entries: Iterable[TokenLogprob]) -> dict[str, Any]:
    """Chat logprobs: choices[].logprobs with one `content` entry per token."""
    return {
        "content": [
            {
                "token": e.token,
                "logprob": e.logprob,
                "bytes": list(e.bytes),
                "top_logprobs": [
                    {"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes)} for t in e.top
                ],
            }
            for e in entries
        ],
        "refusal": None,
    }


def text_logprobs(entries: Sequence[TokenLogprob], offset: int) -> dict[str, Any]:
    """Completions logprobs in OpenAI's legacy shape.

    offset: characters before the first token (the prompt's, as OpenAI counts text_offset,
    plus what earlier chunks sent).
    """
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e.token)
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [{t.token: t.logprob for t in e.top} for e in entries],
        "text_offset": offsets,
    }


class Envelope:
    """Id, creation time and model shared by every chunk of one response."""

    def __init__(self, model: str, prefix: str, *, stream_usage: bool = False) -> None:
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.stream_usage = stream_usage  # chunks carry usage: null before the usage chunk

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def chat(
        self,
        message: dict[str, Any],
        finish: str,
        last: Chunk,
        logprobs: dict[str, Any] | None,
        extra: dict[str, Any],
    ) -> dict[str, Any]:
        """A whole chat.completion; message is {"content", "tool_calls"?}."""
        return {
            **self._head("chat.completion"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "refusal": None, **message},
                    "logprobs": logprobs,
                    "finish_reason": finish,
                }
            ],
            "usage": usage(last),
            **extra,
        }

    def chat_chunk(
        self, delta: dict[str, Any], finish: str | None, logprobs: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """One chat.completion.chunk."""
        chunk = {
            **self._head("chat.completion.chunk"),
            "choices": [
                {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            ],
        }
        if self.stream_usage:
            chunk["usage"] = None
        return chunk

    def text(
        self, text: str, last: Chunk, logprobs: dict[str, Any] | None, extra: dict[str, Any]
    ) -> dict[str, Any]:
        """A whole text_completion."""
        return {
            **self._head("text_completion"),
            "choices": [
                {
                    "index": 0,
                    "text": text,
                    "logprobs": logprobs,
                    "finish_reason": str(last.finish_reason),
                }
            ],
            "usage": usage(last),
            **extra,
        }

    def text_chunk(
        self, text: str, finish: str | None, logprobs: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """One streamed text_completion piece."""
        chunk = {
            **self._head("text_completion"),
            "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}],
        }
        if self.stream_usage:
            chunk["usage"] = None
        return chunk

    def usage_chunk(self, obj: str, last: Chunk) -> dict[str, Any]:
        """The final usage-only chunk of a stream with include_usage."""
        return {**self._head(obj), "choices": [], "usage": usage(last)}

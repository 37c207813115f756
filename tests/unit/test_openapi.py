"""The OpenAPI document describes /v1: valid JSON Schema, every route, the shapes Cairn sends."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import jsonschema
import msgspec
import pytest
from aiohttp import web

from cairn import config
from cairn.inference import openai
from cairn.inference.front import Inference
from cairn.system.units import Units
from tests.harness.openapi import (
    OPENAPI,
    SSE,
    WEATHER,
    check_request,
    check_response,
    events,
)

SCHEMAS = OPENAPI["components"]["schemas"]


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_every_schema_is_json_schema_2020_12_and_every_ref_resolves() -> None:
    assert OPENAPI["openapi"].startswith("3.1.")
    for name, schema in SCHEMAS.items():
        jsonschema.Draft202012Validator.check_schema(schema)
        assert "description" not in schema or schema["description"], name
    for ref in _refs(OPENAPI):
        target: Any = OPENAPI
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]  # a KeyError names a dangling ref


def test_every_v1_route_is_described() -> None:
    served = {(openai.PREFIX + r.path, r.method.lower()) for r in _front_routes()}
    described = {
        (path, method)
        for path, ops in OPENAPI["paths"].items()
        if path.startswith(openai.PREFIX + "/")
        for method in ops
    }
    assert served == described


def _front_routes() -> list[web.RouteDef]:
    cfg = config.from_mapping({"version": 1, "node": {"state_dir": "/nonexistent"}})
    inf = Inference(cfg, Path("/nonexistent"), cast(Units, object()))  # routes only, never run
    return [r for r in inf.routes() if isinstance(r, web.RouteDef)]


@pytest.mark.parametrize(
    ("path", "struct"),
    [
        ("/v1/chat/completions", openai.ChatRequest),
        ("/v1/completions", openai.CompletionRequest),
        ("/v1/embeddings", openai.EmbeddingRequest),
    ],
)
def test_every_request_field_the_api_reads_is_described(
    path: str, struct: type[msgspec.Struct]
) -> None:
    schema = OPENAPI["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    props = SCHEMAS[schema["$ref"].rsplit("/", 1)[1]]["properties"]
    assert set(struct.__struct_fields__) <= set(props)


AGENT_CHAT = {
    "model": "demo",
    "messages": [
        {"role": "system", "content": "You call tools."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo?"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "12 C"},
    ],
    "tools": [WEATHER],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "parallel_tool_calls": False,
    "response_format": {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
    },
    "logprobs": True,
    "top_logprobs": 3,
    "presence_penalty": 0.5,
    "frequency_penalty": -0.5,
    "logit_bias": {"65": -100, "66": 5.5},
    "top_k": 40,
    "min_p": 0.05,
    "repeat_penalty": 1.1,
    "seed": 7,
    "stream": True,
    "stream_options": {"include_usage": True},
    "max_completion_tokens": 64,
    "max_tokens": None,
    "temperature": None,
    "stop": ["\n\n"],
}


def test_an_agent_request_with_every_field_the_issue_adds_is_described() -> None:
    check_request("/v1/chat/completions", AGENT_CHAT)
    for choice in ("none", "auto", "required"):
        check_request("/v1/chat/completions", {**AGENT_CHAT, "tool_choice": choice})
    for fmt in ("text", "json_object"):
        check_request("/v1/chat/completions", {**AGENT_CHAT, "response_format": {"type": fmt}})
    check_request(
        "/v1/completions",
        {"model": "demo", "prompt": ["one"], "logprobs": 2, "echo": False, "top_k": 0},
    )
    check_request("/v1/embeddings", {"model": "e", "input": ["a"], "encoding_format": "base64"})


@pytest.mark.parametrize(
    "change",
    [
        {"tool_choice": "sometimes"},
        {"response_format": {"type": "yaml"}},
        {"top_logprobs": 21},
        {"presence_penalty": 2.5},
        {"top_p": 1.5},
        {"logit_bias": {"a": 1}},
        {"messages": [{"role": "tool", "content": "no id"}]},
        {"messages": []},
        {"n": 2},
    ],
)
def test_requests_outside_the_api_are_not_described(change: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        check_request("/v1/chat/completions", {**AGENT_CHAT, **change})


HEAD = {"id": "chatcmpl-1", "created": 1, "model": "demo"}
TIMINGS = {"queue": 0.0, "load": 0.5, "prompt": 0.1, "generation": 0.2}
USAGE = {
    "prompt_tokens": 5,
    "completion_tokens": 2,
    "total_tokens": 7,
    "prompt_tokens_details": {"cached_tokens": 4},
}
TOKEN = {
    "token": "{",
    "logprob": -0.25,
    "bytes": [123],
    "top_logprobs": [{"token": "{", "logprob": -0.25, "bytes": [123]}],
}
CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
# The shapes of OpenAI's answers with what issue 16 adds (tool calls, logprobs, cached tokens):
# each must be one the document describes. Live answers are checked in test_conformance.
ANSWERS: list[tuple[str, str, dict[str, Any]]] = [
    (
        "/v1/chat/completions",
        "application/json",
        {
            **HEAD,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": None,
                        "refusal": None,
                        "tool_calls": [CALL],
                    },
                    "logprobs": {"content": [TOKEN], "refusal": None},
                    "finish_reason": "tool_calls",
                }
            ],
            "usage": USAGE,
            "timings": TIMINGS,
        },
    ),
    (
        "/v1/chat/completions",
        SSE,
        {
            **HEAD,
            "object": "chat.completion.chunk",
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{**CALL, "index": 0}]},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
            "usage": None,
        },
    ),
    (
        "/v1/chat/completions",
        SSE,
        {
            **HEAD,
            "object": "chat.completion.chunk",
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"a"'}}]},
                    "logprobs": {"content": [TOKEN], "refusal": None},
                    "finish_reason": None,
                }
            ],
        },
    ),
    (
        "/v1/chat/completions",
        SSE,
        {**HEAD, "object": "chat.completion.chunk", "choices": [], "usage": USAGE},
    ),
    (
        "/v1/completions",
        "application/json",
        {
            **HEAD,
            "object": "text_completion",
            "choices": [
                {
                    "index": 0,
                    "text": "ab",
                    "logprobs": {
                        "tokens": ["a", "b"],
                        "token_logprobs": [-0.5, -1.0],
                        "top_logprobs": [{"a": -0.5}, {"b": -1.0}],
                        "text_offset": [3, 4],
                    },
                    "finish_reason": "length",
                }
            ],
            "usage": USAGE,
            "timings": TIMINGS,
        },
    ),
    (
        "/v1/completions",
        SSE,
        {
            **HEAD,
            "object": "text_completion",
            "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}],
            "usage": None,
            "timings": TIMINGS,
        },
    ),
]


@pytest.mark.parametrize(("path", "media", "answer"), ANSWERS)
def test_the_answers_agents_get_are_described(path: str, media: str, answer: Any) -> None:
    check_response(path, "post", 200, answer, media)


@pytest.mark.parametrize(
    ("index", "change"),
    [
        (0, {"timings": None}),  # Cairn always sends its timings
        (0, {"object": "chat.completion.chunk"}),
        (0, {"usage": {**USAGE, "prompt_tokens_details": {}}}),
        (1, {"choices": [{"index": 0, "delta": {"content": 5}, "finish_reason": None}]}),
        (4, {"choices": [{"index": 0, "text": "x", "logprobs": None, "finish_reason": "x"}]}),
    ],
)
def test_answers_off_the_contract_are_not_described(index: int, change: dict[str, Any]) -> None:
    path, media, answer = ANSWERS[index]
    with pytest.raises(jsonschema.ValidationError):
        check_response(path, "post", 200, {**answer, **change}, media)


@pytest.mark.parametrize("status", [400, 404, 429, 503, 504, 500])
def test_openai_errors_are_described(status: int) -> None:
    resp = openai.error(status, "why", "invalid_request_error", param="messages", code="x")
    assert resp.body is not None
    doc = msgspec.json.decode(resp.body)  # type: ignore[arg-type]
    for path, method in (("/v1/chat/completions", "post"), ("/v1/models/{model}", "get")):
        check_response(path, method, status, doc)
    check_response("/v1/completions", "post", 200, doc, SSE)  # a stream's last event


def test_events_take_only_whole_streams() -> None:
    assert events(b": waking a\n\ndata: {}\n\ndata: [DONE]\n\n") == [{}]
    for broken in (b"data: {}\n\n", b"data: [DONE]\n\ndata: {}\n\n", b"event: x\n\n"):
        with pytest.raises(AssertionError):
            events(broken)

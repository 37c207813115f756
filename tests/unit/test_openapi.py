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
from cairn.inference.types import Chunk, FinishReason, Timings
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


LAST = Chunk(
    text="",
    finish_reason=FinishReason.STOP,
    prompt_tokens=5,
    completion_tokens=3,
    timings=Timings(0.0, 0.1, 0.2),
)
EXTRA = {"timings": openai.timings_json(LAST.timings, 0.5)}


def test_the_answers_the_api_builds_are_described() -> None:
    env = openai.Envelope("demo", "chatcmpl")
    check_response("/v1/chat/completions", "post", 200, env.chat("hi", LAST, EXTRA))
    check_response("/v1/completions", "post", 200, env.text("hi", LAST, EXTRA))
    chat = "/v1/chat/completions"
    for chunk in (
        env.chat_chunk({"role": "assistant", "content": ""}, None),
        env.chat_chunk({"content": "hi"}, None),
        {**env.chat_chunk({}, "stop"), **EXTRA},
        env.usage_chunk("chat.completion.chunk", LAST),
    ):
        check_response(chat, "post", 200, chunk, SSE)
    for chunk in (
        env.text_chunk("hi", None),
        {**env.text_chunk("", "length"), **EXTRA},
        env.usage_chunk("text_completion", LAST),
    ):
        check_response("/v1/completions", "post", 200, chunk, SSE)


def test_a_chunk_of_one_kind_is_not_taken_for_the_other() -> None:
    env = openai.Envelope("demo", "chatcmpl")
    with pytest.raises(jsonschema.ValidationError):
        check_response("/v1/completions", "post", 200, env.chat_chunk({"content": "x"}, None), SSE)
    with pytest.raises(jsonschema.ValidationError):  # no timings: Cairn always sends them
        check_response("/v1/chat/completions", "post", 200, env.chat("hi", LAST, {}))


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

"""The worker's OpenAI endpoints over a scripted engine: request -> SamplingParams and prompt,
engine output -> response shapes (tool calls, logprobs, usage), engine refusals -> 400s."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from cairn import config
from cairn.inference import grammars, tools, worker
from cairn.inference.chat import ChatTemplate
from cairn.inference.types import (
    Chunk,
    EngineStats,
    FinishReason,
    PromptTooLong,
    SamplingParams,
    TokenLogprob,
    TooManyTokens,
    TopLogprob,
)
from tests.unit.test_chat_templates import HERMES, called

WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12}},
            "required": ["city"],
        },
    },
}
CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def _lp(token: str) -> TokenLogprob:
    top = (TopLogprob(token, tuple(token.encode()), -0.5), TopLogprob("x", (120,), -1.5))
    return TokenLogprob(token, tuple(token.encode()), -0.5, top)


class ScriptedEngine:
    """Yields the scripted text one piece per chunk (or raises); records what it was asked."""

    gpu_offload = False

    def __init__(self, template: str | None = HERMES) -> None:
        self.chat_template = ChatTemplate(template, bos="<s>", eos="</s>")
        self.pieces: list[str] = ["Hello", " there"]
        self.finish = FinishReason.STOP
        self.error: Exception | None = None
        self.cached = 0
        self.asked: list[tuple[str, SamplingParams]] = []

    async def generate(self, prompt: str, params: SamplingParams) -> AsyncGenerator[Chunk, None]:
        self.asked.append((prompt, params))
        if self.error is not None:
            raise self.error
        for piece in self.pieces:
            lps = (_lp(piece),) if params.logprobs is not None else ()
            yield Chunk(text=piece, logprobs=lps)
        yield Chunk(
            finish_reason=self.finish,
            prompt_tokens=11,
            completion_tokens=len(self.pieces),
            cached_tokens=self.cached,
        )

    def stats(self) -> EngineStats:
        return EngineStats()

    def close(self) -> None:
        pass

    @property
    def prompt(self) -> str:
        return self.asked[-1][0]

    @property
    def params(self) -> SamplingParams:
        return self.asked[-1][1]


@pytest.fixture
def engine() -> ScriptedEngine:
    return ScriptedEngine()


async def serve(aiohttp_client: Any, tmp_path: Path, engine: ScriptedEngine) -> TestClient:
    """The worker's app over this engine."""
    cfg = config.from_mapping(
        {
            "version": 1,
            "node": {"name": "unit", "state_dir": str(tmp_path)},
            "models": [{"name": "m", "path": str(tmp_path / "m.gguf"), "kind": "gguf"}],
        }
    )
    model = cfg.model("m")
    assert model is not None
    w = worker.Worker(model, [])
    w.generator = engine
    c: TestClient = await aiohttp_client(worker.create_app(w))
    return c


@pytest.fixture
async def client(aiohttp_client: Any, tmp_path: Path, engine: ScriptedEngine) -> TestClient:
    return await serve(aiohttp_client, tmp_path, engine)


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "Weather in Paris?"}], **fields}


async def post(client: TestClient, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    resp = await client.post(path, json=body)
    return resp.status, await resp.json()


async def stream(client: TestClient, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    resp = await client.post(path, json={**body, "stream": True})
    assert resp.status == 200
    events = []
    for line in (await resp.text()).splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            events.append(json.loads(line[6:]))
    return events


# ---- tool calls ------------------------------------------------------------------------


async def test_required_tool_call_is_parsed_with_an_eager_grammar(
    client: TestClient, engine: ScriptedEngine
) -> None:
    engine.pieces = [CALL_TEXT]
    status, doc = await post(
        client, "/v1/chat/completions", chat(tools=[WEATHER], tool_choice="required")
    )
    assert status == 200, doc
    choice = doc["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    # The tools reached the template, and the grammar is the tools' own, from the first token.
    assert '"name": "get_weather"' in engine.prompt and "<tools>" in engine.prompt
    assert engine.params.grammar is not None and "tool-call ::=" in engine.params.grammar
    assert engine.params.grammar_triggers == ()


async def test_auto_tool_choice_makes_the_grammar_lazy(
    client: TestClient, engine: ScriptedEngine
) -> None:
    status, doc = await post(client, "/v1/chat/completions", chat(tools=[WEATHER]))
    assert status == 200
    assert doc["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Hello there",
        "refusal": None,
    }
    assert doc["choices"][0]["finish_reason"] == "stop"
    assert engine.params.grammar_triggers == (r"[\s\S]*?(<tool_call>[\s\S]*)",)


async def test_tool_choice_none_renders_no_tools_and_parses_no_calls(
    client: TestClient, engine: ScriptedEngine
) -> None:
    engine.pieces = [CALL_TEXT]
    status, doc = await post(
        client, "/v1/chat/completions", chat(tools=[WEATHER], tool_choice="none")
    )
    assert status == 200
    assert doc["choices"][0]["message"]["content"] == CALL_TEXT
    assert "tool_calls" not in doc["choices"][0]["message"]
    assert "<tools>" not in engine.prompt and engine.params.grammar is None


async def test_named_tool_choice_constrains_to_that_function(
    client: TestClient, engine: ScriptedEngine
) -> None:
    other = {"type": "function", "function": {"name": "now"}}
    named = {"type": "function", "function": {"name": "now"}}
    status, _ = await post(
        client, "/v1/chat/completions", chat(tools=[WEATHER, other], tool_choice=named)
    )
    assert status == 200
    grammar = engine.params.grammar
    assert grammar is not None and '"\\"now\\""' in grammar and "get_weather" not in grammar


async def test_parallel_tool_calls_false_allows_one_call(
    client: TestClient, engine: ScriptedEngine
) -> None:
    await post(client, "/v1/chat/completions", chat(tools=[WEATHER], tool_choice="required"))
    assert engine.params.grammar is not None
    assert 'calls ::= tool-call ("\\n" tool-call)*' in engine.params.grammar
    body = chat(tools=[WEATHER], tool_choice="required", parallel_tool_calls=False)
    await post(client, "/v1/chat/completions", body)
    assert "calls ::= tool-call\n" in engine.params.grammar


async def test_streamed_tool_calls_arrive_as_openai_deltas(
    client: TestClient, engine: ScriptedEngine
) -> None:
    second = CALL_TEXT.replace("Paris", "Rome")
    engine.pieces = ["Checking.\n", *CALL_TEXT, "\n", *second]  # one character per chunk
    chunks = await stream(client, "/v1/chat/completions", chat(tools=[WEATHER]))
    deltas = [c["choices"][0]["delta"] for c in chunks]
    content = "".join(d.get("content") or "" for d in deltas)
    assert content == "Checking.\n"  # nothing of the calls' text
    calls = [tc for d in deltas for tc in d.get("tool_calls", [])]
    assert calls[0]["index"] == 0 and calls[0]["type"] == "function"
    assert calls[0]["id"].startswith("call_")
    assert calls[0]["function"] == {"name": "get_weather", "arguments": ""}
    args0 = "".join(c["function"]["arguments"] for c in calls if c["index"] == 0)
    args1 = "".join(c["function"]["arguments"] for c in calls if c["index"] == 1)
    assert json.loads(args0) == {"city": "Paris"} and json.loads(args1) == {"city": "Rome"}
    assert [c for c in calls if "id" in c][1]["function"]["name"] == "get_weather"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_a_tool_loop_conversation_renders_calls_and_results(
    client: TestClient, engine: ScriptedEngine
) -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        *called("get_weather", '{"city": "Paris"}', "sunny, 21 C"),
    ]
    status, doc = await post(
        client, "/v1/chat/completions", {"model": "m", "messages": messages, "tools": [WEATHER]}
    )
    assert status == 200, doc
    # The arguments reach the template as an object (it writes them with tojson), once.
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in engine.prompt
    assert "<tool_response>\nsunny, 21 C\n</tool_response>" in engine.prompt


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (chat(tool_choice="required"), "tool_choice"),
        (
            chat(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "x"}}),
            "tool_choice",
        ),
        (chat(tools=[WEATHER, WEATHER]), "tools"),
        (chat(tools=[{"type": "custom", "custom": {"name": "x"}}]), "tools.0.type"),
        (
            {"model": "m", "messages": [{"role": "tool", "content": "r"}]},
            "messages.0.tool_call_id",
        ),
        ({"model": "m", "messages": [{"role": "assistant"}]}, "messages.0"),
    ],
)
async def test_bad_tool_requests_are_400_naming_the_field(
    client: TestClient, body: dict[str, Any], param: str
) -> None:
    status, doc = await post(client, "/v1/chat/completions", body)
    assert status == 400 and doc["error"]["param"] == param, doc


async def test_generic_format_describes_tools_in_a_system_message(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    eng = ScriptedEngine(template=None)  # plain role: content lines know no tools
    eng.pieces = ['{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}']
    c = await serve(aiohttp_client, tmp_path, eng)
    status, doc = await post(c, "/v1/chat/completions", chat(tools=[WEATHER]))
    assert status == 200
    assert eng.prompt.startswith("system: You can call these tools")
    assert eng.params.grammar_triggers == (tools._TRIGGERS[tools.ToolFormat.GENERIC],)
    (call,) = doc["choices"][0]["message"]["tool_calls"]
    assert json.loads(call["function"]["arguments"]) == {"city": "Oslo"}


# ---- response_format ---------------------------------------------------------------------

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


async def test_json_schema_becomes_the_schemas_grammar(
    client: TestClient, engine: ScriptedEngine
) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    status, _ = await post(client, "/v1/chat/completions", chat(response_format=fmt))
    assert status == 200
    assert engine.params.grammar == grammars.schema_grammar(PERSON)
    assert engine.params.grammar_triggers == ()


async def test_json_object_gets_a_json_object_grammar(
    client: TestClient, engine: ScriptedEngine
) -> None:
    status, _ = await post(
        client, "/v1/chat/completions", chat(response_format={"type": "json_object"})
    )
    assert status == 200 and engine.params.grammar == grammars.json_object_grammar()
    await post(client, "/v1/chat/completions", chat(response_format={"type": "text"}))
    assert engine.params.grammar is None


async def test_unsupported_schema_feature_is_400_naming_it(client: TestClient) -> None:
    schema = {"type": "object", "properties": {"age": {"type": "integer", "minimum": 0}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "p", "schema": schema}}
    status, doc = await post(client, "/v1/chat/completions", chat(response_format=fmt))
    assert status == 400
    assert doc["error"]["param"] == "response_format.json_schema.schema.properties.age.minimum"
    assert "minimum" in doc["error"]["message"]
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    status, doc = await post(client, "/v1/chat/completions", chat(tools=[tool]))
    assert status == 400
    assert doc["error"]["param"] == "tools.0.function.parameters.properties.age.minimum"


async def test_a_grammar_the_engine_rejects_is_400(
    client: TestClient, engine: ScriptedEngine
) -> None:
    engine.error = ValueError("failed to parse grammar")
    fmt = {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}}
    status, doc = await post(client, "/v1/chat/completions", chat(response_format=fmt))
    assert status == 400 and doc["error"]["param"] == "response_format"


# ---- sampling fields and limits ----------------------------------------------------------


async def test_every_sampling_field_reaches_the_engine(
    client: TestClient, engine: ScriptedEngine
) -> None:
    body = chat(
        temperature=0.3,
        top_p=0.5,
        seed=7,
        stop=["x", ""],
        top_k=40,
        min_p=0.1,
        repeat_penalty=1.2,
        repeat_last_n=32,
        presence_penalty=-1.5,
        frequency_penalty=2,
        logit_bias={"65": -100, "7": 3.5},
        max_tokens=9,
    )
    status, _ = await post(client, "/v1/chat/completions", body)
    assert status == 200
    assert engine.params == SamplingParams(
        max_tokens=9,
        temperature=0.3,
        top_p=0.5,
        seed=7,
        stop=("x",),
        top_k=40,
        min_p=0.1,
        repeat_penalty=1.2,
        presence_penalty=-1.5,
        frequency_penalty=2.0,
        penalty_last_n=32,
        logit_bias=((7, 3.5), (65, -100.0)),
    )


async def test_nulls_are_the_defaults(client: TestClient, engine: ScriptedEngine) -> None:
    nulls = dict.fromkeys(
        [
            "temperature",
            "top_p",
            "seed",
            "stop",
            "max_tokens",
            "presence_penalty",
            "frequency_penalty",
            "logit_bias",
            "logprobs",
            "top_logprobs",
            "n",
            "tools",
            "tool_choice",
            "response_format",
            "stream_options",
            "user",
            "max_completion_tokens",
        ]
    )
    status, doc = await post(client, "/v1/chat/completions", chat(**nulls))
    assert status == 200, doc
    assert engine.params == SamplingParams(temperature=1.0, top_p=1.0)


async def test_max_completion_tokens_wins_and_unset_means_none(
    client: TestClient, engine: ScriptedEngine
) -> None:
    await post(client, "/v1/chat/completions", chat(max_tokens=50, max_completion_tokens=5))
    assert engine.params.max_tokens == 5
    await post(client, "/v1/chat/completions", chat())
    assert engine.params.max_tokens is None


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (chat(max_completion_tokens=5000), "max_completion_tokens"),
        (chat(max_tokens=5000), "max_tokens"),
    ],
)
async def test_too_many_tokens_is_400_context_length_exceeded(
    client: TestClient, engine: ScriptedEngine, body: dict[str, Any], param: str
) -> None:
    engine.error = TooManyTokens("prompt 11 + max_tokens 5000 > 2048")
    status, doc = await post(client, "/v1/chat/completions", body)
    assert status == 400
    assert doc["error"]["param"] == param
    assert doc["error"]["code"] == "context_length_exceeded"


async def test_a_prompt_too_long_names_the_prompt(
    client: TestClient, engine: ScriptedEngine
) -> None:
    engine.error = PromptTooLong("prompt has 5000 tokens")
    status, doc = await post(client, "/v1/completions", {"model": "m", "prompt": "x"})
    assert status == 400 and doc["error"]["param"] == "prompt"
    assert doc["error"]["code"] == "context_length_exceeded"


# ---- usage and logprobs ------------------------------------------------------------------


async def test_usage_reports_cached_tokens(client: TestClient, engine: ScriptedEngine) -> None:
    engine.cached = 7
    _, doc = await post(client, "/v1/chat/completions", chat())
    assert doc["usage"] == {
        "prompt_tokens": 11,
        "completion_tokens": 2,
        "total_tokens": 13,
        "prompt_tokens_details": {"cached_tokens": 7},
    }


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_stream_chunks_carry_usage_null_before_the_usage_chunk(
    client: TestClient, engine: ScriptedEngine, path: str
) -> None:
    engine.cached = 3
    body = chat() if "chat" in path else {"model": "m", "prompt": "hi"}
    chunks = await stream(client, path, {**body, "stream_options": {"include_usage": True}})
    *before, last = chunks
    assert before and all("usage" in c and c["usage"] is None for c in before)
    assert last["choices"] == [] and last["usage"]["prompt_tokens_details"]["cached_tokens"] == 3
    plain = await stream(client, path, body)
    assert all("usage" not in c for c in plain)


async def test_chat_logprobs_shape(client: TestClient, engine: ScriptedEngine) -> None:
    _, doc = await post(client, "/v1/chat/completions", chat(logprobs=True, top_logprobs=2))
    assert engine.params.logprobs == 2
    content = doc["choices"][0]["logprobs"]["content"]
    assert [e["token"] for e in content] == ["Hello", " there"]
    assert content[0]["bytes"] == list(b"Hello") and content[0]["logprob"] == -0.5
    assert content[0]["top_logprobs"][1] == {"token": "x", "logprob": -1.5, "bytes": [120]}
    await post(client, "/v1/chat/completions", chat(logprobs=True))
    assert engine.params.logprobs == 0
    _, doc = await post(client, "/v1/chat/completions", chat())
    plain = engine.asked[-1][1]
    assert plain.logprobs is None and doc["choices"][0]["logprobs"] is None


async def test_streamed_chat_logprobs_ride_on_their_chunks(
    client: TestClient, engine: ScriptedEngine
) -> None:
    chunks = await stream(client, "/v1/chat/completions", chat(logprobs=True, top_logprobs=1))
    tokens = [
        e["token"]
        for c in chunks
        for e in ((c["choices"][0]["logprobs"] or {}).get("content") or [])
    ]
    assert tokens == ["Hello", " there"]


async def test_completion_logprobs_legacy_shape(client: TestClient, engine: ScriptedEngine) -> None:
    _, doc = await post(client, "/v1/completions", {"model": "m", "prompt": "abc", "logprobs": 2})
    assert doc["choices"][0]["logprobs"] == {
        "tokens": ["Hello", " there"],
        "token_logprobs": [-0.5, -0.5],
        "top_logprobs": [{"Hello": -0.5, "x": -1.5}, {" there": -0.5, "x": -1.5}],
        "text_offset": [3, 8],  # counted from the prompt's start, as OpenAI does
    }
    chunks = await stream(client, "/v1/completions", {"model": "m", "prompt": "abc", "logprobs": 0})
    offsets = [
        o for c in chunks for o in (c["choices"][0]["logprobs"] or {}).get("text_offset", [])
    ]
    assert offsets == [3, 8]


# ---- refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "field", "value"),
    [
        ("/v1/chat/completions", "n", 2),
        ("/v1/chat/completions", "audio", {"voice": "alloy", "format": "wav"}),
        ("/v1/chat/completions", "modalities", ["text", "audio"]),
        ("/v1/chat/completions", "prediction", {"type": "content", "content": "x"}),
        ("/v1/chat/completions", "web_search_options", {}),
        ("/v1/chat/completions", "reasoning_effort", "low"),
        ("/v1/chat/completions", "verbosity", "low"),
        ("/v1/chat/completions", "functions", [{"name": "f"}]),
        ("/v1/chat/completions", "function_call", "auto"),
        ("/v1/chat/completions", "top_p", 1.5),
        ("/v1/chat/completions", "temperature", 2.5),
        ("/v1/chat/completions", "presence_penalty", 3),
        ("/v1/chat/completions", "frequency_penalty", -2.5),
        ("/v1/chat/completions", "top_logprobs", 3),  # without logprobs
        ("/v1/chat/completions", "stop", ["a", "b", "c", "d", "e"]),
        ("/v1/completions", "echo", True),
        ("/v1/completions", "suffix", "tail"),
        ("/v1/completions", "best_of", 2),
        ("/v1/completions", "n", 3),
        ("/v1/completions", "logprobs", 6),
        ("/v1/embeddings", "dimensions", 8),
        ("/v1/chat/completions", "frobnicate", 1),
    ],
)
async def test_refused_fields_are_400_naming_them(
    client: TestClient, path: str, field: str, value: Any
) -> None:
    base = chat() if "chat" in path else {"model": "m", "prompt": "x", "input": "x"}
    if "embeddings" in path:
        base = {"model": "m", "input": "x"}
    elif path == "/v1/completions":
        base = {"model": "m", "prompt": "x"}
    status, doc = await post(client, path, {**base, field: value})
    assert status == 400, doc
    assert doc["error"]["param"] == field and doc["error"]["type"] == "invalid_request_error"


async def test_unknown_field_is_refused_like_openai(client: TestClient) -> None:
    _, doc = await post(client, "/v1/chat/completions", chat(frobnicate=1))
    assert doc["error"]["message"] == "Unrecognized request argument supplied: frobnicate"


@pytest.mark.parametrize(
    "extra",
    [
        {"user": "u1", "metadata": {"k": "v"}, "store": False, "service_tier": "auto"},
        {"n": 1, "modalities": ["text"], "audio": None, "stream_options": None},
        {"safety_identifier": "s", "prompt_cache_key": "k", "parallel_tool_calls": True},
    ],
)
async def test_fields_that_change_nothing_are_accepted(
    client: TestClient, extra: dict[str, Any]
) -> None:
    status, doc = await post(client, "/v1/chat/completions", chat(**extra))
    assert status == 200, doc


async def test_a_template_that_refuses_the_messages_is_400(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    strict = "{{ raise_exception('roles must alternate') }}"
    eng = ScriptedEngine(template=strict)
    c = await serve(aiohttp_client, tmp_path, eng)
    status, doc = await post(c, "/v1/chat/completions", chat())
    assert status == 400 and doc["error"]["param"] == "messages"
    assert "roles must alternate" in doc["error"]["message"]

"""What an agent framework does with the API, through the official `openai` SDK against a real
node serving a random-weight model with a Hermes-style, tool-capable chat template: structured
output parsed into pydantic objects, tool loops streamed and not, logprobs, refused fields."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import openai
import pytest
from openai.types.chat import ChatCompletionMessageFunctionToolCall, ChatCompletionMessageParam
from pydantic import BaseModel, Field

from cairn.inference.demo_gguf import write_tiny_llama
from tests.conftest import Node
from tests.harness import wait_until
from tests.unit.test_chat_templates import HERMES


class Person(BaseModel):
    name: str = Field(max_length=12)  # bounded, so a random model finishes
    age: int
    member: bool


class GetWeather(BaseModel):
    city: str = Field(max_length=12)
    unit: Literal["C", "F"]


TOOL = openai.pydantic_function_tool(GetWeather, name="get_weather")
ASK: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Weather in Paris?"}]
# One call, forced: the first turn of a tool loop.
MUST_CALL: dict[str, Any] = {
    "model": "agent",
    "messages": ASK,
    "tools": [TOOL],
    "tool_choice": "required",
    "parallel_tool_calls": False,
    "temperature": 0,
}


@pytest.fixture(scope="module")
def model_path() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="cairn-agent-"))
    yield write_tiny_llama(d / "agent.gguf", chat_template=HERMES)
    shutil.rmtree(d)


@pytest.fixture
def node(start_node: Callable[..., Node], model_path: Path) -> Node:
    sockets = tempfile.mkdtemp(prefix="ca-", dir="/tmp")  # unix socket paths must stay short
    n = start_node(
        probe_interval=1.0,
        inference={"socket_dir": sockets},
        models=[
            {
                "name": "agent",
                "path": str(model_path),
                "kind": "gguf",
                "threads": 1,
                "slots": 2,
                "context": 4096,
            }
        ],
    )
    wait_until(
        lambda: n.get("/status").json()["models"]["agent"]["state"] in ("ready", "failed"),
        60,
        what="the worker to load",
    )
    return n


def client(n: Node) -> openai.OpenAI:
    return openai.OpenAI(base_url=n.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_parse_returns_a_pydantic_object_from_a_random_model(node: Node) -> None:
    c = client(node)
    for seed in range(3):
        r = c.chat.completions.parse(
            model="agent", messages=ASK, response_format=Person, seed=seed, temperature=1.0
        )
        assert isinstance(r.choices[0].message.parsed, Person), r.choices[0].message.content


def _tool_message(call: Any) -> ChatCompletionMessageParam:
    return {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}


def _assistant(calls: list[Any]) -> ChatCompletionMessageParam:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.function.name, "arguments": call.function.arguments},
            }
            for call in calls
        ],
    }


def test_a_tool_loop(node: Node) -> None:
    c = client(node)
    r = c.chat.completions.create(**MUST_CALL)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    assert call.id.startswith("call_") and call.function.name == "get_weather"
    GetWeather.model_validate_json(call.function.arguments)
    answer = c.chat.completions.create(
        model="agent",
        messages=[*ASK, _assistant([call]), _tool_message(call)],
        tools=[TOOL],
        tool_choice="none",
        max_completion_tokens=8,
        temperature=0,
    )
    assert isinstance(answer.choices[0].message.content, str)
    assert not answer.choices[0].message.tool_calls
    assert answer.choices[0].finish_reason in ("stop", "length")


def test_a_streamed_tool_loop_with_the_sdks_stream_helper(node: Node) -> None:
    c = client(node)
    with c.chat.completions.stream(**MUST_CALL) as s:
        kinds = {event.type for event in s}
        final = s.get_final_completion()
    assert "tool_calls.function.arguments.done" in kinds
    assert final.choices[0].finish_reason == "tool_calls"
    (call,) = final.choices[0].message.tool_calls or []
    assert isinstance(call.function.parsed_arguments, GetWeather)
    pieces = []
    for chunk in c.chat.completions.create(
        model="agent",
        messages=[*ASK, _assistant([call]), _tool_message(call)],
        tools=[TOOL],
        tool_choice="none",
        max_completion_tokens=8,
        stream=True,
    ):
        if chunk.choices:
            assert not chunk.choices[0].delta.tool_calls
            pieces.append(chunk.choices[0].delta.content or "")
    assert "".join(pieces)


def test_logprobs_come_with_top_logprobs_entries(node: Node) -> None:
    c = client(node)
    r = c.chat.completions.create(
        model="agent", messages=ASK, logprobs=True, top_logprobs=3, max_tokens=6, temperature=0
    )
    assert r.usage is not None and r.choices[0].logprobs is not None
    entries = r.choices[0].logprobs.content or []
    assert len(entries) == r.usage.completion_tokens
    assert all(len(e.top_logprobs) == 3 and e.logprob <= 0 for e in entries)
    text = c.completions.create(model="agent", prompt="abc", logprobs=2, max_tokens=4)
    lp = text.choices[0].logprobs
    assert lp is not None and lp.top_logprobs is not None and len(lp.top_logprobs) == 4


REFUSED: list[tuple[str, str, Any]] = [
    ("chat", "n", 2),
    ("chat", "audio", {"voice": "alloy", "format": "wav"}),
    ("chat", "modalities", ["text", "audio"]),
    ("chat", "prediction", {"type": "content", "content": "x"}),
    ("chat", "web_search_options", {}),
    ("chat", "reasoning_effort", "low"),
    ("chat", "verbosity", "low"),
    ("chat", "frobnicate", 1),
    ("text", "echo", True),
    ("text", "suffix", "tail"),
    ("text", "best_of", 2),
    ("text", "n", 2),
    ("embed", "dimensions", 8),
]


def test_each_refused_field_is_a_400_naming_it(node: Node) -> None:
    c = client(node)
    for kind, field, value in REFUSED:  # one node for all: each case is one request
        with pytest.raises(openai.BadRequestError) as exc:
            if kind == "chat":
                c.chat.completions.create(model="agent", messages=ASK, extra_body={field: value})
            elif kind == "text":
                c.completions.create(model="agent", prompt="x", extra_body={field: value})
            else:
                c.embeddings.create(model="agent", input="x", extra_body={field: value})
        body = exc.value.body
        assert isinstance(body, dict) and body["param"] == field, (kind, field, body)

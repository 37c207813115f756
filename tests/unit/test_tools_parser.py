"""The model's output back into content and tool_calls, streamed or whole, in each format."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cairn.inference import tools
from cairn.inference.tools import CallArgs, CallStart, Content, ToolFormat
from tests.unit.test_chat_templates import called

NAMES = frozenset({"get_weather"})


def call(fmt: ToolFormat, city: str) -> str:
    args = {"city": city}
    if fmt is ToolFormat.HERMES:
        return (
            f'<tool_call>\n{{"name": "get_weather", "arguments": {json.dumps(args)}}}\n</tool_call>'
        )
    if fmt is ToolFormat.LLAMA3:
        return json.dumps({"name": "get_weather", "parameters": args})
    return json.dumps({"tool_calls": [{"name": "get_weather", "arguments": args}]})


def whole(fmt: ToolFormat, text: str) -> tuple[str | None, list[dict[str, Any]]]:
    p = tools.CallParser(fmt, NAMES)
    return tools.collect(p.whole(text))


def by_char(fmt: ToolFormat, text: str) -> list[tools.Event]:
    p = tools.CallParser(fmt, NAMES)
    events = [e for ch in text for e in p.feed(ch)]
    return events + p.finish()


@pytest.mark.parametrize("fmt", list(ToolFormat))
def test_a_call_is_parsed_whole_and_streamed_alike(fmt: ToolFormat) -> None:
    text = call(fmt, "Paris")
    content, calls = whole(fmt, text)
    assert content is None and len(calls) == 1
    assert calls[0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    streamed = by_char(fmt, text)
    assert not [e for e in streamed if isinstance(e, Content)]  # no content for the call's text
    _, again = tools.collect(streamed)
    assert again[0]["function"] == calls[0]["function"]


@pytest.mark.parametrize("fmt", list(ToolFormat))
def test_plain_text_is_content(fmt: ToolFormat) -> None:
    assert whole(fmt, "It is sunny.") == ("It is sunny.", [])
    events = by_char(fmt, "It is sunny.")
    assert "".join(e.text for e in events if isinstance(e, Content)) == "It is sunny."


def test_hermes_text_before_calls_streams_as_content_and_several_calls_parse() -> None:
    text = (
        "Checking both.\n"
        + call(ToolFormat.HERMES, "Paris")
        + "\n"
        + call(ToolFormat.HERMES, "Rome")
    )
    events = by_char(ToolFormat.HERMES, text)
    assert "".join(e.text for e in events if isinstance(e, Content)) == "Checking both.\n"
    starts = [e for e in events if isinstance(e, CallStart)]
    assert [s.index for s in starts] == [0, 1] and starts[0].id != starts[1].id
    # The text arrived before the call's first character.
    assert isinstance(events[0], Content)


def test_hermes_holds_back_only_what_may_open_a_call() -> None:
    p = tools.CallParser(ToolFormat.HERMES, NAMES)
    assert p.feed("a <tool") == [Content("a ")]
    assert p.feed("box>") == [Content("<toolbox>")]


@pytest.mark.parametrize(
    ("fmt", "text"),
    [
        (ToolFormat.HERMES, '<tool_call>\n{"name": "unknown", "arguments": {}}\n</tool_call>'),
        (ToolFormat.HERMES, '<tool_call>\n{"name": "get_weather", "argu'),  # cut off
        # Cut in its arguments, after the name: a streamed answer has begun the call by now.
        (ToolFormat.HERMES, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Ber'),
        (ToolFormat.LLAMA3, '{"name": "get_weather", "parameters": [1]}'),
        (ToolFormat.GENERIC, '{"answer": 42}'),
    ],
)
def test_what_is_not_a_well_formed_call_stays_content(fmt: ToolFormat, text: str) -> None:
    assert whole(fmt, text) == (text, [])


def test_llama3_python_tag_and_string_arguments() -> None:
    text = '<|python_tag|>{"name": "get_weather", "parameters": "{\\"city\\": \\"Oslo\\"}"}'
    _, calls = whole(ToolFormat.LLAMA3, text)
    assert calls[0]["function"]["arguments"] == '{"city": "Oslo"}'


def test_no_tools_means_no_parsing() -> None:
    p = tools.CallParser(ToolFormat.HERMES, frozenset())
    text = call(ToolFormat.HERMES, "Paris")
    assert tools.collect(p.feed(text) + p.finish()) == (text, [])


def test_generic_messages_carry_calls_and_results_as_text() -> None:
    out = tools.template_messages(
        [
            {"role": "developer", "content": "Be brief."},
            *called("get_weather", '{"city": "P"}', "sunny"),
        ],
        ToolFormat.GENERIC,
        "TOOLS",
    )
    assert out == [
        {"role": "system", "content": "Be brief.\n\nTOOLS"},
        {
            "role": "assistant",
            "content": '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "P"}}]}',
        },
        {"role": "user", "content": "Result of tool call call_1 (get_weather): sunny"},
    ]


def test_hermes_arguments_stream_as_they_are_written() -> None:
    events = by_char(ToolFormat.HERMES, call(ToolFormat.HERMES, "Paris"))
    assert isinstance(events[0], CallStart) and events[0].name == "get_weather"
    pieces = [e.text for e in events if isinstance(e, CallArgs)]
    assert len(pieces) > 5 and "".join(pieces) == '{"city": "Paris"}'

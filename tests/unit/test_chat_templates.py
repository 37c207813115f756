"""Chat templates: tools reach the template's own `tools` variable, the tool-call syntax is read
from the template, and a template's refusal is a TemplateError."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cairn.inference import tools
from cairn.inference.chat import ChatTemplate, TemplateError
from cairn.inference.tools import ToolFormat

# A Hermes/Qwen-style ChatML template with tool support, as small as it can be: tools listed in
# the system turn, calls written as <tool_call> blocks, results as <tool_response> turns.
HERMES = (
    "{%- if tools %}<|im_start|>system\n"
    "{% if messages[0].role == 'system' %}{{ messages[0].content }}\n\n{% endif %}"
    "# Tools\nYou may call functions. Their signatures:\n<tools>\n"
    "{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}</tools>\n"
    'Call one as <tool_call>\n{"name": <name>, "arguments": <args>}\n</tool_call>'
    "<|im_end|>\n"
    "{% elif messages[0].role == 'system' %}<|im_start|>system\n{{ messages[0].content }}"
    "<|im_end|>\n{% endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'system' %}"
    "{%- elif message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant\n"
    "{% if message.content %}{{ message.content }}\n{% endif %}"
    "{% for call in message.tool_calls %}<tool_call>\n"
    '{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}'
    "\n</tool_call>\n{% endfor %}<|im_end|>\n"
    "{% elif message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}"
    "\n</tool_response><|im_end|>\n"
    "{% else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The parts of Llama 3.1's template that decide its format.
LLAMA31 = (
    "{%- if tools %}{% for t in tools %}{{ t | tojson }}{% endfor %}{% endif %}"
    "{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n"
    '{% if m.tool_calls %}{"name": "{{ m.tool_calls[0].function.name }}", '
    '"parameters": {{ m.tool_calls[0].function.arguments | tojson }}}'
    "{% else %}{{ m.content }}{% endif %}<|eot_id|>{% endfor %}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)

TOOL = {
    "type": "function",
    "function": {"name": "add", "parameters": {"type": "object", "properties": {}}},
}


def called(name: str, arguments: str, result: str) -> list[dict[str, Any]]:
    """An assistant message calling one function (content null), and the tool's answer."""
    call = {"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}
    return [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": result},
    ]


def template(source: str | None) -> ChatTemplate:
    return ChatTemplate(source, bos="<s>", eos="</s>")


@pytest.mark.parametrize(
    ("source", "fmt"),
    [
        (HERMES, ToolFormat.HERMES),
        (LLAMA31, ToolFormat.LLAMA3),
        ("{% for m in messages %}{{ m.content }}{% endfor %}", ToolFormat.GENERIC),
        (None, ToolFormat.GENERIC),
        ("{% for m in messages %", ToolFormat.GENERIC),  # unparsable: plain lines
    ],
)
def test_the_tool_format_is_read_from_the_template(source: str | None, fmt: ToolFormat) -> None:
    assert template(source).tool_format is fmt


def test_tools_reach_the_templates_tools_variable() -> None:
    prompt = template(HERMES).render([{"role": "user", "content": "hi"}], [TOOL])
    assert f"<tools>\n{json.dumps(TOOL)}\n</tools>" in prompt
    assert "<tools>" not in template(HERMES).render([{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("source", [HERMES, LLAMA31])
def test_assistant_calls_render_with_object_arguments(source: str) -> None:
    fmt = template(source).tool_format
    messages = tools.template_messages(
        [
            {"role": "user", "content": "1+2?"},
            *called("add", '{"a": 1, "b": 2}', "3"),
        ],
        fmt,
        None,
    )
    prompt = template(source).render(messages, [TOOL])
    key = "parameters" if fmt is ToolFormat.LLAMA3 else "arguments"
    assert f'{{"name": "add", "{key}": {{"a": 1, "b": 2}}}}' in prompt
    assert "None" not in prompt  # a null content renders as nothing


def test_a_template_refusal_is_a_template_error() -> None:
    with pytest.raises(TemplateError, match="alternate"):
        template("{{ raise_exception('roles must alternate') }}").render([])


def test_the_plain_fallback_renders_role_lines() -> None:
    assert template(None).render([{"role": "user", "content": None}]) == "user: \nassistant:"

r"""Tool calls: the model's syntax for them, a grammar for it, and a parser back to OpenAI's.

The syntax is the one the model's chat template teaches; the grammar keeps a call well-formed;
the parser turns the model's output back into OpenAI tool_calls. Three syntaxes, chosen from
the template's source:

- hermes (Hermes, Qwen): `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`, one
  block per call, after optional text;
- llama3 (Llama 3.1 and later): the whole answer is `{"name": ..., "parameters": {...}}`;
- generic (a template that knows no tools, or none at all): the tools are described in a system
  message Cairn writes, and a call is the whole answer `{"tool_calls": [{"name": ...,
  "arguments": {...}}]}`.
"""

from __future__ import annotations

import enum
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from cairn.inference.grammars import Builder

HERMES_OPEN = "<tool_call>"
HERMES_CLOSE = "</tool_call>"
PYTHON_TAG = "<|python_tag|>"


class ToolFormat(enum.StrEnum):
    """How the model writes a tool call."""

    HERMES = "hermes"
    LLAMA3 = "llama3"
    GENERIC = "generic"


# Lazy grammars (tool_choice auto) start where a call starts: llama.cpp matches these against
# the whole output so far and constrains from the first group on.
_TRIGGERS = {
    ToolFormat.HERMES: r"[\s\S]*?(<tool_call>[\s\S]*)",
    ToolFormat.LLAMA3: r'\s*(\{ ?"name"[\s\S]*)',
    ToolFormat.GENERIC: r'\s*(\{ ?"tool_calls"[\s\S]*)',
}
_ARGS_KEY = {
    ToolFormat.HERMES: "arguments",
    ToolFormat.LLAMA3: "parameters",
    ToolFormat.GENERIC: "arguments",
}


def detect(template: str | None) -> ToolFormat:
    """The tool-call syntax a chat template renders (and so the model was trained on)."""
    if not template or "tools" not in template:
        return ToolFormat.GENERIC
    if HERMES_OPEN in template:
        return ToolFormat.HERMES
    if "<|start_header_id|>" in template and "parameters" in template:
        return ToolFormat.LLAMA3
    return ToolFormat.GENERIC


def new_call_id() -> str:
    """An id in OpenAI's shape: call_ and 24 random characters."""
    return "call_" + uuid.uuid4().hex[:24]


@dataclass(frozen=True)
class Plan:
    """What one request's tools and answer format mean for the prompt and the sampler."""

    fmt: ToolFormat
    template_tools: list[dict[str, Any]] | None  # the template's `tools` variable
    system: str | None  # a system message Cairn adds (generic format)
    names: frozenset[str]  # callable tools; empty: the output is never parsed for calls
    grammar: str | None
    triggers: tuple[str, ...]


def plan(
    fmt: ToolFormat,
    tools: list[dict[str, Any]],
    choice: str,
    *,
    named: str | None = None,
    parallel: bool,
    answer: dict[str, Any] | None,
) -> Plan:
    """The prompt's tools, the grammar and the parse for one request.

    choice: none, auto, required or named (the function `named`); answer: the JSON schema an
    answer that is not a call must follow (response_format), None for free text.
    """
    if not tools or choice == "none":
        grammar = None
        if answer is not None:
            b = Builder()
            b.add(answer, "")
            grammar = b.text()
        return Plan(fmt, None, None, frozenset(), grammar, ())
    callable_ = [t for t in tools if choice != "named" or _name(t) == named]
    b = Builder(prop_order=["name", _ARGS_KEY[fmt]])
    calls = _calls_rule(b, fmt, callable_, parallel)
    triggers: tuple[str, ...] = ()
    if choice == "auto" and answer is not None:
        b.rule(f"root ::= {calls} | {b.add(answer, 'answer')}")
    else:
        b.rule(f"root ::= {calls}")
        triggers = (_TRIGGERS[fmt],) if choice == "auto" else ()
    if fmt is ToolFormat.GENERIC:
        return Plan(
            fmt,
            None,
            describe(callable_, parallel=parallel, required=choice != "auto"),
            frozenset(map(_name, callable_)),
            b.text(),
            triggers,
        )
    return Plan(fmt, callable_, None, frozenset(map(_name, callable_)), b.text(), triggers)


def _name(tool: dict[str, Any]) -> str:
    return str(tool["function"]["name"])


def _parameters(tool: dict[str, Any]) -> dict[str, Any]:
    params = tool["function"].get("parameters")
    return params if params is not None else {"type": "object", "properties": {}}


def _calls_rule(b: Builder, fmt: ToolFormat, tools: list[dict[str, Any]], parallel: bool) -> str:
    """Rules for the model's whole tool-call output; returns the rule's name."""
    key = _ARGS_KEY[fmt]
    alts = [
        {
            "type": "object",
            "properties": {"name": {"const": _name(t)}, key: b.own(_parameters(t))},
            "required": ["name", key],
        }
        for t in tools
    ]
    call: dict[str, Any] = alts[0] if len(alts) == 1 else {"anyOf": alts}
    if fmt is ToolFormat.HERMES:
        one = b.add(call, "call")
        # Newlines optional: a lazy grammar starts on whatever the trigger's token held.
        b.rule(f'tool-call ::= "{HERMES_OPEN}" "\\n"? {one} "\\n"? "{HERMES_CLOSE}"')
        b.rule('calls ::= tool-call ("\\n" tool-call)*' if parallel else "calls ::= tool-call")
        return "calls"
    if fmt is ToolFormat.LLAMA3:  # one call per answer: the format has no way to write more
        return b.add(call, "call")
    array: dict[str, Any] = {"type": "array", "items": call, "minItems": 1}
    if not parallel:
        array["maxItems"] = 1
    wrapper = {"type": "object", "properties": {"tool_calls": array}, "required": ["tool_calls"]}
    return b.add(wrapper, "calls")


def describe(tools: list[dict[str, Any]], *, parallel: bool, required: bool) -> str:
    """The generic format's system message: the tools and how to call them."""
    lines = ["You can call these tools (each with a JSON Schema of its arguments):"]
    for t in tools:
        f = t["function"]
        entry = {
            "name": f["name"],
            "description": f.get("description") or "",
            "parameters": _parameters(t),
        }
        lines.append(json.dumps(entry, ensure_ascii=False))
    how = "one or more calls" if parallel else "exactly one call"
    lines.append(
        'To call tools, answer with only a JSON object, {"tool_calls": [{"name": <tool name>, '
        f'"arguments": <arguments object>}}]}}, holding {how}.'
    )
    if not required:
        lines.append("If no tool is needed, answer in plain text instead.")
    return "\n".join(lines)


def _arguments_value(arguments: str) -> Any:
    """A call's arguments as templates expect them: an object where the string holds one."""
    try:
        value = json.loads(arguments)
    except ValueError:
        return arguments
    return value if isinstance(value, dict) else arguments


def template_messages(
    messages: list[dict[str, Any]], fmt: ToolFormat, system: str | None
) -> list[dict[str, Any]]:
    """OpenAI messages as the chat template gets them.

    developer becomes system; assistant tool_calls carry their arguments as objects (what Qwen's
    and Llama's templates write with tojson); a tool message gets the called function's name.
    In the generic format calls become the JSON the model is told to write and results become
    user messages, since such a template may know no tool role.
    """
    called: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for m in messages:
        role = "system" if m["role"] == "developer" else m["role"]
        content = m.get("content") or ""
        msg: dict[str, Any] = {"role": role, "content": content}
        if m.get("name"):
            msg["name"] = m["name"]
        calls = m.get("tool_calls") or []
        for c in calls:
            called[c["id"]] = c["function"]["name"]
        if calls and fmt is ToolFormat.GENERIC:
            written = {
                "tool_calls": [
                    {
                        "name": c["function"]["name"],
                        "arguments": _arguments_value(c["function"]["arguments"]),
                    }
                    for c in calls
                ]
            }
            msg["content"] = "\n".join(
                p for p in (content, json.dumps(written, ensure_ascii=False)) if p
            )
        elif calls:
            msg["tool_calls"] = [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {
                        "name": c["function"]["name"],
                        "arguments": _arguments_value(c["function"]["arguments"]),
                    },
                }
                for c in calls
            ]
        if role == "tool":
            call_id = m.get("tool_call_id", "")
            name = called.get(call_id)
            if fmt is ToolFormat.GENERIC:
                msg = {
                    "role": "user",
                    "content": f"Result of tool call {call_id} ({name or 'unknown'}): {content}",
                }
            else:
                msg["tool_call_id"] = call_id
                if name:
                    msg["name"] = name
        out.append(msg)
    if system:
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{system}"}
        else:
            out.insert(0, {"role": "system", "content": system})
    return out


# ---- the model's output, back into content and calls ------------------------------------


@dataclass(frozen=True)
class Content:
    """Answer text."""

    text: str


@dataclass(frozen=True)
class CallStart:
    """A call begins: OpenAI's first delta of it (index, id, type, name)."""

    index: int
    id: str
    name: str


@dataclass(frozen=True)
class CallArgs:
    """A piece of a call's arguments (a JSON text once all pieces are joined)."""

    index: int
    text: str


Event = Content | CallStart | CallArgs


# A hermes block up to where its arguments object starts.
_HERMES_HEAD = re.compile(
    r'<tool_call>\s*\{\s*"name"\s*:\s*"([^"\\]*)"\s*,\s*"arguments"\s*:\s*(?=\{)'
)


@dataclass
class _Open:
    """A call being streamed: its index, where its arguments start, how much of them went out."""

    index: int
    at: int
    sent: int = 0


class CallParser:
    """Splits streamed output into content and calls; text that may still become a call is held."""

    def __init__(self, fmt: ToolFormat, names: frozenset[str]) -> None:
        self.fmt = fmt
        self.names = names
        self.calls = 0
        self._buf = ""
        self._in_call = False  # hermes: inside <tool_call>...
        self._open: _Open | None = None  # hermes: the call whose arguments are streaming
        self._content = not names  # json formats: the answer is known to be text

    def feed(self, text: str) -> list[Event]:
        """Take the next piece of output; return what can be said of it now."""
        if self._content:
            return [Content(text)] if text else []
        self._buf += text
        if self.fmt is ToolFormat.HERMES:
            return self._hermes(final=False)
        head = self._buf.lstrip()
        if head.startswith(PYTHON_TAG) and self.fmt is ToolFormat.LLAMA3:
            head = head[len(PYTHON_TAG) :].lstrip()
        if not head or PYTHON_TAG.startswith(head) or head.startswith("{"):
            return []  # may be a call: wait for the whole answer
        self._content = True
        out, self._buf = self._buf, ""
        return [Content(out)]

    def whole(self, text: str) -> list[Event]:
        """A whole answer at once: a call block cut short, never streamed, stays text."""
        if self.fmt is ToolFormat.HERMES and not self._content:
            self._buf += text
            return self._hermes(final=True)
        return self.feed(text) + self.finish()

    def finish(self) -> list[Event]:
        """The output ended: decide what is still held."""
        if self._content:
            return []
        if self.fmt is ToolFormat.HERMES:
            return self._hermes(final=True)
        text, self._buf = self._buf, ""
        calls = self._json_calls(text)
        if calls is None:
            return [Content(text)] if text else []
        return [e for name, args in calls for e in self._call(name, args)]

    def _call(self, name: str, args: str) -> list[Event]:
        index = self.calls
        self.calls += 1
        return [CallStart(index, new_call_id(), name), CallArgs(index, args)]

    def _parse_one(self, obj: Any, key: str) -> tuple[str, str] | None:
        """(name, arguments JSON) of one call object, None if it is not a call to a tool."""
        if not isinstance(obj, dict) or obj.get("name") not in self.names:
            return None
        args = obj.get(key, obj.get("arguments", {}))
        if isinstance(args, str):
            args = _arguments_value(args)
        if not isinstance(args, dict):
            return None
        return str(obj["name"]), json.dumps(args, ensure_ascii=False)

    def _json_calls(self, text: str) -> list[tuple[str, str]] | None:
        body = text.strip()
        if self.fmt is ToolFormat.LLAMA3 and body.startswith(PYTHON_TAG):
            body = body[len(PYTHON_TAG) :].strip()
        try:
            doc = json.loads(body)
        except ValueError:
            return None
        if self.fmt is ToolFormat.LLAMA3:
            one = self._parse_one(doc, "parameters")
            return None if one is None else [one]
        if not isinstance(doc, dict) or not isinstance(doc.get("tool_calls"), list):
            return None
        calls = [self._parse_one(c, "arguments") for c in doc["tool_calls"]]
        if not calls or any(c is None for c in calls):
            return None
        return [c for c in calls if c is not None]

    def _hermes(self, *, final: bool) -> list[Event]:
        out: list[Event] = []
        while True:
            if self._in_call:
                end = self._buf.find(HERMES_CLOSE)
                if end < 0 and not final:
                    return out + self._stream_args()
                stop = end if end >= 0 else len(self._buf)
                rest = self._buf[stop + len(HERMES_CLOSE) :] if end >= 0 else ""
                out.extend(
                    self._close_block(self._buf[:stop], self._buf[: len(self._buf) - len(rest)])
                )
                self._buf, self._in_call = rest, False
                if not rest:
                    return out
                continue
            start = self._buf.find(HERMES_OPEN)
            if start >= 0:
                before = self._buf[:start]
                if before.strip() or (before and not self.calls):
                    out.append(Content(before))
                self._buf, self._in_call = self._buf[start:], True
                continue
            keep = 0 if final else _partial_tail(self._buf, HERMES_OPEN)
            text, self._buf = self._buf[: len(self._buf) - keep], self._buf[len(self._buf) - keep :]
            if self.calls and not text.strip() and not final:
                self._buf = text + self._buf  # whitespace between calls: hold it
            elif text and (text.strip() or not self.calls):
                out.append(Content(text))
            return out

    def _stream_args(self) -> list[Event]:
        """An open <tool_call> block: its start once the name is in, then its arguments.

        The arguments go out as they grow, less what may still be the block's own closing
        brace or tag.
        """
        out: list[Event] = []
        if self._open is None:
            m = _HERMES_HEAD.match(self._buf)
            if m is None or m[1] not in self.names:
                return out
            self._open = _Open(self.calls, m.end())
            self.calls += 1
            out.append(CallStart(self._open.index, new_call_id(), m[1]))
        avail = self._buf[self._open.at :]
        avail = avail[: len(avail) - _partial_tail(avail, HERMES_CLOSE)].rstrip("} \t\r\n")
        if len(avail) > self._open.sent:
            out.append(CallArgs(self._open.index, avail[self._open.sent :]))
            self._open.sent = len(avail)
        return out

    def _close_block(self, block: str, written: str) -> list[Event]:
        """A whole block (without its closing tag; written: with it) as a call or as content."""
        opened, self._open = self._open, None
        call = self._hermes_block(block)
        if opened is not None:  # already streaming: send the rest of its arguments
            args = call[1] if call is not None else block[opened.at :].rstrip()
            tail = args[opened.sent :]
            return [CallArgs(opened.index, tail)] if tail else []
        if call is None:  # not a call after all: the text stands as it was written
            return [Content(written)]
        return self._call(*call)

    def _hermes_block(self, block: str) -> tuple[str, str] | None:
        """(name, arguments as written) of a block that holds one call to a known tool."""
        try:
            doc = json.loads(block[len(HERMES_OPEN) :].strip())
        except ValueError:
            return None
        call = self._parse_one(doc, "arguments")
        m = _HERMES_HEAD.match(block)
        if call is None or m is None or m[1] != call[0]:
            return call
        # The arguments' own text, so that streamed pieces and the whole answer agree.
        _, end = json.JSONDecoder().raw_decode(block, m.end())
        return call[0], block[m.end() : end]


def _partial_tail(text: str, marker: str) -> int:
    """Length of the longest tail of text that is a proper prefix of marker."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0


def collect(events: list[Event]) -> tuple[str | None, list[dict[str, Any]]]:
    """Events joined into a message's content (None when empty) and its tool_calls."""
    content = "".join(e.text for e in events if isinstance(e, Content))
    calls: list[dict[str, Any]] = []
    for e in events:
        if isinstance(e, CallStart):
            calls.append(
                {"id": e.id, "type": "function", "function": {"name": e.name, "arguments": ""}}
            )
        elif isinstance(e, CallArgs):
            calls[e.index]["function"]["arguments"] += e.text
    return (content or None) if calls else content, calls

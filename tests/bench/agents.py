"""The agent workloads of tests/bench/inference.py: chat conversations, shared prompts, JSON.

Each phase speaks /v1/chat/completions, streaming, temperature 0, to one started server, and
returns what it measured; inference.py starts the servers, interleaves the contestants and
prints the tables. Text is sized in bytes: the generated models' vocabulary is byte-level, so
a byte of prompt is a token (plus the chat template's few marker bytes per message).

- conversation: one client, `turns` turns; each turn resends the whole history (system prompt,
  every user message and the server's own earlier answers) plus a new user message, as an
  agent framework does. Time to first token per turn shows whether the server decodes only
  the new part (prompt-cache reuse) or the whole history again.
- shared prompt: `agents` clients at once, each sending `per_agent` requests back to back with
  the same long system prompt and its own user message: aggregate tokens/s.
- json: one client; the same requests with and without `response_format` json_schema. Decode
  tokens/s (tokens after the first over the time after the first) so that the constrained
  answers' own length (they end when the object closes) does not weigh in; every constrained
  answer is checked against the schema.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec

REQUEST_TIMEOUT_S = 600.0

# A pseudo-text to cut prompts from: readable in logs, no two offsets alike for long.
_WORDS = (
    "cairn stones mark the path over the moor where walkers lose the track in fog and snow "
    "each traveller adds a stone so the pile grows taller and the way stays clear for the next "
)

# What the constrained answers must be: small, so a random-weight model still closes it.
HIKER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer"},
        "guide": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
        "city": {"type": "string", "maxLength": 24},
    },
    "required": ["name", "age", "guide", "tags", "city"],
    "additionalProperties": False,
}
HIKER_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "hiker", "strict": True, "schema": HIKER_SCHEMA},
}


def text(tag: str, size: int) -> str:
    """`size` bytes of prose starting with `tag` (which makes it distinct)."""
    out = f"{tag}: "
    while len(out) < size:
        out += _WORDS
    return out[:size]


@dataclass
class Reply:
    """One streamed chat answer."""

    ttft: float  # send -> first content byte
    decode_s: float  # first -> last content byte
    tokens: int  # usage.completion_tokens, else streamed bytes (one byte is one token)
    prompt_tokens: int | None
    cached_tokens: int | None  # usage.prompt_tokens_details.cached_tokens, where reported
    content: str
    finish_reason: str | None


def request_body(max_tokens: int, **fields: Any) -> dict[str, Any]:
    """A streaming, greedy, seeded request for the bench model, usage included."""
    return {
        "model": "bench",
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "seed": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        **fields,
    }


async def events(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> AsyncIterator[dict[str, Any]]:
    """POST body, yield each server-sent event's JSON; raise RuntimeError on any error."""
    async with session.post(url, json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:300]}")
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
                continue  # read on to the end of the body: the response is complete then
            doc = msgspec.json.decode(line[5:].strip())
            if "error" in doc:
                raise RuntimeError(f"stream error: {json.dumps(doc['error'])[:300]}")
            yield doc


async def chat(
    session: aiohttp.ClientSession,
    url: str,
    messages: list[dict[str, Any]],
    max_tokens: int,
    extra: dict[str, Any],
) -> Reply:
    """One streaming chat completion; raise RuntimeError on any error."""
    body = request_body(max_tokens, messages=messages, **extra)
    sent = time.monotonic()
    first = last = 0.0
    parts: list[str] = []
    usage: dict[str, Any] = {}
    finish: str | None = None
    async for doc in events(session, url + "/v1/chat/completions", body):
        for choice in doc.get("choices") or ():
            piece = (choice.get("delta") or {}).get("content") or ""
            if piece:
                last = time.monotonic()
                first = first or last
                parts.append(piece)
            finish = choice.get("finish_reason") or finish
        usage = doc.get("usage") or usage
    content = "".join(parts)
    details = usage.get("prompt_tokens_details") or {}
    return Reply(
        ttft=first - sent if first else 0.0,
        decode_s=last - first,
        tokens=usage.get("completion_tokens") or len(content.encode()),
        prompt_tokens=usage.get("prompt_tokens"),
        cached_tokens=details.get("cached_tokens"),
        content=content,
        finish_reason=finish,
    )


def client_session(connections: int) -> aiohttp.ClientSession:
    """A session opening a new connection per request (~0.1 ms on loopback).

    llama-server closes a streamed response's connection without saying so, and a reused one
    then fails.
    """
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
        connector=aiohttp.TCPConnector(limit=connections + 1, force_close=True),
    )


# ---- conversation ------------------------------------------------------------------------


@dataclass(frozen=True)
class Conversation:
    """Sizes of the growing conversation; turn n's prompt is about system + n*(user+answer)."""

    turns: int = 6
    system_bytes: int = 300
    user_bytes: int = 130
    answer_tokens: int = 48


@dataclass
class Turns:
    """One contestant's conversations: per turn, every round's reply."""

    replies: list[list[Reply]] = field(default_factory=list)  # [turn][round]
    error: str = ""

    def ttft_ms(self, turn: int) -> float:
        got = [r.ttft for r in self.replies[turn]] if turn < len(self.replies) else []
        return 1000.0 * statistics.median(got) if got else 0.0

    def prompt_tokens(self, turn: int) -> int | None:
        got = [r.prompt_tokens for r in self.replies[turn] if r.prompt_tokens is not None]
        return max(got) if got else None

    def cached_tokens(self, turn: int) -> int | None:
        got = [r.cached_tokens for r in self.replies[turn] if r.cached_tokens is not None]
        return min(got) if got else None

    def add(self, replies: list[Reply]) -> str:
        """Keep one conversation's replies; say what they were."""
        self.replies += [[] for _ in range(len(replies) - len(self.replies))]
        for turn, reply in enumerate(replies):
            self.replies[turn].append(reply)
        return "TTFT per turn " + " ".join(f"{1000 * r.ttft:.0f}" for r in replies) + " ms"


async def conversation(
    url: str, extra: dict[str, Any], conv: Conversation, tag: str
) -> list[Reply]:
    """One conversation of conv.turns turns; each reply goes back into the history."""
    async with client_session(1) as session:
        await chat(session, url, [{"role": "user", "content": "warm up"}], 4, extra)
        history: list[dict[str, Any]] = [
            {"role": "system", "content": text(f"{tag} system", conv.system_bytes)}
        ]
        replies = []
        for turn in range(conv.turns):
            history.append(
                {"role": "user", "content": text(f"{tag} turn {turn + 1}", conv.user_bytes)}
            )
            reply = await chat(session, url, history, conv.answer_tokens, extra)
            replies.append(reply)
            history.append({"role": "assistant", "content": reply.content})
    return replies


def run_conversation(url: str, extra: dict[str, Any], conv: Conversation, tag: str) -> list[Reply]:
    return asyncio.run(conversation(url, extra, conv, tag))


# ---- shared system prompt ----------------------------------------------------------------


@dataclass(frozen=True)
class Shared:
    """Sizes of the shared-prompt phase."""

    agents: int = 8
    per_agent: int = 2
    system_bytes: int = 1000
    user_bytes: int = 40
    answer_tokens: int = 32


@dataclass
class Aggregate:
    """One contestant's shared-prompt rounds."""

    round_tps: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    short: int = 0
    requests: int = 0
    error: str = ""

    @property
    def tps(self) -> float:
        return statistics.median(self.round_tps) if self.round_tps else 0.0

    @property
    def ttft_ms(self) -> float:
        return 1000.0 * statistics.median(self.ttfts) if self.ttfts else 0.0

    def add(self, other: Aggregate) -> str:
        """Keep another round's measurements; say what they were."""
        self.round_tps += other.round_tps
        self.ttfts += other.ttfts
        self.requests += other.requests
        self.short += other.short
        return f"{other.tps:8.1f} tok/s, TTFT {other.ttft_ms:7.1f} ms"


async def shared_prompt(url: str, extra: dict[str, Any], shape: Shared, tag: str) -> Aggregate:
    """shape.agents clients at once, one system prompt, their own user messages."""
    system = {"role": "system", "content": text(f"{tag} shared system", shape.system_bytes)}
    async with client_session(shape.agents) as session:
        await chat(session, url, [{"role": "user", "content": "warm up"}], 4, extra)

        async def agent(a: int) -> list[Reply]:
            out = []
            for k in range(shape.per_agent):
                user = {"role": "user", "content": text(f"agent {a} ask {k}", shape.user_bytes)}
                out.append(await chat(session, url, [system, user], shape.answer_tokens, extra))
            return out

        t0 = time.monotonic()
        replies = [r for rs in await asyncio.gather(*map(agent, range(shape.agents))) for r in rs]
        seconds = time.monotonic() - t0
    got = Aggregate(requests=len(replies))
    got.round_tps.append(sum(r.tokens for r in replies) / seconds)
    got.ttfts = [r.ttft for r in replies]
    got.short = sum(r.tokens < shape.answer_tokens for r in replies)
    return got


def run_shared_prompt(url: str, extra: dict[str, Any], shape: Shared, tag: str) -> Aggregate:
    return asyncio.run(shared_prompt(url, extra, shape, tag))


# ---- JSON schema -------------------------------------------------------------------------


@dataclass
class Decode:
    """One contestant's requests of one kind (constrained or not)."""

    tokens: int = 0  # tokens after each answer's first
    seconds: float = 0.0  # time after each answer's first token
    ttfts: list[float] = field(default_factory=list)
    requests: int = 0
    invalid: list[str] = field(default_factory=list)  # constrained answers that do not validate
    error: str = ""

    @property
    def tps(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def ttft_ms(self) -> float:
        return 1000.0 * statistics.median(self.ttfts) if self.ttfts else 0.0

    def add(self, other: Decode) -> str:
        """Keep another round's measurements; say what they were."""
        self.tokens += other.tokens
        self.seconds += other.seconds
        self.ttfts += other.ttfts
        self.requests += other.requests
        self.invalid += other.invalid
        bad = f", {len(other.invalid)} invalid" if other.invalid else ""
        return f"{other.tps:8.1f} decode tok/s{bad}"


def hiker_problems(content: str) -> str:
    """Why content is not a HIKER_SCHEMA object ("" when it is one)."""
    try:
        doc = json.loads(content)
    except ValueError as err:
        return f"not JSON ({err})"
    if not isinstance(doc, dict) or set(doc) != set(HIKER_SCHEMA["required"]):
        return f"keys {sorted(doc) if isinstance(doc, dict) else type(doc).__name__}"
    props = HIKER_SCHEMA["properties"]
    for key in ("name", "city"):
        if not isinstance(doc[key], str) or len(doc[key]) > props[key]["maxLength"]:
            return f"{key} {doc[key]!r}"
    if type(doc["age"]) is not int or type(doc["guide"]) is not bool:
        return f"age/guide {doc['age']!r}/{doc['guide']!r}"
    tags = doc["tags"]
    if not isinstance(tags, list) or len(tags) > 3:
        return f"tags {tags!r}"
    if not all(isinstance(t, str) and len(t) <= 12 for t in tags):
        return f"tags {tags!r}"
    return ""


async def json_requests(
    url: str, extra: dict[str, Any], requests: int, max_tokens: int, constrained: bool, tag: str
) -> Decode:
    """`requests` answers one after the other, with or without the hiker json_schema."""
    fmt = {"response_format": HIKER_FORMAT} if constrained else {}
    got = Decode()
    async with client_session(1) as session:
        await chat(session, url, [{"role": "user", "content": "warm up"}], 4, {**extra, **fmt})
        for k in range(requests):
            ask = f"{tag} hiker {k}: describe a hiker as JSON with name, age, guide, tags, city."
            reply = await chat(
                session, url, [{"role": "user", "content": ask}], max_tokens, {**extra, **fmt}
            )
            got.requests += 1
            got.tokens += max(0, reply.tokens - 1)
            got.seconds += reply.decode_s
            got.ttfts.append(reply.ttft)
            problem = hiker_problems(reply.content) if constrained else ""
            if problem:
                got.invalid.append(f"{problem} in {reply.content[:80]!r}")
    return got


def run_json(
    url: str, extra: dict[str, Any], requests: int, max_tokens: int, constrained: bool, tag: str
) -> Decode:
    return asyncio.run(json_requests(url, extra, requests, max_tokens, constrained, tag))

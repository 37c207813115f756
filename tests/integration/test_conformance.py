"""The /v1 API on the wire: live answers match /openapi.json, and a broken answer ends cleanly.

Real nodes and real workers: answers are read as bytes (http.client, or a raw socket where the
framing itself is under test) and each one, each event of a stream included, is validated
against the document the node serves.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import os
import signal
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from cairn import config
from cairn.inference import demo_gguf
from cairn.inference import openai as cairn_openai
from cairn.inference.front import Inference, sleepables, worker_units
from cairn.policy.sleep import Phase, Sleepable, Sleeper
from tests.conftest import Node, free_port
from tests.harness import wait_until
from tests.harness.openapi import SSE, WEATHER, check_response, check_stream

CHAT = [{"role": "user", "content": "Say something."}]
LONG = 3000  # tokens: a stream that runs for a second or more on the tiny model


def _models(demo_models: Path) -> list[dict[str, Any]]:
    gguf = str(demo_models / "demo.gguf")
    return [
        # One slot with the whole context: room for a long stream.
        {"name": "demo", "path": gguf, "kind": "gguf", "threads": 1, "slots": 1, "context": 4096},
        {"name": "demo-embed", "path": str(demo_models / "demo-embed.onnx"), "kind": "onnx"},
    ]


def _ready(n: Node, *names: str) -> Node:
    def up() -> bool:
        models = n.get("/status").json()["models"]
        return all(models[m]["state"] == "ready" for m in names)

    wait_until(up, 60, what=f"{', '.join(names)} to load")
    return n


@pytest.fixture
def node(start_node: Callable[..., Node], demo_models: Path, short_socket_dir: str) -> Node:
    n = start_node(
        probe_interval=1.0,
        inference={"socket_dir": short_socket_dir},
        models=_models(demo_models),
    )
    return _ready(n, "demo", "demo-embed")


def _connection(n: Node) -> http.client.HTTPConnection:
    host, port = n.url.removeprefix("http://").rsplit(":", 1)
    return http.client.HTTPConnection(host, int(port), timeout=60)


def call(n: Node, method: str, path: str, body: Any = None) -> tuple[int, str, bytes]:
    """One request; (status, content type, body as sent, de-chunked)."""
    conn = _connection(n)
    try:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read()
    finally:
        conn.close()


def checked(n: Node, method: str, template: str, body: Any = None, path: str = "") -> Any:
    """Call, check the answer against the document (every event of a stream); the answer."""
    status, kind, raw = call(n, method, path or template, body)
    if kind.startswith(SSE):
        return status, check_stream(template, raw, status)
    doc = json.loads(raw)
    check_response(template, method, status, doc)
    return status, doc


def _codes(n: Node) -> set[str]:
    """The status codes every route of the node answered so far."""
    text = n.get("/metrics").body.decode()
    return {
        s.labels["code"]
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "cairn_http_requests_total"
    }


# --- the document, against live answers ---------------------------------------------------


def test_models_list_and_get_match_the_document(node: Node) -> None:
    status, listed = checked(node, "GET", "/v1/models")
    assert status == 200 and {m["id"] for m in listed["data"]} == {"demo", "demo-embed"}
    for entry in listed["data"]:
        status, one = checked(node, "GET", "/v1/models/{model}", path=f"/v1/models/{entry['id']}")
        assert (status, one) == (200, entry)
    status, missing = checked(node, "GET", "/v1/models/{model}", path="/v1/models/nope")
    assert status == 404
    assert missing["error"]["code"] == "model_not_found" and missing["error"]["param"] == "model"
    sdk = openai.OpenAI(base_url=node.url + "/v1", api_key="unused", max_retries=0)
    assert sdk.models.retrieve("demo").id == "demo"
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("nope")


def test_whole_answers_and_errors_match_the_document(node: Node) -> None:
    chat: dict[str, Any] = {"model": "demo", "messages": CHAT, "max_tokens": 8, "temperature": 0}
    status, doc = checked(node, "POST", "/v1/chat/completions", chat)
    assert status == 200 and doc["usage"]["completion_tokens"] <= 8
    status, doc = checked(
        node, "POST", "/v1/completions", {"model": "demo", "prompt": "abc", "max_tokens": 4}
    )
    assert status == 200 and doc["choices"][0]["finish_reason"] in ("stop", "length")
    for fmt in ("float", "base64"):
        embed = {"model": "demo-embed", "input": ["a", "b"], "encoding_format": fmt}
        status, doc = checked(node, "POST", "/v1/embeddings", embed)
        assert status == 200 and len(doc["data"]) == 2
    assert len(base64.b64decode(doc["data"][0]["embedding"])) == 32 * 4
    refused: list[tuple[dict[str, Any] | bytes, int, str | None]] = [
        ({**chat, "model": "nope"}, 404, "model_not_found"),
        ({**chat, "temperature": 5}, 400, None),
        ({**chat, "messages": []}, 400, None),
        (b'{"model": "demo", "messages": ', 400, None),
    ]
    for body, want, code in refused:
        status, doc = checked(node, "POST", "/v1/chat/completions", body)
        assert (status, doc["error"]["code"]) == (want, code), doc
    status, _, raw = call(node, "GET", "/v1/chat/completions")
    assert status == 405
    check_response("/v1/chat/completions", "post", status, json.loads(raw))


def test_streams_match_the_document_event_by_event(node: Node) -> None:
    usage = {"stream": True, "stream_options": {"include_usage": True}}
    chat = {"model": "demo", "messages": CHAT, "max_tokens": 8, "temperature": 0, **usage}
    status, chunks = checked(node, "POST", "/v1/chat/completions", chat)
    assert status == 200 and chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finished = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finished) == 1 and "timings" in finished[0]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] <= 8
    text = {"model": "demo", "prompt": "abc", "max_tokens": 8, **usage}
    status, chunks = checked(node, "POST", "/v1/completions", text)
    assert status == 200 and chunks[-1]["usage"]["total_tokens"] > 0


def test_agent_answers_match_the_document(node: Node) -> None:
    """Tool calls, logprobs, JSON schema output, cached tokens: the api helper's work (issue 16).

    These answers only exist once tools, response_format and logprobs are honoured; until
    then this test fails on what the worker leaves out, which is the point.
    """
    # One call at most: the grammar ends the answer after it, so it ends by itself.
    tools = {
        "model": "demo",
        "messages": CHAT,
        "tools": [WEATHER],
        "parallel_tool_calls": False,
        "max_tokens": 400,
        "seed": 1,
    }
    made = {}
    for limit in (400, 64):  # room for a call; a call cut off (mid-arguments, seed 1)
        body = {**tools, "tool_choice": "required", "max_tokens": limit}
        status, doc = checked(node, "POST", "/v1/chat/completions", body)
        assert status == 200, doc
        choice = doc["choices"][0]
        made[limit] = choice["message"].get("tool_calls") or []
        # A call is whole (its arguments a JSON object) or it is not a call at all.
        assert all(isinstance(json.loads(c["function"]["arguments"]), dict) for c in made[limit])
        # "tool_calls" for an answer that ended after its calls; "length" for one cut short.
        assert choice["finish_reason"] == ("tool_calls" if limit == 400 else "length"), choice
    assert made[400][0]["function"]["name"] == "get_weather" and not made[64]
    assert json.loads(made[400][0]["function"]["arguments"])["city"] in ("Oslo", "Bergen")

    stream = {**tools, "tool_choice": "required", "stream": True}
    status, chunks = checked(node, "POST", "/v1/chat/completions", stream)
    deltas = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls", [])]
    assert deltas and deltas[0]["id"] and deltas[0]["function"]["name"] == "get_weather"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    # Cut mid-arguments: the call's start went out, but the answer says it is cut short.
    status, chunks = checked(node, "POST", "/v1/chat/completions", {**stream, "max_tokens": 64})
    assert any(c["choices"][0]["delta"].get("tool_calls") for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"

    logprobs = {"model": "demo", "messages": CHAT, "max_tokens": 6, "logprobs": True}
    status, doc = checked(node, "POST", "/v1/chat/completions", {**logprobs, "top_logprobs": 2})
    content = doc["choices"][0]["logprobs"]["content"]
    assert len(content) == doc["usage"]["completion_tokens"]
    assert all(len(t["top_logprobs"]) == 2 for t in content)
    status, chunks = checked(
        node,
        "POST",
        "/v1/chat/completions",
        {**logprobs, "top_logprobs": 1, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert all(c["usage"] is None for c in chunks[:-1]) and chunks[-1]["usage"]
    streamed = [
        t
        for c in chunks
        if c["choices"]
        for t in (c["choices"][0].get("logprobs") or {}).get("content") or []
    ]
    assert len(streamed) == chunks[-1]["usage"]["completion_tokens"]
    status, doc = checked(
        node,
        "POST",
        "/v1/completions",
        {"model": "demo", "prompt": "ab", "max_tokens": 4, "logprobs": 2},
    )
    assert len(doc["choices"][0]["logprobs"]["tokens"]) == doc["usage"]["completion_tokens"]

    schema = {
        "type": "object",
        # Bounded: the whole answer fits in max_tokens, so it always ends by itself.
        "properties": {"city": {"type": "string", "maxLength": 20}, "warm": {"type": "boolean"}},
        "required": ["city", "warm"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "w", "schema": schema, "strict": True}}
    body = {"model": "demo", "messages": CHAT, "max_tokens": 400, "response_format": fmt}
    status, doc = checked(node, "POST", "/v1/chat/completions", body)
    assert doc["choices"][0]["finish_reason"] == "stop", doc
    jsonschema.validate(json.loads(doc["choices"][0]["message"]["content"]), schema)

    turn = {"model": "demo", "messages": CHAT * 20, "max_tokens": 2, "temperature": 0}
    checked(node, "POST", "/v1/chat/completions", turn)
    status, doc = checked(node, "POST", "/v1/chat/completions", turn)
    assert doc["usage"]["prompt_tokens_details"]["cached_tokens"] > 0


# --- bodies that are not JSON a decoder should try to keep --------------------------------

DEPTH = 100_000
MAIN = {"/v1/chat/completions": "messages", "/v1/completions": "prompt", "/v1/embeddings": "input"}


def _bodies(route: str) -> dict[str, bytes]:
    """Broken bodies for a route: the bad part where the route reads, and where nothing does."""
    field = MAIN[route].encode()
    bad = (
        b'"\xff\xfe"'
        if route != "/v1/chat/completions"
        else b'[{"role": "user", "content": "\xff"}]'
    )
    head = b'{"model": "demo", "' + field + b'": '
    return {
        "not utf-8": head + bad + b"}",
        "nested arrays": head + b"[" * DEPTH + b"}",
        "nested objects": head + b'{"a": ' * DEPTH + b"}",
        "nested arrays, an unknown field": b'{"model": "demo", "x": ' + b"[" * DEPTH + b"}",
        "nested objects, an unknown field": b'{"model": "demo", "x": ' + b'{"a": ' * DEPTH + b"}",
        "nested arrays alone": b"[" * DEPTH,
        "nested objects alone": b'{"a": ' * DEPTH,
    }


def _raw(target: socket.socket, path: str, body: bytes) -> tuple[int, Any]:
    with target:
        target.settimeout(30)
        target.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        resp = http.client.HTTPResponse(target)
        resp.begin()
        return resp.status, json.loads(resp.read())


@pytest.mark.parametrize("route", list(MAIN))
def test_a_broken_body_is_400_at_the_front_and_at_every_worker(
    node: Node, short_socket_dir: str, route: str
) -> None:
    host, port = node.url.removeprefix("http://").rsplit(":", 1)
    for what, body in _bodies(route).items():
        status, doc = _raw(socket.create_connection((host, int(port))), route, body)
        assert status == 400, (what, doc)
        check_response(route, "post", status, doc)
        for worker in ("demo", "demo-embed"):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(f"{short_socket_dir}/{worker}.sock")
            status, doc = _raw(sock, route, body)
            assert status == 400, (what, worker, doc)
            assert doc["error"]["type"] == "invalid_request_error", (what, worker, doc)
    # Bad bytes where nothing reads: the worker's decoder skips them; the front refuses them.
    good = {"/v1/chat/completions": CHAT, "/v1/completions": "x", "/v1/embeddings": "x"}[route]
    body = json.dumps({"model": "demo", MAIN[route]: good, "x": "?"}).encode()
    status, doc = _raw(
        socket.create_connection((host, int(port))), route, body.replace(b'"?"', b'"\xff"')
    )
    assert status == 400 and "not valid UTF-8" in doc["error"]["message"], doc
    assert "500" not in _codes(node)


# --- an answer that breaks off after its status line --------------------------------------


def _long_request(n: Node) -> bytes:
    """A greedy chat request that runs to its max_tokens (checked), as a streaming body."""
    body = {"model": "demo", "messages": CHAT, "max_tokens": LONG, "temperature": 0}
    status, _, raw = call(n, "POST", "/v1/chat/completions", body)
    assert status == 200 and json.loads(raw)["choices"][0]["finish_reason"] == "length"
    return json.dumps({**body, "stream": True}).encode()


def _open_stream(url: str, body: bytes) -> tuple[socket.socket, bytes]:
    """Send a streaming request; the socket and what came until the first content event."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json"
        f"\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    seen = b""
    while seen.count(b"data: ") < 3:  # the role chunk, then generated text
        piece = sock.recv(65536)
        assert piece, seen
        seen += piece
    return sock, seen


def _rest(sock: socket.socket, seen: bytes) -> bytes:
    """Everything until the server closes the connection (it was asked to: Connection: close)."""
    with sock:
        while piece := sock.recv(65536):
            seen += piece
    return seen


def _dechunk(raw: bytes) -> tuple[bytes, bytes]:
    """(head, body) of a whole chunked HTTP/1.1 answer; fails on bad framing or a missing end."""
    head, rest = raw.split(b"\r\n\r\n", 1)
    assert b"transfer-encoding: chunked" in head.lower(), head
    body = b""
    while True:
        size_line, rest = rest.split(b"\r\n", 1)
        size = int(size_line, 16)
        if size == 0:
            assert rest == b"\r\n", rest[:200]  # the last chunk, then nothing more
            return head, body
        body, rest = body + rest[:size], rest[size:]
        assert rest.startswith(b"\r\n"), rest[:200]
        rest = rest[2:]


def _assert_broken_off(raw: bytes) -> dict[str, Any]:
    """One status line, whole framing, events per the document, the last an error; it."""
    assert raw.count(b"HTTP/1.1 ") == 1, raw[-500:]
    head, body = _dechunk(raw)
    assert head.startswith(b"HTTP/1.1 200 ") and b"text/event-stream" in head.lower()
    docs = check_stream("/v1/chat/completions", body)
    assert "error" in docs[-1] and all("error" not in d for d in docs[:-1]), docs[-1]
    assert docs[-1]["error"]["type"] == "server_error", docs[-1]
    assert docs[-1]["error"]["code"] == "stream_interrupted", docs[-1]
    error: dict[str, Any] = docs[-1]["error"]
    return error


def test_a_worker_killed_mid_stream_ends_the_stream_with_an_error_event(node: Node) -> None:
    body = _long_request(node)
    pid = node.get("/status").json()["models"]["demo"]["pid"]
    sock, seen = _open_stream(node.url, body)
    os.kill(pid, signal.SIGKILL)
    error = _assert_broken_off(_rest(sock, seen))
    assert "demo" in error["message"]
    assert "broke off mid-body" in node.log()
    assert node.alive() and "500" not in _codes(node)


def test_a_peer_killed_mid_stream_ends_the_relayed_stream_with_an_error_event(
    start_node: Callable[..., Node], demo_models: Path, short_socket_dir: str, tmp_path: Path
) -> None:
    key = tmp_path / "gossip.key"
    key.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    gb, ga = free_port(), free_port()

    def gossip(port: int, join: list[str]) -> dict[str, Any]:
        return {
            "key_file": str(key),
            "bind": "127.0.0.1",
            "port": port,
            "join": join,
            "profile": "local",
        }

    b = start_node(
        probe_interval=1.0,
        node={"name": "b", "state_dir": str(tmp_path / "b")},
        inference={"socket_dir": short_socket_dir},
        models=_models(demo_models)[:1],
        gossip=gossip(gb, []),
    )
    a = start_node(
        probe_interval=1.0,
        node={"name": "a", "state_dir": str(tmp_path / "a")},
        gossip=gossip(ga, [f"127.0.0.1:{gb}"]),
    )

    def a_routes_demo() -> bool:
        rows = {m["name"]: m for m in a.get("/status").json()["cluster"]}
        digest = rows.get("b", {}).get("digest") or {}
        return bool(digest.get("models", {}).get("demo", {}).get("state") == "ready")

    wait_until(a_routes_demo, 60, what="a to learn from b's digest that demo is ready")
    body = _long_request(a)
    sock, seen = _open_stream(a.url, body)
    b.proc.kill()  # the whole peer goes, mid-answer
    error = _assert_broken_off(_rest(sock, seen))
    assert "peer b" in error["message"]
    assert a.alive() and "500" not in _codes(a)


# --- a sleeping worker: an invalid request never wakes it; a refusal after the wake is carried


@pytest.fixture
def meminfo(tmp_path: Path) -> Path:
    path = tmp_path / "meminfo"
    path.write_text("MemTotal: 8000000 kB\nMemAvailable: 4000000 kB\n")
    return path


class Clock:
    """Monotonic time the test moves by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


TTL = 600.0


def now(s: Sleepable) -> Phase:
    """Its phase at this moment (a call, so the type checker does not assume it stays put)."""
    return s.phase


@contextlib.asynccontextmanager
async def asleep(tmp_path: Path, meminfo: Path) -> AsyncIterator[tuple[TestClient, Sleeper]]:
    """A front over one standalone worker that has started, then gone to sleep."""
    model = demo_gguf.write_tiny_llama(tmp_path / "tiny.gguf")
    cfg = config.from_mapping(
        {
            "version": 1,
            "node": {"state_dir": str(tmp_path / "state")},
            "models": [{"name": "a", "path": str(model), "kind": "gguf", "idle_ttl": TTL}],
        }
    )
    run = tmp_path / "state" / "run"
    units = worker_units(cfg, run)
    clock = Clock()
    sleeper = Sleeper(cfg.sleep, sleepables(cfg, units), clock=clock, meminfo=meminfo)
    inf = Inference(cfg, run, units, sleeper=sleeper)
    app = web.Application()
    app.add_subapp(cairn_openai.PREFIX, cairn_openai.create_app(inf.routes()))
    client = TestClient(TestServer(app))
    await client.start_server()
    await inf.start()
    try:
        await sleeper.start()
        unit = sleeper.units["cairn-model@a.service"]
        async with asyncio.timeout(30):
            while now(unit) is not Phase.AWAKE:
                await asyncio.sleep(0.05)
        clock.t += TTL
        await sleeper.tick()
        assert now(unit) is Phase.ASLEEP
        yield client, sleeper
    finally:
        await inf.stop()
        await client.close()


async def test_an_invalid_streaming_request_is_a_400_and_wakes_nothing(
    tmp_path: Path, meminfo: Path
) -> None:
    async with asleep(tmp_path, meminfo) as (client, sleeper):
        unit = sleeper.units["cairn-model@a.service"]
        for body in (
            {"model": "a", "messages": CHAT, "stream": True, "temperature": 5},
            {"model": "a", "prompt": 5, "stream": True},
        ):
            path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
            resp = await client.post(path, json=body)
            assert resp.status == 400 and resp.content_type == "application/json"
            doc = await resp.json()
            check_response(path, "post", 400, doc)
            assert doc["error"]["param"] in ("temperature", "prompt"), doc
        # A wake would have come first: the handler answers only once the worker is up.
        assert now(unit) is Phase.ASLEEP and unit.wakes == 0


async def test_a_request_the_workers_checks_refuse_is_a_400_before_the_wake(
    tmp_path: Path, meminfo: Path
) -> None:
    """Beyond the schema: the checks the worker runs after parsing run at the front too.

    Needs the api helper's `check()` on each request (issue 16) called in Inference.proxy.
    """
    refused: list[tuple[dict[str, Any], str]] = [
        ({"model": "a", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": "a", "prompt": "x", "n": 2}, "n"),
        ({"model": "a", "messages": CHAT, "top_logprobs": 2}, "top_logprobs"),
        ({"model": "a", "messages": CHAT, "tool_choice": "required"}, "tool_choice"),
    ]
    async with asleep(tmp_path, meminfo) as (client, sleeper):
        for body, param in refused:
            path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
            resp = await client.post(path, json={**body, "stream": True})
            assert resp.status == 400 and resp.content_type == "application/json", param
            assert (await resp.json())["error"]["param"] == param
        assert now(sleeper.units["cairn-model@a.service"]) is Phase.ASLEEP


async def test_a_refusal_after_the_wake_carries_the_workers_error_unchanged(
    tmp_path: Path, meminfo: Path
) -> None:
    too_long = {"model": "a", "prompt": "x" * 5000, "max_tokens": 4}  # over a slot's context
    async with asleep(tmp_path, meminfo) as (client, sleeper):
        resp = await client.post("/v1/completions", json={**too_long, "stream": True})
        assert resp.status == 200 and resp.content_type == SSE  # promised before the wake
        raw = await resp.read()
        assert b": waking a" in raw
        (carried,) = check_stream("/v1/completions", raw)
        resp = await client.post("/v1/completions", json=too_long)  # awake now: the plain answer
        assert resp.status == 400
        assert carried == await resp.json()
        assert carried["error"]["code"] == "context_length_exceeded", carried
        assert sleeper.units["cairn-model@a.service"].wakes == 1

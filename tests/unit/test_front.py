"""The front reads request bodies whole, under a deadline, and refuses broken ones with a 4xx.

/v1 is an app of its own: every answer under it is in OpenAI's error shape; the rest keep theirs.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, cast

import aiohttp
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from cairn import config
from cairn.config import ModelKind
from cairn.daemon import Supervisor
from cairn.inference import front, openai
from cairn.inference.types import EngineStats, ModelState, WorkerHealth
from cairn.status.app import create_app
from cairn.system.units import Units, UnitState, UnitStatus


async def _boom(request: web.Request) -> web.Response:
    raise RuntimeError("secret internals")


@pytest.fixture
async def client(aiohttp_client: Any, tmp_path: Path) -> TestClient:
    """The app as the daemon mounts it, plus a route that fails on each of its two apps.

    One model is configured, its worker never started: an answer that needed it is a 503.
    """
    cfg = config.from_mapping(
        {
            "version": 1,
            "node": {"name": "unit", "state_dir": str(tmp_path)},
            "probe": {"nix_profiles": str(tmp_path / "nix")},
            "inference": {"max_body_bytes": 4096},
            "models": [{"name": "m", "path": str(tmp_path / "m.gguf"), "kind": "gguf"}],
        }
    )
    sup = Supervisor(cfg)
    app = create_app(sup)
    app.router.add_get("/boom", _boom)
    v1 = openai.create_app([*sup.inference.routes(), web.get("/boom", _boom)])
    app.add_subapp(openai.PREFIX, v1)
    c: TestClient = await aiohttp_client(app)
    return c


async def _raw(client: TestClient, pieces: list[bytes], pause: float) -> tuple[int, Any]:
    """Send pieces a pause apart on one connection; the status and JSON body of the answer."""
    assert client.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    for piece in pieces:
        writer.write(piece)
        await asyncio.sleep(pause)
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    body = await reader.readexactly(length)
    writer.close()
    return int(head.split()[1]), json.loads(body)


HEAD = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
)


async def test_a_body_trickled_past_the_deadline_is_408(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(front, "BODY_TIMEOUT_S", 0.3)
    status, doc = await _raw(client, [HEAD + b"Content-Length: 100\r\n\r\n", b'{"mo'], 0.6)
    assert status == 408 and "not received within" in doc["error"]["message"]


async def test_a_body_over_the_limit_is_413_however_it_is_framed(client: TestClient) -> None:
    big = b'{"model": "m", "x": "' + b"x" * 5000 + b'"}'
    resp = await client.post("/v1/chat/completions", data=big, headers=_json())
    assert resp.status == 413
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (big[:3000], big[3000:]))
    status, _ = await _raw(client, [HEAD + b"Transfer-Encoding: chunked\r\n\r\n", chunks], 0.05)
    assert status == 413


async def test_a_body_that_does_not_decompress_is_400(client: TestClient) -> None:
    head = HEAD + b"Content-Encoding: gzip\r\nContent-Length: 9\r\n\r\n"
    status, doc = await _raw(client, [head, b"not gzip!"], 0.2)  # the handler is reading by now
    assert status == 400 and "malformed" in doc["error"]["message"], doc


def _json() -> dict[str, str]:
    return {"Content-Type": "application/json"}


class _AwakeUnits:
    """A systemd backend whose every unit is active: the front asks the worker's /health."""

    def known(self, unit: str) -> UnitStatus:
        return UnitStatus(UnitState(unit, "active", "running"))


@pytest.mark.parametrize(
    ("body", "healthy"),
    [
        (b'{"model": 5}', False),  # a worker that says what it should not is not believed
        (b"not json", False),
        (None, True),  # what the worker itself would say
    ],
)
async def test_worker_health_is_typed_or_dropped(
    tmp_path: Path, body: bytes | None, healthy: bool
) -> None:
    cfg = config.from_mapping(
        {
            "version": 1,
            "node": {"name": "unit", "state_dir": str(tmp_path)},
            "inference": {"workers": "systemd", "socket_dir": str(tmp_path / "s")},
            "models": [{"name": "m", "path": str(tmp_path / "m.gguf"), "kind": "gguf"}],
        }
    )
    sent = WorkerHealth(
        "m", ModelKind.GGUF, ModelState.READY, 42, 0.5, "cpu", "", [2], {"7": [2]}, EngineStats()
    )

    async def health(_: web.Request) -> web.Response:
        return web.Response(body=msgspec.json.encode(sent) if body is None else body)

    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app)
    await runner.setup()
    (tmp_path / "s").mkdir()
    await web.UnixSite(runner, str(tmp_path / "s" / "m.sock")).start()
    inf = front.Inference(cfg, tmp_path / "run", cast(Units, _AwakeUnits()))
    try:
        await inf.poll_health()
        view = inf.view()["m"]
    finally:
        await inf.stop()
        await runner.cleanup()
    assert inf.models["m"].health == (sent if healthy else None)
    assert view.state is ModelState.READY and view.stats == EngineStats()
    assert view.pid == (42 if healthy else None)
    assert msgspec.json.encode(view.stats) == b"{}"  # an engine without stats, as on the wire


OPENAI_KEYS = {"message", "type", "param", "code"}


async def _openai_error(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status == status
    doc = await resp.json()
    assert set(doc) == {"error"} and set(doc["error"]) == OPENAI_KEYS, doc
    error: dict[str, Any] = doc["error"]
    return error


async def test_an_unknown_v1_path_is_404_in_openai_shape(client: TestClient) -> None:
    for path in ("/v1/nope", "/v1", "/v1/chat/completions/x"):
        error = await _openai_error(await client.get(path), 404)
        assert error["type"] == "invalid_request_error", path


async def test_a_wrong_method_under_v1_is_405_in_openai_shape(client: TestClient) -> None:
    resp = await client.get("/v1/chat/completions")
    error = await _openai_error(resp, 405)
    assert error["type"] == "invalid_request_error"
    assert resp.headers["Allow"] == "POST"
    resp = await client.delete("/v1/models")
    await _openai_error(resp, 405)
    assert set(resp.headers["Allow"].split(",")) == {"GET", "HEAD"}


async def test_a_failing_v1_handler_is_500_in_openai_shape_and_counted(client: TestClient) -> None:
    resp = await client.get("/v1/boom")
    body = await resp.text()
    assert "secret internals" not in body and "Traceback" not in body
    error = await _openai_error(resp, 500)
    assert error == {
        "message": "internal error; see the node's log",
        "type": "server_error",
        "param": None,
        "code": None,
    }
    await client.get("/v1/nope")
    metrics = await (await client.get("/metrics")).text()
    assert 'cairn_http_requests_total{code="500",method="GET",route="/v1/boom"} 1.0' in metrics
    assert 'cairn_http_requests_total{code="404",method="GET",route="unmatched"} 1.0' in metrics


async def test_the_openai_routes_keep_their_route_labels(client: TestClient) -> None:
    assert (await client.get("/v1/models")).status == 200
    body = {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}
    resp = await client.post("/v1/chat/completions", json=body)
    assert (await _openai_error(resp, 404))["code"] == "model_not_found"
    metrics = await (await client.get("/metrics")).text()
    assert 'cairn_http_requests_total{code="200",method="GET",route="/v1/models"} 1.0' in metrics
    label = 'code="404",method="POST",route="/v1/chat/completions"'
    assert f"cairn_http_requests_total{{{label}}} 1.0" in metrics


async def test_the_other_paths_keep_the_status_shape(client: TestClient) -> None:
    for path, method, status in (
        ("/nope", "GET", 404),
        ("/v1x", "GET", 404),
        ("/status", "POST", 405),
        ("/boom", "GET", 500),
    ):
        resp = await client.request(method, path, json={})
        assert resp.status == status, path
        doc = await resp.json()
        assert set(doc["error"]) == {"status", "message"} and doc["error"]["status"] == status


async def test_a_model_is_got_as_it_is_listed_and_an_unknown_one_is_404(
    client: TestClient,
) -> None:
    listed = await (await client.get("/v1/models")).json()
    resp = await client.get("/v1/models/m")
    assert resp.status == 200
    assert [await resp.json()] == listed["data"]
    assert listed["data"][0]["id"] == "m" and listed["data"][0]["object"] == "model"
    error = await _openai_error(await client.get("/v1/models/nope"), 404)
    assert (error["code"], error["param"]) == ("model_not_found", "model")


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"model": "m", "messages": [], "stream": True}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}, "model"),
        ("/v1/completions", {"model": "m", "prompt": "x", "top_p": 2, "stream": True}, "top_p"),
        ("/v1/embeddings", {"model": "m", "input": 5}, "input"),
    ],
)
async def test_an_invalid_body_is_400_naming_the_field_before_any_worker_is_asked(
    client: TestClient, path: str, body: dict[str, Any], param: str
) -> None:
    error = await _openai_error(await client.post(path, json=body), 400)
    assert error["param"] == param and error["type"] == "invalid_request_error", error


def test_an_upstream_error_is_carried_into_a_stream_unchanged() -> None:
    worker = {"error": {"message": "m", "type": "t", "param": "p", "code": "c"}}
    assert front._carried(400, msgspec.json.encode(worker)) == worker
    other = front._carried(502, b"<html>bad gateway</html>")
    assert other["error"]["type"] == "server_error" and "502" in other["error"]["message"]
    assert "bad gateway" in other["error"]["message"]
    for broken in (b'{"error": "\xff"}', b"[" * 100_000, b'{"error": "just a string"}'):
        assert front._carried(500, broken)["error"]["type"] == "server_error"


SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)
EVENT = b'data: {"x": 1}\n\n'


@pytest.mark.parametrize(
    "answer",
    [
        SSE_HEAD + b"%x\r\n%s\r\n" % (len(EVENT), EVENT),  # a stream, its end never sent
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 99\r\n\r\n{",
    ],
)
async def test_a_worker_answer_that_breaks_off_is_never_passed_on_as_whole(
    aiohttp_client: Any, tmp_path: Path, answer: bytes
) -> None:
    cfg = config.from_mapping(
        {
            "version": 1,
            "node": {"name": "unit", "state_dir": str(tmp_path)},
            "inference": {"workers": "systemd", "socket_dir": str(tmp_path / "s")},
            "models": [{"name": "m", "path": str(tmp_path / "m.gguf"), "kind": "gguf"}],
        }
    )

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)  # then it dies
        await writer.drain()
        writer.close()

    (tmp_path / "s").mkdir()
    server = await asyncio.start_unix_server(worker, str(tmp_path / "s" / "m.sock"))
    inf = front.Inference(cfg, tmp_path / "run", cast(Units, _AwakeUnits()))
    app = web.Application()
    app.add_subapp(openai.PREFIX, openai.create_app(inf.routes()))
    client: TestClient = await aiohttp_client(app)
    body = {"model": "m", "prompt": "x", "stream": True}
    try:
        resp = await client.post("/v1/completions", json=body)
        assert resp.status == 200
        if resp.content_type == "text/event-stream":
            lines = (await resp.read()).split(b"\n\n")
            assert lines[0] == EVENT.strip()
            error = json.loads(lines[1].removeprefix(b"data: "))["error"]
            assert (error["type"], error["code"]) == ("server_error", "stream_interrupted")
            assert lines[2:] == [b"data: [DONE]", b""]
        else:  # cut off: the client sees a body that never ended, not a whole one
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
        assert inf.streams_broken == 1
    finally:
        await inf.stop()
        server.close()

"""The OpenAI-compatible front, driven by the official `openai` client against a real node."""

from __future__ import annotations

import http.client
import itertools
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from cairn.inference import demo
from tests.conftest import Node
from tests.harness import wait_until


@pytest.fixture(scope="module")
def models_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="cairn-models-"))
    demo.write(d)
    (d / "broken.gguf").write_bytes(b"GGUF" + os.urandom(4096))  # a corrupt model file
    yield d
    shutil.rmtree(d)


@pytest.fixture
def socket_dir() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="cs-", dir="/tmp")  # unix socket paths must stay short
    yield d
    shutil.rmtree(d, ignore_errors=True)


def model(name: str, path: Path, kind: str = "gguf", **extra: Any) -> dict[str, Any]:
    return {"name": name, "path": str(path), "kind": kind, "threads": 1, **extra}


@pytest.fixture
def node(start_node: Callable[..., Node], models_dir: Path, socket_dir: str) -> Node:
    n = start_node(
        probe_interval=1.0,
        inference={"socket_dir": socket_dir},
        models=[
            model("demo", models_dir / "demo.gguf", slots=4, context=2048),
            model("demo-embed", models_dir / "demo-embed.onnx", kind="onnx"),
            model("tight", models_dir / "demo.gguf", slots=1, queue=0, context=4096),
            model("broken", models_dir / "broken.gguf"),
            model("gguf-embed", models_dir / "demo.gguf", embedding=True),
        ],
    )
    wait_until(
        lambda: all(m["state"] in ("ready", "failed") for m in status(n)["models"].values()),
        60,
        what="every worker to load or fail",
    )
    return n


def status(n: Node) -> dict[str, Any]:
    doc: dict[str, Any] = n.get("/status").json()
    return doc


def client(n: Node) -> openai.OpenAI:
    return openai.OpenAI(base_url=n.url + "/v1", api_key="unused", max_retries=0, timeout=60)


CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say something."}]


def test_lists_models(node: Node) -> None:
    assert {m.id for m in client(node).models.list()} == {
        "demo",
        "demo-embed",
        "tight",
        "broken",
        "gguf-embed",
    }


def test_chat_completion(node: Node) -> None:
    r = client(node).chat.completions.create(
        model="demo", messages=CHAT, max_tokens=8, temperature=0
    )
    choice = r.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert r.usage is not None and 0 < r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.model == "demo" and r.object == "chat.completion"


def test_text_completion_with_stop_and_max_tokens(node: Node) -> None:
    c = client(node)
    full = c.completions.create(model="demo", prompt="abc", max_tokens=12, temperature=0)
    assert full.choices[0].finish_reason == "length"
    assert full.usage is not None and full.usage.completion_tokens == 12
    text = full.choices[0].text
    if len(text) > 3:  # stop on a piece of the greedy output: it must end there, excluded
        stop = text[2:4]
        cut = c.completions.create(
            model="demo", prompt="abc", max_tokens=12, temperature=0, stop=[stop]
        )
        assert cut.choices[0].finish_reason == "stop"
        assert cut.choices[0].text == text[: text.index(stop)]


def test_streaming_chat_matches_the_whole_answer(node: Node) -> None:
    c = client(node)
    whole = c.chat.completions.create(model="demo", messages=CHAT, max_tokens=16, temperature=0)
    pieces, finish = [], None
    for chunk in c.chat.completions.create(
        model="demo", messages=CHAT, max_tokens=16, temperature=0, stream=True
    ):
        assert chunk.object == "chat.completion.chunk"
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    assert "".join(pieces) == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason


def test_embeddings(node: Node) -> None:
    r = client(node).embeddings.create(model="demo-embed", input=["cairn", "stones"])
    a, b = (d.embedding for d in r.data)
    assert len(a) == len(b) == 32 and a != b
    assert abs(sum(x * x for x in a) - 1.0) < 1e-4
    assert r.usage.prompt_tokens == len("cairn") + len("stones")


def test_unknown_model_is_404(node: Node) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        client(node).chat.completions.create(model="nope", messages=CHAT)
    assert exc.value.code == "model_not_found"


def test_invalid_body_is_400_naming_the_field(node: Node) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        bad: Any = [{"role": "user", "content": 5}]
        client(node).chat.completions.create(model="demo", messages=bad)
    body = exc.value.body
    assert isinstance(body, dict) and body["param"] == "messages.0.content"


def test_corrupt_model_is_503_with_reason_while_others_serve(node: Node) -> None:
    with pytest.raises(openai.InternalServerError) as exc:
        client(node).chat.completions.create(model="broken", messages=CHAT)
    assert exc.value.status_code == 503
    assert "broken" in str(exc.value) and "unavailable" in str(exc.value)
    assert status(node)["models"]["broken"]["state"] == "failed"
    ok = client(node).chat.completions.create(model="demo", messages=CHAT, max_tokens=2)
    assert ok.choices[0].finish_reason in ("stop", "length")


def test_full_queue_is_429_with_retry_after(node: Node) -> None:
    c = client(node)
    stream = c.chat.completions.create(
        model="tight", messages=CHAT, max_tokens=3000, temperature=1.0, stream=True
    )
    next(iter(stream))  # the only slot is now generating
    try:
        with pytest.raises(openai.RateLimitError) as exc:
            c.chat.completions.create(model="tight", messages=CHAT, max_tokens=2)
        assert exc.value.response.headers["Retry-After"] == "1"
    finally:
        stream.close()


def test_client_disconnect_cancels_generation(node: Node) -> None:
    c = client(node)
    stream = c.chat.completions.create(
        model="tight", messages=CHAT, max_tokens=3500, temperature=1.0, stream=True
    )
    next(iter(stream))
    stream.close()  # hang up mid-stream
    # The slot frees long before 3500 tokens could be generated: the request was cancelled.
    wait_until(
        lambda: (
            status(node)["models"]["tight"]["stats"].get("active") == 0
            and status(node)["models"]["tight"]["stats"].get("cancelled_total", 0) >= 1
        ),
        15,
        what="the cancelled request to leave its slot",
    )


def test_four_streams_on_four_slots_interleave(node: Node) -> None:
    arrivals: list[tuple[float, int]] = []
    lock = threading.Lock()
    go = threading.Barrier(4)
    clients = [client(node) for _ in range(4)]

    def run(i: int) -> None:
        go.wait()  # all four ask at once
        for chunk in clients[i].completions.create(
            model="demo", prompt=f"request {i}", max_tokens=400, temperature=0, stream=True
        ):
            if chunk.choices and chunk.choices[0].text:
                with lock:
                    arrivals.append((time.monotonic(), i))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    spans = {
        i: (min(t for t, j in arrivals if j == i), max(t for t, j in arrivals if j == i))
        for i in range(4)
    }
    # Overlap, not one after another: every stream starts before every other one ends.
    for i in range(4):
        for j in range(4):
            if i != j:
                assert spans[i][0] < spans[j][1], (i, j, spans)
    order = [j for _, j in sorted(arrivals)]
    switches = sum(1 for a, b in itertools.pairwise(order) if a != b)
    assert switches >= 8, order  # tokens of different requests interleave


def test_sigterm_stops_node_and_workers_within_5s(node: Node) -> None:
    pids = [m["pid"] for m in status(node)["models"].values() if m["pid"]]
    assert pids
    sent = time.monotonic()
    node.proc.terminate()
    assert node.proc.wait(timeout=5) == 0
    assert time.monotonic() - sent < 5
    for pid in pids:  # stopped and reaped by the supervisor before it exited
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} outlived the supervisor"


def test_workers_die_with_a_killed_supervisor(node: Node) -> None:
    pids = [m["pid"] for m in status(node)["models"].values() if m["pid"]]
    assert pids
    node.proc.kill()  # SIGKILL: no chance to stop its children itself
    node.proc.wait()
    wait_until(
        lambda: not any(Path(f"/proc/{p}").exists() for p in pids),
        10,
        what="the workers to exit after their supervisor died",
    )


def test_gguf_embeddings(node: Node) -> None:
    c = client(node)
    r = c.embeddings.create(model="gguf-embed", input=["cairn", "stones", "cairn"])
    a, b, a2 = (d.embedding for d in r.data)
    assert len(a) == 64 and a == a2 and a != b
    assert abs(sum(x * x for x in a) - 1.0) < 1e-4
    with pytest.raises(openai.BadRequestError) as exc:
        c.chat.completions.create(model="gguf-embed", messages=CHAT)
    assert "embeddings only" in str(exc.value)


def test_worker_threads_are_pinned_one_core_each(
    start_node: Callable[..., Node], models_dir: Path, socket_dir: str
) -> None:
    n = start_node(
        inference={"socket_dir": socket_dir},
        models=[model("pinned", models_dir / "demo.gguf", cpus=[0, 1], threads=2, slots=1)],
    )
    wait_until(lambda: status(n)["models"]["pinned"]["state"] == "ready", 60, what="the worker")
    client(n).completions.create(model="pinned", prompt="warm up", max_tokens=8)  # threads exist

    def cores_used() -> set[int]:
        return {c for cores in status(n)["models"]["pinned"]["threads"].values() for c in cores}

    # /health is polled each second: wait for a map taken after the decode threads started.
    wait_until(lambda: cores_used() == {0, 1}, 10, what="threads on both cores")
    m = status(n)["models"]["pinned"]
    assert m["cores"] == [0, 1]
    # OpenMP binds thread i to core i; threads the bound main thread starts inherit core 0.
    # So every worker thread is on exactly one core, and both cores carry compute threads.
    assert all(len(cores) == 1 for cores in m["threads"].values()), m["threads"]


def test_requests_are_served_off_the_compute_core(
    start_node: Callable[..., Node], models_dir: Path, socket_dir: str
) -> None:
    """A legacy node's shape: one compute thread on core 1, the worker's event loop on core 0."""
    n = start_node(
        inference={"socket_dir": socket_dir},
        models=[model("pinned", models_dir / "demo.gguf", cpus=[1], threads=1, slots=1)],
    )
    wait_until(lambda: status(n)["models"]["pinned"]["state"] == "ready", 60, what="the worker")
    client(n).completions.create(model="pinned", prompt="warm up", max_tokens=8)
    wait_until(lambda: status(n)["models"]["pinned"]["threads"], 10, what="a thread map")
    m = status(n)["models"]["pinned"]
    threads = {int(t): cores for t, cores in m["threads"].items()}
    # The main thread (tid == pid) runs the event loop: it left the compute core after the
    # load. The decode thread, started before that, stays on it.
    assert threads[m["pid"]] == [0], threads
    assert [1] in threads.values(), threads


# --- request bodies: read whole however they arrive; broken JSON is a 400 naming why --------


def _raw(sock: socket.socket, pieces: list[bytes], pause: float = 0.3) -> tuple[int, Any]:
    """Send a request in pieces, each its own TCP segment, a pause apart; (status, JSON body)."""
    with sock:
        sock.settimeout(30)
        for i, piece in enumerate(pieces):
            if i:
                time.sleep(pause)  # the server has read and buffered what came so far
            sock.sendall(piece)
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        return resp.status, json.loads(resp.read())


def _tcp(n: Node) -> socket.socket:
    host, port = n.url.removeprefix("http://").rsplit(":", 1)
    s = socket.create_connection((host, int(port)))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # each piece leaves at once
    return s


def _head(path: str, length: int | None) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"{framing}\r\nConnection: close\r\n\r\n"
    ).encode()


CHAT_BODY = json.dumps({"model": "demo", "messages": CHAT, "max_tokens": 2}).encode()


def test_a_body_split_across_segments_is_read_whole(node: Node) -> None:
    head = _head("/v1/chat/completions", len(CHAT_BODY))
    status_, doc = _raw(_tcp(node), [head + CHAT_BODY[:20], CHAT_BODY[20:]])
    assert status_ == 200, doc
    assert doc["choices"][0]["finish_reason"] in ("stop", "length")
    # Chunked, the end in a later segment than the start.
    a, b = CHAT_BODY[:20], CHAT_BODY[20:]
    chunks = [b"%x\r\n%s\r\n" % (len(a), a), b"%x\r\n%s\r\n0\r\n\r\n" % (len(b), b)]
    status_, doc = _raw(_tcp(node), [_head("/v1/chat/completions", None) + chunks[0], chunks[1]])
    assert status_ == 200, doc


def test_a_body_over_200_kb_is_read_whole(node: Node) -> None:
    # `user` is an OpenAI field the worker ignores: the body is valid, only big.
    r = client(node).chat.completions.create(
        model="demo", messages=CHAT, max_tokens=2, user="u" * 300_000
    )
    assert r.choices[0].finish_reason in ("stop", "length")


NESTED = b'{"model": "demo", "metadata": ' + b"[" * 100_000 + b"}"  # a field both look past
NOT_UTF8 = b'{"model": "demo", "messages": [{"role": "user", "content": "\xff\xfe"}]}'


@pytest.mark.parametrize(
    ("body", "why"), [(NESTED, "nested too deeply"), (NOT_UTF8, "not valid UTF-8")]
)
def test_broken_json_is_a_400_naming_why_at_the_front_and_the_worker(
    node: Node, socket_dir: str, body: bytes, why: str
) -> None:
    head = _head("/v1/chat/completions", len(body))
    status_, doc = _raw(_tcp(node), [head + body])
    assert status_ == 400 and why in doc["error"]["message"], doc
    assert doc["error"]["type"] == "invalid_request_error"
    worker = socket.socket(socket.AF_UNIX)
    worker.connect(f"{socket_dir}/demo.sock")
    status_, doc = _raw(worker, [head + body])
    assert status_ == 400 and why in doc["error"]["message"], doc
    codes = {
        sample.labels["code"]: sample.value
        for family in text_string_to_metric_families(node.get("/metrics").body.decode())
        for sample in family.samples
        if sample.name == "cairn_http_requests_total"
        and sample.labels["route"] == "/v1/chat/completions"
    }
    assert codes.get("400") and "500" not in codes

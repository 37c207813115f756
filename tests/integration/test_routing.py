"""Routing across nodes: a request for a model only a peer serves goes there and streams back."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from prometheus_client.parser import text_string_to_metric_families

from cairn.gossip.keyring import Keyring
from cairn.inference import demo
from cairn.inference.front import FORWARDED_BY
from tests.conftest import Node, free_port
from tests.harness import wait_until
from tests.harness.lan import Lan


@pytest.fixture(scope="module")
def models_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="cairn-models-"))
    demo.write(d)
    yield d
    shutil.rmtree(d)


def _gossip(key_file: Path, port: int, join: list[str]) -> dict[str, Any]:
    return {
        "key_file": str(key_file),
        "bind": "127.0.0.1",
        "port": port,
        "join": join,
        "profile": "local",
    }


@pytest.fixture
def pair(
    start_node: Callable[..., Node], models_dir: Path, tmp_path: Path
) -> Iterator[tuple[Node, Node]]:
    """Node b serves `demo`; node a serves nothing and joins b."""
    key = tmp_path / "gossip.key"
    key.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    sockets = tempfile.mkdtemp(prefix="cs-", dir="/tmp")  # unix socket paths must stay short
    gb, ga = free_port(), free_port()
    b = start_node(
        probe_interval=1.0,
        node={"name": "b", "state_dir": str(tmp_path / "b")},
        inference={"socket_dir": sockets},
        models=[{"name": "demo", "path": str(models_dir / "demo.gguf"), "kind": "gguf"}],
        gossip=_gossip(key, gb, []),
    )
    a = start_node(
        probe_interval=1.0,
        node={"name": "a", "state_dir": str(tmp_path / "a")},
        gossip=_gossip(key, ga, [f"127.0.0.1:{gb}"]),
    )

    def a_sees_demo_ready() -> bool:
        rows = {m["name"]: m for m in a.get("/status").json()["cluster"]}
        digest = rows.get("b", {}).get("digest") or {}
        return bool(digest.get("models", {}).get("demo", {}).get("state") == "ready")

    wait_until(a_sees_demo_ready, 60, what="a to learn from b's digest that demo is ready")
    yield a, b
    shutil.rmtree(sockets, ignore_errors=True)


def _counter(node: Node, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels`."""
    text = node.get("/metrics").body.decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def test_a_streams_an_answer_from_the_model_only_b_serves(pair: tuple[Node, Node]) -> None:
    a, b = pair
    before = _counter(b, "cairn_model_requests_total", model="demo")
    client = openai.OpenAI(base_url=a.url + "/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model="demo",
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=12,
        stream=True,
    )
    chunks = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len([c for c in chunks if c]) >= 2  # streamed piece by piece, not in one body
    assert "".join(chunks)
    assert _counter(a, "cairn_requests_forwarded_total") == 1
    # b counts the request once its handler returns, a moment after the last byte left.
    wait_until(
        lambda: _counter(b, "cairn_model_requests_total", model="demo") == before + 1,
        5,
        what="b to count the request it answered",
    )


def _post(node: Node, model: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "x"}]}).encode()
    req = urllib.request.Request(
        node.url + "/v1/chat/completions",
        data=body,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_a_forwarded_request_is_never_passed_on_again(pair: tuple[Node, Node]) -> None:
    a, _ = pair
    status, body = _post(a, "demo", {"X-Cairn-Forwarded-By": "elsewhere"})
    assert status == 503
    assert body["error"]["code"] == "model_unavailable" and "'demo'" in body["error"]["message"]
    assert _counter(a, "cairn_requests_forwarded_total") == 0


def test_a_model_no_node_serves_is_404_and_a_gone_one_503(pair: tuple[Node, Node]) -> None:
    a, b = pair
    status, body = _post(a, "nowhere")
    assert (status, body["error"]["code"]) == (404, "model_not_found")
    b.proc.kill()  # b falls silent: a suspects, then declares it dead
    wait_until(lambda: _post(a, "demo")[0] == 503, 30, what="a to stop routing to the dead b")
    status, body = _post(a, "demo")
    assert "'demo'" in body["error"]["message"]
    assert a.alive()
    rows = {m["name"]: m for m in a.get("/status").json()["cluster"]}
    assert rows["b"]["digest"]["models"]["demo"]["state"] == "ready"  # b's last word stands...
    wait_until(  # ...but b itself is written off
        lambda: (
            {m["name"]: m for m in a.get("/status").json()["cluster"]}["b"]["state"]
            in ("suspect", "dead")
        ),
        15,
        what="a to suspect the killed b",
    )


# --- peers on a real network address: the hop is signed, the signature is good once ---------

TOKEN = "routing-test-operator-token-0123"


@pytest.fixture
def net_pair(
    lan: Lan, start_node: Callable[..., Node], models_dir: Path, tmp_path: Path
) -> Iterator[tuple[Node, Node, Keyring]]:
    """Like `pair`, bound on the test network's host address: no request is from loopback."""
    raw = os.urandom(32)
    key = tmp_path / "gossip.key"
    key.write_text(base64.b64encode(raw).decode() + "\n")
    sockets = tempfile.mkdtemp(prefix="cs-", dir="/tmp")
    gb, ga = free_port(), free_port()
    net = {"host": lan.host_ip, "token": TOKEN, "probe_interval": 1.0}
    gossip = {"bind": lan.host_ip, "profile": "local", "key_file": str(key)}
    b = start_node(
        node={"name": "b", "state_dir": str(tmp_path / "b")},
        inference={"socket_dir": sockets},
        models=[{"name": "demo", "path": str(models_dir / "demo.gguf"), "kind": "gguf"}],
        gossip={**gossip, "port": gb, "join": []},
        **net,
    )
    a = start_node(
        node={"name": "a", "state_dir": str(tmp_path / "a")},
        gossip={**gossip, "port": ga, "join": [f"{lan.host_ip}:{gb}"]},
        **net,
    )

    def a_sees_demo_ready() -> bool:
        rows = {m["name"]: m for m in a.get("/status").json()["cluster"]}
        digest = rows.get("b", {}).get("digest") or {}
        return bool(digest.get("models", {}).get("demo", {}).get("state") == "ready")

    wait_until(a_sees_demo_ready, 60, what="a to learn from b's digest that demo is ready")
    yield a, b, Keyring([raw], "cairn")
    shutil.rmtree(sockets, ignore_errors=True)


CHAT_PATH = "/v1/chat/completions"


def _send(node: Node, path: str, headers: dict[str, str], method: str = "POST") -> int:
    doc = {"model": "demo", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
    req = urllib.request.Request(
        node.url + path,
        data=json.dumps(doc).encode() if method == "POST" else None,
        method=method,
        headers={"Content-Type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return err.code


def _signed(
    ring: Keyring, path: str, sender: str = "a", at: float | None = None, to: str = "b"
) -> str:
    return ring.sign_request("POST", path, sender, to, time.time() if at is None else at)


def test_a_hop_between_nodes_on_the_network_is_signed_and_served(
    net_pair: tuple[Node, Node, Keyring],
) -> None:
    a, b, _ = net_pair
    assert _send(a, CHAT_PATH, {"Authorization": f"Bearer {TOKEN}"}) == 200
    assert _counter(a, "cairn_requests_forwarded_total") == 1
    wait_until(
        lambda: _counter(b, "cairn_model_requests_total", model="demo", code="200") == 1,
        5,
        what="b to count the request it answered for a",
    )


def test_a_captured_peer_signature_opens_one_request_once(
    net_pair: tuple[Node, Node, Keyring],
) -> None:
    _, b, ring = net_pair
    header = _signed(ring, CHAT_PATH)
    hop = {"Authorization": header, FORWARDED_BY: "a"}
    assert _send(b, CHAT_PATH, hop) == 200
    assert _send(b, CHAT_PATH, hop) == 401  # replayed
    fresh = {"Authorization": _signed(ring, CHAT_PATH), FORWARDED_BY: "a"}
    assert _send(b, "/status", fresh, "GET") == 401  # not a forwarded /v1 request
    assert _send(b, "/v1/completions", fresh) == 401  # signed for another path
    assert _send(b, CHAT_PATH, {"Authorization": fresh["Authorization"]}) == 401  # no hop header
    assert _send(b, CHAT_PATH, {**fresh, FORWARDED_BY: "mallory"}) == 401  # another sender
    for_c = {"Authorization": _signed(ring, CHAT_PATH, to="c"), FORWARDED_BY: "a"}
    assert _send(b, CHAT_PATH, for_c) == 401  # sniffed on its way to another node
    stale = {"Authorization": _signed(ring, CHAT_PATH, at=time.time() - 60), FORWARDED_BY: "a"}
    assert _send(b, CHAT_PATH, stale) == 401
    assert _send(b, CHAT_PATH, fresh) == 200  # untouched, it still works once


def test_the_old_gossip_derived_bearer_token_opens_nothing(
    net_pair: tuple[Node, Node, Keyring],
) -> None:
    _, b, ring = net_pair
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"cairn api token/1")
    old = base64.urlsafe_b64encode(hkdf.derive(ring.keys[0])).decode().rstrip("=")
    bearer = {"Authorization": f"Bearer {old}"}
    assert _send(b, "/status", bearer, "GET") == 401
    assert _send(b, "/metrics", bearer, "GET") == 401
    assert _send(b, "/v1/models", bearer, "GET") == 401
    assert _send(b, CHAT_PATH, {**bearer, FORWARDED_BY: "a"}) == 401


def test_a_hop_to_a_peer_that_freezes_ends_when_gossip_suspects_it(
    pair: tuple[Node, Node],
) -> None:
    a, b = pair
    client = openai.OpenAI(base_url=a.url + "/v1", api_key="x", max_retries=0, timeout=90)
    os.kill(b.proc.pid, signal.SIGSTOP)  # frozen: its sockets stay open, nothing answers
    try:
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as err:
            client.completions.create(model="demo", prompt="hi", max_tokens=4)
        assert err.value.status_code == 503, err.value
        # Gossip's local profile suspects it within seconds; the model's deadline is 600 s.
        assert time.monotonic() - started < 30
    finally:
        os.kill(b.proc.pid, signal.SIGCONT)

"""Who may drive the API from this machine: local tools yes, a web page in a browser no."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import openai

from tests.conftest import Node
from tests.harness.lan import Lan

CHAT = json.dumps({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}).encode()


def _call(
    node: Node, path: str, headers: dict[str, str], body: bytes | None = None
) -> tuple[int, Any]:
    req = urllib.request.Request(node.url + path, data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_a_post_that_is_not_json_is_refused_415(start_node: Callable[..., Node]) -> None:
    node = start_node()
    # What a page on another site can send without a CORS preflight.
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; b=x"):
        code, doc = _call(node, "/v1/chat/completions", {"Content-Type": kind}, CHAT)
        assert code == 415, (kind, doc)
        assert doc["error"]["code"] == "unsupported_media_type"  # OpenAI's shape under /v1
    code, doc = _call(node, "/v1/chat/completions", {"Content-Type": "application/json"}, CHAT)
    assert code == 404 and doc["error"]["code"] == "model_not_found"  # got through


def test_a_request_from_another_site_is_refused_403(start_node: Callable[..., Node]) -> None:
    node = start_node()
    evil = {"Origin": "http://evil.example", "Content-Type": "application/json"}
    assert _call(node, "/v1/chat/completions", evil, CHAT)[0] == 403
    code, doc = _call(node, "/status", {"Origin": "http://evil.example"})
    assert code == 403 and doc["error"]["status"] == 403  # the status API's shape
    assert _call(node, "/status", {"Origin": "null"})[0] == 403  # a sandboxed frame, a file
    own = node.url  # the dashboard fetching /status from its own page
    assert _call(node, "/status", {"Origin": own})[0] == 200


def test_loopback_trust_needs_a_host_that_names_this_machine(
    start_node: Callable[..., Node],
) -> None:
    node = start_node(token="access-test-operator-token-01")
    port = node.url.rpartition(":")[2]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "localhost"):
        assert _call(node, "/status", {"Host": host})[0] == 200, host
    # A name rebound to 127.0.0.1 by its DNS (a page in a browser here): a network client.
    rebound = {"Host": f"rebind.evil.example:{port}"}
    code, doc = _call(node, "/status", rebound)
    assert code == 401, doc
    assert _call(node, "/status", {**rebound, "Authorization": f"Bearer {node.token}"})[0] == 200


def test_the_openai_sdk_on_loopback_works_with_any_key(start_node: Callable[..., Node]) -> None:
    node = start_node(token="access-test-operator-token-02")
    client = openai.OpenAI(base_url=node.url + "/v1", api_key="anything", max_retries=0)
    assert list(client.models.list()) == []
    try:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    except openai.NotFoundError as err:  # past the middleware: the SDK sends JSON
        assert err.code == "model_not_found"
    else:
        raise AssertionError("a model that does not exist answered")


def _raw(node: Node, request: bytes) -> tuple[int, Any]:
    """Send `request` as bytes on a fresh connection (no client library escapes anything)."""
    host, _, port = node.url.removeprefix("http://").rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_undecodable_origin_and_content_type_are_refused_not_500(
    start_node: Callable[..., Node],
) -> None:
    node = start_node()
    host = node.url.removeprefix("http://").encode()
    post = b"POST /v1/completions HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n"
    get = b"GET /status HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n"
    body = b'{"model": "nope", "prompt": "x"}'
    length = b"Content-Length: %d\r\n\r\n" % len(body)
    for origin in (b"http://xn--", b"http://\xff", b"http://xn--\xff.example"):
        code, doc = _raw(node, get + b"Origin: " + origin + b"\r\n\r\n")
        assert code == 403 and doc["error"]["status"] == 403, (origin, doc)
        json_post = post + b"Content-Type: application/json\r\nOrigin: " + origin + b"\r\n"
        code, doc = _raw(node, json_post + length + body)
        assert (code, doc["error"]["code"]) == (403, "forbidden"), (origin, doc)
        assert doc["error"]["message"].isascii()
    code, doc = _raw(node, post + b"Content-Type: text/\xff\r\n" + length + body)
    assert (code, doc["error"]["code"]) == (415, "unsupported_media_type"), doc
    assert "'text/\\udcff'" in doc["error"]["message"]  # the byte shown escaped, never raw
    assert "Traceback" not in node.log()


# As user nobody: open 64 kept-alive connections to the port in argv, then a 65th; say how the
# 65th fared and hold the rest until stdin closes.
_FLOOD = (
    "import os, socket, sys\n"
    "os.setgid(65534); os.setgroups([]); os.setuid(65534)\n"
    "held = []\n"
    "for _ in range(64):\n"
    "    s = socket.socket(); s.connect(('127.0.0.1', int(sys.argv[1])))\n"
    "    s.sendall(b'GET /livez HTTP/1.1\\r\\nHost: localhost\\r\\n\\r\\n')\n"
    "    assert s.recv(65536).startswith(b'HTTP/1.1 200'); held.append(s)\n"
    "extra = socket.socket(); extra.connect(('127.0.0.1', int(sys.argv[1]))); extra.settimeout(5)\n"
    "try: print('65th:', extra.recv(1) or 'closed', flush=True)\n"
    "except OSError as e: print('65th:', type(e).__name__, flush=True)\n"
    "sys.stdin.read()\n"
)


def test_one_local_user_holding_its_64_connections_locks_no_other_out(
    start_node: Callable[..., Node],
) -> None:
    node = start_node()
    port = node.url.rpartition(":")[2]
    argv = [sys.executable, "-c", _FLOOD, port]
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as flood:
        assert flood.stdout is not None and flood.stdin is not None
        assert flood.stdout.readline().strip() in ("65th: closed", "65th: ConnectionResetError")
        assert node.get("/status").status == 200  # root, another local user: its own 64
        metrics = node.get("/metrics").body.decode()
        assert 'cairn_connections_refused_total{listener="api",reason="per_client"} 1.0' in metrics
        flood.stdin.close()


# From a client network namespace: GET or POST each path without a token, print what came back.
_NO_TOKEN = (
    "import json, sys, urllib.error, urllib.request\n"
    "out = {}\n"
    "for method, path in json.loads(sys.argv[2]):\n"
    "    body = b'{}' if method == 'POST' else None\n"
    "    req = urllib.request.Request(sys.argv[1] + path, body, method=method,\n"
    "                                 headers={'Content-Type': 'application/json'})\n"
    "    try: urllib.request.urlopen(req, timeout=10); out[path] = 'let through'\n"
    "    except urllib.error.HTTPError as e:\n"
    "        out[path] = [e.code, e.headers.get('WWW-Authenticate'), json.loads(e.read())]\n"
    "print(json.dumps(out))\n"
)


def test_a_network_client_without_a_token_gets_each_apis_error_shape(
    lan: Lan, start_node: Callable[..., Node]
) -> None:
    node = start_node(host=lan.host_ip, token="access-test-operator-token-03")
    asked = [
        ("GET", "/v1/models"),
        ("GET", "/v1/nope"),
        ("GET", "/v1"),  # the OpenAI app's too
        ("GET", "/v1/chat/completions"),  # a wrong method: refused before the 405
        ("POST", "/v1/chat/completions"),
        ("GET", "/status"),
        ("GET", "/nope"),
    ]
    proc = lan.popen(
        0, [sys.executable, "-c", _NO_TOKEN, node.url, json.dumps(asked)], stdout=subprocess.PIPE
    )
    out, _ = proc.communicate(timeout=60)
    answers = json.loads(out)
    for _, path in asked:
        code, challenge, doc = answers[path]
        assert (code, challenge) == (401, "Bearer"), (path, answers[path])
        if path.startswith("/v1"):
            assert set(doc["error"]) == {"message", "type", "param", "code"}, (path, doc)
            assert doc["error"]["code"] == "invalid_api_key"
        else:
            assert doc == {"error": {"status": 401, "message": doc["error"]["message"]}}, path

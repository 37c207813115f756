"""Operator actions go through the unix socket, to root and the daemon's user only."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.conftest import CAIRN, Node
from tests.harness import wait_until

NOBODY = 65534


def _post(url: str, body: bytes, content_type: str, origin: str | None = None) -> int:
    headers = {"Content-Type": content_type}
    if origin:
        headers["Origin"] = origin
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return err.code


def _config_of(node: Node) -> str:
    args = node.proc.args
    assert isinstance(args, list)
    return str(args[-1])


def _socket_of(node: Node) -> Path:
    cfg = json.loads(Path(_config_of(node)).read_text())
    return Path(cfg["node"]["state_dir"]) / "operator.sock"


def _raw(path: Path, request: bytes, uid: int | None = None) -> str:
    """Send a raw HTTP request over the unix socket (as `uid`, in a child); the answer's text."""
    code = (
        "import os, socket, sys\n"
        "uid = int(sys.argv[2])\n"
        "if uid >= 0: os.setgid(uid); os.setgroups([]); os.setuid(uid)\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try: s.connect(sys.argv[1])\n"
        "except OSError as e: print('connect:', e.strerror); sys.exit()\n"
        "s.sendall(sys.stdin.buffer.read()); out = b''\n"
        "while (c := s.recv(65536)): out += c\n"
        "sys.stdout.write(out.decode())\n"
    )
    argv = ["python3", "-c", code, str(path), str(-1 if uid is None else uid)]
    return subprocess.run(argv, input=request, capture_output=True, check=True).stdout.decode()


def _request(body: bytes = b"{}", content_type: str = "application/json") -> bytes:
    return (
        b"POST /generations/confirm HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


def test_the_tcp_api_changes_no_generation(start_node: Callable[..., Node]) -> None:
    node = start_node()
    for path in ("/generations/confirm", "/generations/rollback"):
        # From loopback, with JSON or with a browser's form type and a foreign Origin alike.
        assert _post(node.url + path, b"{}", "application/json") == 404
        assert _post(node.url + path, b"{}", "text/plain", "http://evil.example") in (403, 404)
    assert "confirmed by hand" not in node.log()


def test_operator_socket_is_private_and_checks_the_callers_uid(
    start_node: Callable[..., Node],
) -> None:
    state = Path(tempfile.mkdtemp(prefix="cairn-op-"))  # a path any user could walk to
    state.chmod(0o755)
    node = start_node(node={"state_dir": str(state / "state")})
    sock = _socket_of(node)
    wait_until(sock.exists, 10, what="the operator socket")
    assert sock.stat().st_mode & 0o777 == 0o600
    assert sock.stat().st_uid == os.getuid()
    # Root (the test's user, so also the daemon's) reaches the gate: off NixOS it says why not.
    answer = _raw(sock, _request())
    assert answer.startswith("HTTP/1.1 409"), answer
    assert "not a NixOS system" in answer
    # Another user cannot even connect: the state dir and the socket are the daemon user's.
    assert "Permission denied" in _raw(sock, _request(), uid=NOBODY)
    sock.parent.chmod(0o755)
    assert "Permission denied" in _raw(sock, _request(), uid=NOBODY)
    # And were both opened up by mistake, the kernel's peer credentials still refuse it.
    sock.chmod(0o666)
    refused = _raw(sock, _request(), uid=NOBODY)
    assert refused.startswith("HTTP/1.1 403"), refused
    assert f"uid {NOBODY} is not an operator" in refused
    # State changes take JSON only: a form or text body is refused before it reaches the gate.
    assert _raw(sock, _request(b"to=1", "text/plain")).startswith("HTTP/1.1 415")
    shutil.rmtree(state, ignore_errors=True)


def test_cli_confirm_and_rollback_use_the_socket(start_node: Callable[..., Node]) -> None:
    node = start_node()
    sock = _socket_of(node)
    wait_until(sock.exists, 10, what="the operator socket")
    cfg = _config_of(node)
    for argv in (["confirm", "--config", cfg], ["rollback", "3", "--socket", str(sock)]):
        out = subprocess.run([*CAIRN, *argv], capture_output=True, text=True, check=False)
        # It got through to the gate, which explains that this is no NixOS system.
        assert out.returncode == 1, out
        assert "not a NixOS system" in out.stderr
    missing = subprocess.run(
        [*CAIRN, "confirm", "--socket", str(sock.with_name("nope.sock"))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 3 and "cannot reach" in missing.stderr


def test_a_stale_socket_file_is_replaced(start_node: Callable[..., Node], tmp_path: Path) -> None:
    stale = tmp_path / "state" / "operator.sock"
    stale.parent.mkdir(parents=True)
    with socket.socket(socket.AF_UNIX) as s:  # bound, never listened on: what a crash leaves
        s.bind(str(stale))
    node = start_node()
    assert _socket_of(node) == stale
    wait_until(
        lambda: _raw(stale, _request()).startswith("HTTP/1.1 409"), 10, what="the new socket"
    )

"""Shared fixtures: start a real `cairn run` process on a free port and talk to it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness.poll import wait_until

pytest_plugins = ["tests.harness.fixtures"]

REPO = Path(__file__).resolve().parent.parent
CAIRN = [sys.executable, "-m", "cairn"]
CAIRN_BIN = str(Path(sys.executable).parent / "cairn")  # the console script, as users run it
IN_CI = os.environ.get("CI", "").lower() == "true"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI=true a skipped test fails the run: nothing may be skipped for a missing tool."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if IN_CI and skipped and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if reporter:
            msg = f"CI=true: {len(skipped)} test(s) skipped; failing the run"
            reporter.write_line(msg, red=True)


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Response:
    """A finished HTTP exchange."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


def http(
    url: str, method: str = "GET", timeout: float = 5.0, headers: dict[str, str] | None = None
) -> Response:
    """One HTTP request; error statuses are returned, not raised."""
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Response(resp.status, dict(resp.headers), resp.read())
    except urllib.error.HTTPError as err:
        return Response(err.code, dict(err.headers), err.read())


@dataclass
class Node:
    """A running standalone `cairn run` process."""

    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path
    token: str | None = None  # sent as a bearer token when set (a node bound off loopback)

    def get(self, path: str, method: str = "GET", timeout: float = 5.0) -> Response:
        """Request a path on this node."""
        auth = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return http(self.url + path, method, timeout, auth)

    def log(self) -> str:
        """Everything the daemon wrote to stderr so far."""
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        """True while /livez answers 200."""
        try:
            return self.get("/livez").status == 200
        except OSError:
            return False


def write_config(path: Path, settings: dict[str, Any]) -> Path:
    """Write settings as JSON (the format Nix renders)."""
    path.write_text(json.dumps(settings))
    return path


def write_token(path: Path, token: str) -> Path:
    """Write an API token file."""
    path.write_text(token + "\n")
    return path


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """Factory: start `cairn run` with the given settings merged over a test default."""
    started: list[Node] = []

    def start(
        probe_interval: float = 2.0,
        host: str = "127.0.0.1",
        token: str | None = None,
        preexec_fn: Callable[[], None] | None = None,
        **sections: Any,
    ) -> Node:
        port = free_port()
        api: dict[str, Any] = {"host": host, "port": port}
        if token is not None:  # required off loopback
            api["token_file"] = str(write_token(tmp_path / f"token-{port}", token))
        settings: dict[str, Any] = {
            "version": 1,
            "node": {"name": "test-node", "state_dir": str(tmp_path / "state")},
            "api": api,
            "probe": {"interval": probe_interval, "nix_profiles": str(tmp_path / "no-nix")},
        }
        for key, value in sections.items():
            settings[key] = value if isinstance(value, list) else {**settings.get(key, {}), **value}
        cfg = write_config(tmp_path / f"cairn-{port}.json", settings)
        log_path = tmp_path / f"cairn-{port}.log"
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM")}
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [*CAIRN, "run", "--config", str(cfg)], stderr=log, env=env, preexec_fn=preexec_fn
            )
        node = Node(proc, f"http://{host}:{port}", log_path, token)
        started.append(node)
        wait_until(lambda: node.alive() or proc.poll() is not None, 20, what="the daemon to listen")
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited {proc.returncode}:\n{node.log()}")
        return node

    yield start
    for node in started:
        if node.proc.poll() is None:
            node.proc.terminate()  # a clean stop also stops the node's workers
            try:
                node.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()

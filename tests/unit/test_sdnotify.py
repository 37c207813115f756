"""sd_notify over a real unix datagram socket, as systemd receives it."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cairn.system.sdnotify import Notifier


@pytest.fixture
def notify_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[socket.socket, str]]:
    # systemd.daemon.notify reads NOTIFY_SOCKET from the process environment itself.
    path = str(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    yield sock, path
    sock.close()


def received(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


def test_send_reaches_the_socket(notify_socket: tuple[socket.socket, str]) -> None:
    sock, _ = notify_socket
    Notifier().send("READY=1\nSTATUS=ok")
    assert received(sock) == ["READY=1\nSTATUS=ok"]


def test_without_notify_socket_nothing_is_sent(notify_socket: tuple[socket.socket, str]) -> None:
    sock, _ = notify_socket
    Notifier({}).send("READY=1")
    assert received(sock) == []


async def test_watchdog_pings_at_half_the_timeout(
    notify_socket: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, _ = notify_socket
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = Notifier()
    assert notifier.watchdog_usec == 400_000
    task = asyncio.create_task(notifier.watchdog())
    stamps: list[float] = []
    deadline = time.monotonic() + 5
    while len(stamps) < 3 and time.monotonic() < deadline:
        stamps += [time.monotonic() for m in received(sock) if m == "WATCHDOG=1"]
        await asyncio.sleep(0.01)
    task.cancel()
    assert len(stamps) == 3
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert all(0.18 <= g < 1.0 for g in gaps), gaps  # half of 0.4 s, never faster


@pytest.mark.parametrize(
    "env",
    [{"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"}, {"WATCHDOG_USEC": "junk"}, {}],
)
def test_watchdog_not_meant_for_us_is_off(env: dict[str, str]) -> None:
    assert Notifier({"NOTIFY_SOCKET": "/x", **env}).watchdog_usec == 0

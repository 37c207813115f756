"""Listener guards on real sockets: connection caps, the header deadline, quiet repeated logs."""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from cairn import guard
from cairn.guard import ConnectionLimits, GuardedSite, RepeatFilter
from tests.conftest import free_port

HEADER_S = 0.5


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


@pytest.fixture
async def site() -> AsyncIterator[tuple[int, ConnectionLimits]]:
    app = web.Application()
    app.router.add_get("/", _ok)
    runner = web.AppRunner(app, keepalive_timeout=HEADER_S)  # as the daemon sets it
    await runner.setup()
    limits = ConnectionLimits("api", per_client=2, total=3)
    port = free_port()
    await GuardedSite(runner, "127.0.0.1", port, limits).start()
    yield port, limits
    await runner.cleanup()


async def _closed(reader: asyncio.StreamReader, within: float) -> bool:
    """Whether the server closes the connection within `within` seconds."""
    try:
        async with asyncio.timeout(within):
            return await reader.read() == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


async def _get(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    data = await reader.read()
    writer.close()
    return data


async def test_a_client_over_its_cap_is_closed_at_once_and_counted(
    site: tuple[int, ConnectionLimits],
) -> None:
    port, limits = site
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
    for _, w in held:
        w.write(b"GET / HTTP/1.1\r\n")  # half a request, held open
    extra, _ = await asyncio.open_connection("127.0.0.1", port)
    assert await _closed(extra, 0.3)
    assert limits.refused["per_client"] == 1 and limits.open_total == 2
    for _, w in held:
        w.close()
    await asyncio.sleep(0.1)
    assert (await _get(port)).startswith(b"HTTP/1.1 200")  # room again
    assert limits.open_total == 0


async def test_headers_not_sent_in_time_close_the_connection(
    site: tuple[int, ConnectionLimits],
) -> None:
    port, _ = site
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    for piece in (b"GET / HTTP/1.1\r\n", b"Host: x\r\n", b"X-A: 1\r\n"):  # a trickle
        writer.write(piece)
        await asyncio.sleep(HEADER_S / 4)
    assert await _closed(reader, HEADER_S + 1.5)
    assert time.monotonic() - started < HEADER_S + 1.5


def test_total_cap_leaves_descriptors_for_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 4096))
    limits = ConnectionLimits.for_api()
    assert limits.total == 1024 - guard.FD_RESERVE
    limits = ConnectionLimits("api", per_client=2, total=3)
    assert [limits.admit(c) for c in ("a", "a", "a", "b", "c")] == [True, True, False, True, False]
    assert dict(limits.refused) == {"per_client": 1, "total": 1}


def _record(msg: str, flood: object = None) -> logging.LogRecord:
    rec = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, msg, None, None)
    if flood is not None:
        rec.flood = flood
    return rec


def test_a_repeated_line_is_written_once_a_minute_with_the_count_held_back() -> None:
    now = [0.0]
    f = RepeatFilter(every=60.0, clock=lambda: now[0])
    accept = "socket.accept() out of system resource\nsocket: <socket fd=%d>"
    passed = [f.filter(_record(accept % i)) for i in range(100)]
    assert passed == [True] + [False] * 99
    assert f.filter(_record("another message"))  # another kind has its own budget
    assert f.filter(_record("x", flood=("api", "per_client")))
    assert not f.filter(_record("y", flood=("api", "per_client")))
    now[0] = 61.0
    rec = _record(accept % 100)
    assert f.filter(rec)
    assert rec.getMessage().endswith("[99 more like this in 61 s]")


def test_the_status_apps_error_traces_are_rate_limited_too() -> None:
    from cairn.status import app as status_app  # the logger its 500s write their traces to

    guard.quiet_floods()
    assert any(isinstance(f, RepeatFilter) for f in status_app.log.filters)


# A client in a child process, as user nobody: family, address, port in argv; it prints its port.
NOBODY = 65534
_HOLD = (
    "import os, socket, sys\n"
    "os.setgid(65534); os.setgroups([]); os.setuid(65534)\n"
    "s = socket.socket(int(sys.argv[1])); s.connect((sys.argv[2], int(sys.argv[3])))\n"
    "print(s.getsockname()[1], flush=True); sys.stdin.read()\n"
)


@pytest.mark.parametrize(
    ("listen", "client"),
    [
        (("127.0.0.1", socket.AF_INET), (socket.AF_INET, "127.0.0.1")),
        (("::1", socket.AF_INET6), (socket.AF_INET6, "::1")),
        # A dual-stack listener sees an IPv4 client as ::ffff:127.0.0.1, whichever family the
        # client's own socket is of.
        (("::", socket.AF_INET6), (socket.AF_INET, "127.0.0.1")),
        (("::", socket.AF_INET6), (socket.AF_INET6, "::ffff:127.0.0.1")),
    ],
)
def test_a_loopback_client_is_known_by_the_user_that_owns_its_socket(
    listen: tuple[str, int], client: tuple[int, str]
) -> None:
    with socket.socket(listen[1]) as server:
        server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0) if listen[0] == "::" else None
        server.bind((listen[0], 0))
        server.listen()
        port = server.getsockname()[1]
        argv = [sys.executable, "-c", _HOLD, str(int(client[0])), client[1], str(port)]
        with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE) as child:
            assert child.stdout is not None and child.stdin is not None
            their_port = int(child.stdout.readline())
            conn, peer = server.accept()
            with conn:
                assert peer[1] == their_port
                ours = conn.getsockname()
                assert guard.socket_owner(peer[:2], ours[:2]) == NOBODY
                assert guard.client_key(peer, ours) == f"{peer[0]} uid {NOBODY}"
                mine = socket.create_connection((client[1], port))
                with mine, server.accept()[0] as conn2:
                    assert guard.client_key(conn2.getpeername(), ours) == f"{peer[0]} uid 0"
                child.stdin.close()
                child.wait(10)
                # Closed by its owner (the kernel holds it now, as uid 0): keyed by address.
                assert guard.client_key(peer, ours) == peer[0]


def test_a_client_off_loopback_is_keyed_by_its_address() -> None:
    assert guard.client_key(("192.0.2.7", 40000), ("192.0.2.1", 8470)) == "192.0.2.7"
    assert guard.client_key(None, None) == ""

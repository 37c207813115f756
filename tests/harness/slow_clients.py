#!/usr/bin/python3
"""Open many connections that start a request and never finish it; report when each closed.

Usage: slow_clients.py HOST PORT COUNT SECONDS PAYLOAD_HEX

Connects COUNT times (sequentially, 3 s connect timeout), sends PAYLOAD on each (e.g. half an
HTTP header), prints `{"event": "holding", ...}` once all are open, then watches them for up to
SECONDS and prints `{"event": "done", "failed": n, "lasted": [...], "open": n}`: `lasted` is how
long each connection stayed open (seconds from its connect to the server closing it), `open`
the ones still open at the end. Standard library only: it runs in a bare network namespace.
"""

from __future__ import annotations

import json
import resource
import select
import socket
import sys
import time


def reap(
    poller: select.poll,
    opened: dict[int, tuple[socket.socket, float]],
    lasted: list[float],
    wait_ms: int,
) -> None:
    """Record and drop the connections the server has closed."""
    for fd, _ in poller.poll(wait_ms):
        s, t = opened[fd]
        try:
            data = s.recv(65536)
        except BlockingIOError:
            continue
        except OSError:
            data = b""
        if data:
            continue  # an error answer: the close follows
        lasted.append(time.monotonic() - t)
        poller.unregister(fd)
        del opened[fd]
        s.close()


def main() -> None:
    host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    seconds, payload = float(sys.argv[4]), bytes.fromhex(sys.argv[5])
    want = count + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:  # root may raise its own hard limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
    opened: dict[int, tuple[socket.socket, float]] = {}
    lasted: list[float] = []
    failed = 0
    poller = select.poll()
    for _ in range(count):
        s = socket.socket()
        s.settimeout(3)
        try:
            s.connect((host, port))
        except OSError:
            failed += 1
            s.close()
            continue
        t = time.monotonic()
        try:
            s.sendall(payload)
        except OSError:  # refused at once: reset before the payload went out
            lasted.append(time.monotonic() - t)
            s.close()
            continue
        s.setblocking(False)
        opened[s.fileno()] = (s, t)
        poller.register(s, select.POLLIN | select.POLLERR | select.POLLHUP)
        reap(poller, opened, lasted, 0)  # note closes as they happen, not once all are open
    print(json.dumps({"event": "holding", "open": len(opened), "failed": failed}), flush=True)
    deadline = time.monotonic() + seconds
    while opened and time.monotonic() < deadline:
        reap(poller, opened, lasted, 100)
    done = {"event": "done", "failed": failed, "lasted": lasted, "open": len(opened)}
    print(json.dumps(done), flush=True)


if __name__ == "__main__":
    main()

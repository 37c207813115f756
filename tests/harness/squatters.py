#!/usr/bin/python3
"""Keep streams open to a port from many source addresses, reopening each one that closes.

Usage: squatters.py HOST PORT SECONDS PER_SOURCE PAYLOAD_HEX SOURCE...

From each SOURCE address, holds PER_SOURCE connections that sent PAYLOAD (e.g. half a frame)
and nothing more; one the server closes is opened again at once, so the server's slots stay
taken however short its deadline. Prints `{"event": "holding"}` once all are open the first
time, and `{"event": "done", "reopened": n, "failed": n}` after SECONDS. Standard library only.
"""

from __future__ import annotations

import json
import select
import socket
import sys
import time


def main() -> None:
    host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    per_source, payload, sources = int(sys.argv[4]), bytes.fromhex(sys.argv[5]), sys.argv[6:]
    poller = select.poll()
    opened: dict[int, tuple[socket.socket, str]] = {}
    counts = {"reopened": 0, "failed": 0}

    def connect(source: str) -> None:
        s = socket.socket()
        s.settimeout(3)
        try:
            s.bind((source, 0))
            s.connect((host, port))
            s.sendall(payload)
        except OSError:
            counts["failed"] += 1
            s.close()
            return
        s.setblocking(False)
        opened[s.fileno()] = (s, source)
        poller.register(s, select.POLLIN | select.POLLERR | select.POLLHUP)

    for source in sources:
        for _ in range(per_source):
            connect(source)
    print(json.dumps({"event": "holding", "open": len(opened), **counts}), flush=True)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for fd, _ in poller.poll(20):
            s, source = opened.pop(fd)
            poller.unregister(fd)
            s.close()
            counts["reopened"] += 1
            connect(source)
    print(json.dumps({"event": "done", **counts}), flush=True)


if __name__ == "__main__":
    main()

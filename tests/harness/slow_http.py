#!/usr/bin/python3
"""A small HTTP service that takes a while to become ready, for the sleep/wake tests and bench.

Socket-activated (LISTEN_FDS) or bound to --listen HOST:PORT. Sleeps --start-seconds, sends
READY=1 to $NOTIFY_SOCKET, then answers every GET with 200 "ok". --starts FILE gets a line
"start T" when it starts and "ready T" as it sends READY=1 (T: CLOCK_MONOTONIC seconds, the
clock of systemd's *TimestampMonotonic properties). Standard library only: it runs on the test
nodes' own python3.
"""

from __future__ import annotations

import argparse
import http.server
import os
import socket
import socketserver
import time


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def notify(message: str) -> None:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(path)
        s.send(message.encode())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--start-seconds", type=float, default=2.0)
    ap.add_argument("--listen", help="HOST:PORT when not socket-activated")
    ap.add_argument("--starts", help="append a line here on every start")
    args = ap.parse_args()
    if args.starts:
        with open(args.starts, "a") as f:
            f.write(f"start {time.monotonic()}\n")
    if os.environ.get("LISTEN_PID") == str(os.getpid()) and os.environ.get("LISTEN_FDS") == "1":
        sock = socket.socket(fileno=3)
    else:
        host, port = args.listen.rsplit(":", 1)
        sock = socket.create_server((host, int(port)), backlog=128)
    time.sleep(args.start_seconds)  # "loading": connections wait in the backlog meanwhile
    server = Server(sock.getsockname()[:2], Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    if args.starts:
        with open(args.starts, "a") as f:
            f.write(f"ready {time.monotonic()}\n")
    notify("READY=1")
    server.serve_forever()


if __name__ == "__main__":
    main()

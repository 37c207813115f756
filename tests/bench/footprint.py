"""Idle footprint of a standalone node: RSS and CPU over a window, beside a bare aiohttp server.

Run: `make bench-footprint` (or `.venv/bin/python -m tests.bench.footprint --seconds 60`).
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil

TARGET_RSS_MB = 60.0
TARGET_CPU_PERCENT = 0.5

# The peer: the smallest server on the same stack, so the table shows what Cairn adds.
PEER = """
import sys
from aiohttp import web
async def ok(request):
    return web.json_response({"status": "alive"})
app = web.Application()
app.router.add_get("/livez", ok)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


@dataclass
class Footprint:
    """What one process cost while idle."""

    rss_mb_max: float
    rss_mb_end: float
    cpu_percent: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} not ready after {timeout} s")


def measure(cmd: list[str], ready_url: str, seconds: float) -> Footprint:
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    try:
        wait_ready(ready_url)
        p = psutil.Process(proc.pid)
        cpu0, t0 = sum(p.cpu_times()[:2]), time.monotonic()
        rss: list[int] = []
        while time.monotonic() - t0 < seconds:
            rss.append(p.memory_info().rss)
            time.sleep(1.0)  # sampling period of the measurement, not synchronisation
        cpu = sum(p.cpu_times()[:2]) - cpu0
        wall = time.monotonic() - t0
        return Footprint(max(rss) / 2**20, rss[-1] / 2**20, 100.0 * cpu / wall)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=60.0, help="measurement window (default 60)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        cfg = Path(tmp) / "cairn.json"
        cfg.write_text(
            json.dumps({"version": 1, "api": {"port": port}, "node": {"state_dir": tmp}})
        )
        cairn = measure(
            [sys.executable, "-m", "cairn", "run", "--config", str(cfg)],
            f"http://127.0.0.1:{port}/readyz",
            args.seconds,
        )
    port = free_port()
    peer = measure(
        [sys.executable, "-c", PEER, str(port)], f"http://127.0.0.1:{port}/livez", args.seconds
    )
    rows = [
        ("RSS max (MB)", cairn.rss_mb_max, peer.rss_mb_max, TARGET_RSS_MB),
        ("RSS end (MB)", cairn.rss_mb_end, peer.rss_mb_end, TARGET_RSS_MB),
        ("CPU (% of a core)", cairn.cpu_percent, peer.cpu_percent, TARGET_CPU_PERCENT),
    ]
    print(f"Idle footprint over {args.seconds:.0f} s (peer: bare aiohttp server)")
    print(f"{'metric':<18} {'cairn':>8} {'peer':>8} {'ratio':>7} {'target':>8}  verdict")
    ok = True
    for name, c, p, target in rows:
        ratio_text = f"{c / p:.2f}x" if p else "n/a"
        good = c <= target
        ok &= good
        verdict = "ok" if good else "OVER"
        print(f"{name:<18} {c:>8.3f} {p:>8.3f} {ratio_text:>7} {target:>8.2f}  {verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

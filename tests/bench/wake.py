"""Waking a sleeping service: Cairn's sleeper beside systemd-socket-proxyd --exit-idle-time.

Run: `make bench-wake` (root: it boots a throwaway systemd node with the test harness).
`--wakes N` (50), `--start-seconds S` (1.0, how long the service takes to become ready),
`--clients C` (5 at each wake), `--ttl T` (1 s).

The service is `tests/harness/slow_http.py`: it sleeps S seconds, sends READY=1, then answers
GET with 200. Two setups in one node, one after the other:

- cairn: `slow.socket` (systemd listens) activates `slow.service` (`Type=notify`); the
  supervisor stops the service after T idle seconds (`[sleep] services`, checked every 0.2 s).
- proxyd: `proxy.socket` activates `proxy.service`, `systemd-socket-proxyd --exit-idle-time=T`
  in front of `backend.service` (the same program, bound to its own port), with `Requires=`
  and `After=` so proxyd starts once the backend is ready, and `StopWhenUnneeded=yes` on the
  backend so it sleeps when proxyd exits: the setup its man page describes, made to sleep.

Per wake, once the service is asleep (its unit inactive): C clients connect; each curl's time
to the first byte of the answer (connect included) is its latency. The wake's latency is the
first client's, which connects 10 ms before the others. The service's own start-to-ready time
runs from systemd's ExecMainStartTimestampMonotonic (the fork) to the moment the service sends
READY=1 (it writes CLOCK_MONOTONIC, the same clock, to its --starts file); overhead = latency
- that: the activation before the fork, and the way from READY=1 to the first byte. A request
fails unless it gets 200 "ok". p99 is nearest-rank (the slowest below 100).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from tests.conftest import CAIRN_BIN, REPO
from tests.harness import Cluster, wait_until

TARGET_OVERHEAD_P99_S = 0.050
SLOW_HTTP = (REPO / "tests" / "harness" / "slow_http.py").read_text()
PROXYD = "/lib/systemd/systemd-socket-proxyd"


def unit_files(start_s: float, ttl: float) -> dict[str, str]:
    program = (
        f"/usr/bin/python3 /opt/slow_http.py --start-seconds {start_s} --starts /run/%n.starts"
    )
    config = {
        "version": 1,
        "inference": {"workers": "systemd"},
        "sleep": {
            "interval": 0.2,
            "services": [{"unit": "slow.service", "socket": "slow.socket", "ttl": ttl}],
        },
    }
    return {
        "/opt/slow_http.py": SLOW_HTTP,
        "/etc/cairn/cairn.json": json.dumps(config),
        "/etc/systemd/system/cairn.service": (
            "[Service]\nType=notify\nNotifyAccess=main\n"
            f"ExecStart={CAIRN_BIN} run --config /etc/cairn/cairn.json\nStateDirectory=cairn\n"
        ),
        "/etc/systemd/system/slow.socket": "[Socket]\nListenStream=127.0.0.1:8080\n",
        "/etc/systemd/system/slow.service": (
            f"[Service]\nType=notify\nNotifyAccess=main\nExecStart={program}\n"
        ),
        "/etc/systemd/system/proxy.socket": "[Socket]\nListenStream=127.0.0.1:9090\n",
        "/etc/systemd/system/proxy.service": (
            "[Unit]\nRequires=backend.service\nAfter=backend.service\n"
            f"[Service]\nExecStart={PROXYD} --exit-idle-time={ttl}s 127.0.0.1:9091\n"
        ),
        "/etc/systemd/system/backend.service": (
            "[Unit]\nStopWhenUnneeded=yes\n"
            "[Service]\nType=notify\nNotifyAccess=main\n"
            f"ExecStart={program} --listen 127.0.0.1:9091\n"
        ),
    }


@dataclass
class Setup:
    """One contender: where clients connect, which unit is the service."""

    name: str
    port: int
    service: str
    latency: list[float] = field(default_factory=list)
    own: list[float] = field(default_factory=list)
    failed: int = 0
    requests: int = 0

    def overhead(self) -> list[float]:
        return [lat - own for lat, own in zip(self.latency, self.own, strict=True)]


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[max(0, math.ceil(p / 100.0 * len(s)) - 1)]


def one_wake(node: Any, setup: Setup, clients: int) -> None:
    # Each client prints "ok 200 SECONDS" (body, status, time to first byte) on one line. The
    # first one, marked "first", connects alone and wakes the service; the others follow 10 ms
    # later, into the backlog of the waking service.
    curl = (
        "curl -sS --max-time 60 -w ' %{http_code} %{time_starttransfer}'"
        f" http://127.0.0.1:{setup.port}/"
    )
    script = (
        f"(echo first $({curl})) & sleep 0.01; "
        f"for i in $(seq {clients - 1}); do (echo other $({curl})) & done; wait"
    )
    out = node.exec(["bash", "-c", script], check=False).stdout
    lines = [line.split() for line in out.splitlines() if line.strip()]
    good = [f for f in lines if len(f) == 4 and f[1:3] == ["ok", "200"]]
    ok = {f[0]: float(f[3]) for f in good}
    answered = len(good)
    setup.requests += clients
    setup.failed += clients - answered
    forked = node.unit(setup.service).ExecMainStartTimestampMonotonic / 1e6
    marks = node.exec(["cat", f"/run/{setup.service}.starts"]).stdout.split()
    if "first" in ok:
        setup.latency.append(ok["first"])
        setup.own.append(float(marks[-1]) - forked)  # the last line: "ready T"


def run_setup(node: Any, setup: Setup, wakes: int, clients: int, ttl: float) -> None:
    for i in range(wakes):
        wait_until(
            lambda: node.unit(setup.service).ActiveState == "inactive",
            ttl + 30,
            what=f"{setup.service} to sleep",
        )
        one_wake(node, setup, clients)
        print(f"  {setup.name}: wake {i + 1}/{wakes}", end="\r", file=sys.stderr, flush=True)
    print(file=sys.stderr)


def report(setups: list[Setup], args: argparse.Namespace) -> None:
    print(
        f"Waking a sleeping service ({args.start_seconds:g} s to ready), {args.wakes} wakes, "
        f"{args.clients} clients at each; idle TTL {args.ttl:g} s"
    )
    head = (
        f"{'setup':<8} {'wakes':>5} {'requests':>8} {'failed':>6} {'ready p50':>9} "
        f"{'first byte p50':>14} {'p99':>7} {'overhead p50':>12} {'p99':>7}"
    )
    print(head)
    print("-" * len(head))
    for s in setups:
        if not s.latency:
            print(f"{s.name:<8} {len(s.latency):>5} {s.requests:>8} {s.failed:>6}  no answers")
            continue
        ov = s.overhead()
        print(
            f"{s.name:<8} {len(s.latency):>5} {s.requests:>8} {s.failed:>6} "
            f"{statistics.median(s.own):>8.3f}s {statistics.median(s.latency):>13.3f}s "
            f"{pct(s.latency, 99):>6.3f}s {1000 * statistics.median(ov):>10.1f}ms "
            f"{1000 * pct(ov, 99):>5.1f}ms"
        )
    cairn, proxyd = setups
    if cairn.latency and proxyd.latency:
        c, p = cairn.overhead(), proxyd.overhead()
        print(
            f"ratio cairn/proxyd: overhead p50 {statistics.median(c) / statistics.median(p):.2f}x,"
            f" p99 {pct(c, 99) / pct(p, 99):.2f}x"
        )
    print("ready: the service's own start-to-ready (fork to READY=1)")
    ok = cairn.latency and pct(cairn.overhead(), 99) <= TARGET_OVERHEAD_P99_S and not cairn.failed
    p99 = f"{1000 * pct(cairn.overhead(), 99):.1f} ms" if cairn.latency else "-"
    print(
        f"\nTarget: cairn overhead p99 <= {1000 * TARGET_OVERHEAD_P99_S:.0f} ms and no failed"
        f" request: {p99}, {cairn.failed} failed: {'PASS' if ok else 'FAIL'}"
        f"  (proxyd: {proxyd.failed} failed)"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--wakes", type=int, default=50)
    ap.add_argument("--start-seconds", type=float, default=1.0)
    ap.add_argument("--clients", type=int, default=5)
    ap.add_argument("--ttl", type=float, default=1.0)
    args = ap.parse_args()
    setups = [Setup("cairn", 8080, "slow.service"), Setup("proxyd", 9090, "backend.service")]
    started = time.monotonic()
    with Cluster(1, files=unit_files(args.start_seconds, args.ttl)) as cluster:
        node = cluster.nodes[0]
        node.exec(["chmod", "755", "/root"])  # the venv's interpreter below /root
        node.systemd.Reload()
        node.start_unit("slow.socket")
        node.start_unit("cairn.service")
        node.wait_unit("cairn.service", "active", timeout=60)
        run_setup(node, setups[0], args.wakes, args.clients, args.ttl)
        node.stop_unit("cairn.service")  # only proxyd and systemd from here on
        node.start_unit("proxy.socket")
        run_setup(node, setups[1], args.wakes, args.clients, args.ttl)
    report(setups, args)
    print(f"wall time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

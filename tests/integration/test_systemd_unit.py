"""cairn.service as Type=notify with a watchdog, inside a real systemd node."""

from __future__ import annotations

import json
import signal
import time
from typing import Any

from tests.conftest import CAIRN_BIN
from tests.harness import wait_until

WATCHDOG_SEC = 3
UNIT = f"""\
[Unit]
Description=Cairn supervisor (integration test)

[Service]
Type=notify
NotifyAccess=main
ExecStart={CAIRN_BIN} run --config /etc/cairn/cairn.json
WatchdogSec={WATCHDOG_SEC}
Restart=on-failure
RestartSec=1
StateDirectory=cairn
"""
CONFIG = {"version": 1, "node": {"name": "nspawn-node"}, "probe": {"interval": 1.0}}
FILES = {"/etc/systemd/system/cairn.service": UNIT, "/etc/cairn/cairn.json": json.dumps(CONFIG)}


def boot(cluster_factory) -> tuple[Any, Any]:
    cluster = cluster_factory(1, files=FILES)
    node = cluster.nodes[0]
    node.start_unit("cairn.service")
    unit = node.wait_unit("cairn.service", "active", timeout=60)
    return node, unit


def test_reaches_active_via_notify_and_logs_to_journald(cluster_factory) -> None:
    node, unit = boot(cluster_factory)
    assert unit.SubState == "running"
    # STATUS= reaches systemd once the first probe is in.
    wait_until(lambda: unit.StatusText == "ready", 30, what="STATUS=ready")
    readyz = node.exec(["curl", "-sS", "http://127.0.0.1:8470/readyz"]).stdout
    assert json.loads(readyz) == {"ready": True, "not_ready": {}}
    status = json.loads(node.exec(["curl", "-sS", "http://127.0.0.1:8470/status"]).stdout)
    assert status["node"]["name"] == "nspawn-node"
    assert status["probe"]["disk"]["path"] == "/var/lib/cairn"  # StateDirectory= via env
    # JournalHandler, not stderr: the entry carries our identifier and the logger name.
    entries = node.exec(
        ["journalctl", "--no-pager", "-o", "json", "SYSLOG_IDENTIFIER=cairn"]
    ).stdout.splitlines()
    messages = [json.loads(e)["MESSAGE"] for e in entries]
    assert any(m.startswith("cairn.daemon: serving on http://127.0.0.1:8470/") for m in messages)


def test_watchdog_restarts_a_blocked_daemon(cluster_factory) -> None:
    node, unit = boot(cluster_factory)
    first_pid, restarts = unit.MainPID, unit.NRestarts
    # First the daemon must keep the watchdog fed: two full WatchdogSec=3 periods, no restart.
    deadline = time.monotonic() + 2 * WATCHDOG_SEC + 1
    while time.monotonic() < deadline:
        assert (unit.MainPID, unit.NRestarts, unit.ActiveState) == (first_pid, restarts, "active")
        time.sleep(0.25)  # sampling the unit's state across the window under test
    # Freeze the daemon: its event loop stops pinging WATCHDOG=1.
    node.systemd.KillUnit("cairn.service", "main", signal.SIGSTOP)
    wait_until(
        lambda: unit.NRestarts > restarts and unit.ActiveState == "active",
        30,
        what="the watchdog to restart cairn.service",
    )
    assert unit.MainPID != first_pid
    assert "Watchdog timeout" in node.journal("cairn.service")

"""Self-heal in a real systemd node: a unit that keeps crashing walks the escalation ladder."""

from __future__ import annotations

import json
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.harness import wait_until
from tests.integration import test_systemd_worker as worker

# Fails at once, every time; systemd allows 3 starts in 60 s, then refuses (start-limit-hit).
CRASHER = """\
[Unit]
StartLimitIntervalSec=60
StartLimitBurst=3

[Service]
ExecStart=/bin/false
"""
CONFIG = {
    "version": 1,
    "heal": {
        "interval": 0.5,
        "critical_units": ["crasher.service"],
        "restart_backoff_max": 0.5,
        "reset_cooldown": 1.0,
        "resets_per_hour": 2,
    },
}


def status(node: Any) -> dict[str, Any]:
    out = node.exec(["curl", "-sS", "--max-time", "5", "http://127.0.0.1:8470/status"]).stdout
    doc: dict[str, Any] = json.loads(out)
    return doc


def metric(node: Any, name: str, **labels: str) -> float:
    text = node.exec(["curl", "-sS", "http://127.0.0.1:8470/metrics"]).stdout
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


def test_a_crashing_unit_walks_the_ladder_and_is_left_stopped(cluster_factory: Any) -> None:
    files = {
        "/etc/systemd/system/crasher.service": CRASHER,
        "/etc/systemd/system/cairn.service": worker.SUPERVISOR_UNIT,
        "/etc/cairn/cairn.json": json.dumps(CONFIG),
    }
    node = cluster_factory(1, files=files).nodes[0]
    node.exec(["chmod", "755", "/root"])  # the venv's interpreter below /root
    node.systemd.Reload()
    node.start_unit("cairn.service")
    node.wait_unit("cairn.service", "active", timeout=60)

    unit = "crasher.service"
    wait_until(
        lambda: metric(node, "cairn_unit_given_up", unit=unit) == 1.0, 60, what="the ladder's end"
    )
    (incident,) = [i for i in status(node)["incidents"] if i["subject"] == unit]
    assert incident["closed"] is None and incident["check"] == "unit-failed"
    assert incident["fix"] == "restart (automatic)"
    fixes = " | ".join(incident["fixes"])
    assert "restarted" in fixes and "cooling down" in fixes and "reset-failed after" in fixes
    assert incident["fixes"][-1].endswith("start refused again after 2 resets this hour: gave up")
    assert metric(node, "cairn_unit_resets_total", unit=unit) == 2
    # Three starts fill each start-limit window: before the first reset and after each one.
    assert metric(node, "cairn_unit_restarts_total", unit=unit) >= 3 * 3
    assert metric(node, "cairn_incidents_open", check="unit-failed") == 1
    assert metric(node, "cairn_fix_attempts_total", fix="restart", check="unit-failed") >= 9

    # Given up means left alone: no more restarts, the incident stays open.
    restarts = metric(node, "cairn_unit_restarts_total", unit=unit)
    node.exec(["sleep", "3"])
    assert metric(node, "cairn_unit_restarts_total", unit=unit) == restarts
    assert node.unit(unit).ActiveState in ("failed", "inactive")
    assert any(i["subject"] == unit and i["closed"] is None for i in status(node)["incidents"])
    journal = node.journal("cairn.service")
    assert "leaving it stopped" in journal

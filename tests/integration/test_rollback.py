"""The generation gate in a real systemd node with an emulated NixOS profile layout.

Generations live in /gens/N; /nix/var/nix/profiles/system-N-link points at them, and each one's
bin/switch-to-configuration does what NixOS's does here: install that generation's unit files,
point /run/current-system at it, reload systemd and restart the worker. Generation 2's worker
cannot start; 1 and 3 are healthy.
"""

from __future__ import annotations

import json
import time
from typing import Any

from tests.conftest import CAIRN_BIN, REPO
from tests.harness import wait_until
from tests.integration import test_systemd_worker as worker

WINDOW = 8.0
PROFILES = "/nix/var/nix/profiles"
SLOW_HTTP = (REPO / "tests" / "harness" / "slow_http.py").read_text()
HEALTHY = (
    "[Service]\nType=notify\nNotifyAccess=main\n"
    "ExecStart=/usr/bin/python3 /opt/slow_http.py --start-seconds 0.2 --listen 127.0.0.1:8080\n"
)
BROKEN = "[Service]\nType=notify\nExecStart=/bin/false\n"
SWITCH = """#!/bin/sh
# switch-to-configuration of generation {n}: install its units, make it the running system.
cp /gens/{n}/units/* /etc/systemd/system/
ln -sfn /gens/{n} /run/current-system
systemctl daemon-reload
systemctl restart worker.service
"""
ROLLBACK_UNIT = f"""\
[Unit]
Description=Cairn rollback helper

[Service]
Type=oneshot
ExecStart={CAIRN_BIN} rollback-helper --config /etc/cairn/cairn.json
"""
CONFIG = {
    "version": 1,
    "node": {"state_dir": "/var/lib/cairn"},
    "probe": {"nix_profiles": PROFILES},
    "heal": {"confirm_window": WINDOW, "critical_units": ["worker.service"]},
}


def files(rollback_unit: str = ROLLBACK_UNIT) -> dict[str, str]:
    return {
        "/opt/slow_http.py": SLOW_HTTP,
        "/etc/cairn/cairn.json": json.dumps(CONFIG),
        "/etc/systemd/system/cairn.service": worker.SUPERVISOR_UNIT,
        "/etc/systemd/system/cairn-rollback.service": rollback_unit,
    }


def make_generations(node: Any) -> None:
    script = [f"mkdir -p {PROFILES}"]
    for n, unit in ((1, HEALTHY), (2, BROKEN), (3, HEALTHY)):
        script += [
            f"mkdir -p /gens/{n}/bin /gens/{n}/units",
            f"cat > /gens/{n}/units/worker.service <<'EOF'\n{unit}EOF",
            f"cat > /gens/{n}/bin/switch-to-configuration <<'EOF'\n{SWITCH.format(n=n)}EOF",
            f"chmod 755 /gens/{n}/bin/switch-to-configuration",
            f"ln -s /gens/{n} {PROFILES}/system-{n}-link",
        ]
    script += [f"ln -s system-1-link {PROFILES}/system", "ln -s /gens/1 /run/booted-system"]
    node.exec(["bash", "-c", "\n".join(script)])
    node.exec(["/gens/1/bin/switch-to-configuration", "switch"])


def switch(node: Any, n: int) -> None:
    """What nixos-rebuild switch does: select the profile, then switch to it."""
    node.exec(["ln", "-sfn", f"system-{n}-link", f"{PROFILES}/system"])
    node.exec([f"/gens/{n}/bin/switch-to-configuration", "switch"], check=False)


def gate(node: Any) -> dict[str, Any]:
    out = node.exec(["curl", "-sS", "--max-time", "5", "http://127.0.0.1:8470/status"]).stdout
    doc: dict[str, Any] = json.loads(out)["gate"]
    return doc


def incidents(node: Any) -> list[dict[str, Any]]:
    out = node.exec(["curl", "-sS", "--max-time", "5", "http://127.0.0.1:8470/status"]).stdout
    found: list[dict[str, Any]] = json.loads(out)["incidents"]
    return found


def running(node: Any) -> str:
    out: str = node.exec(["readlink", "/run/current-system"]).stdout.strip()
    return out


def helper_runs(node: Any) -> int:
    log: str = node.exec(["journalctl", "-o", "cat", "-u", "cairn-rollback.service"]).stdout
    return log.count("switching the system profile")


def start(cluster_factory: Any, rollback_unit: str = ROLLBACK_UNIT) -> Any:
    node = cluster_factory(1, files=files(rollback_unit)).nodes[0]
    node.exec(["chmod", "755", "/root"])  # the venv's interpreter below /root
    make_generations(node)
    node.start_unit("cairn.service")
    node.wait_unit("cairn.service", "active", timeout=60)
    wait_until(lambda: gate(node)["confirmed"] == [1], WINDOW, what="generation 1 confirmed")
    return node


def test_a_failing_generation_rolls_back_and_a_healthy_one_is_confirmed(
    cluster_factory: Any,
) -> None:
    node = start(cluster_factory)
    switch(node, 2)
    switched = time.monotonic()
    wait_until(lambda: running(node) == "/gens/1", WINDOW + 15, what="the rollback to 1")
    assert time.monotonic() - switched <= WINDOW + 15
    wait_until(lambda: gate(node)["status"] == "confirmed", 10, what="the gate to settle")
    g = gate(node)
    assert (g["current"], g["confirmed"], g["bad"]) == (1, [1], [2])
    assert node.exec(["readlink", f"{PROFILES}/system"]).stdout.strip() == "system-1-link"
    assert node.exec(["curl", "-sS", "http://127.0.0.1:8080/"]).stdout == "ok\n"
    assert helper_runs(node) == 1
    (incident,) = [i for i in incidents(node) if i["subject"] == "generation 2"]
    assert (
        incident["check"] == "generation-unconfirmed" and incident["fix"] == "rollback (automatic)"
    )
    assert incident["fixes"][-1].endswith("rollback to generation 1 (it failed its confirm window)")
    wait_until(
        lambda: all(i["closed"] for i in incidents(node) if i["subject"] == "generation 2"),
        30,
        what="the incident to close once generation 1 runs",
    )

    switch(node, 3)
    wait_until(lambda: gate(node)["confirmed"] == [1, 3], WINDOW, what="generation 3 confirmed")
    time.sleep(2.0)  # a rollback would need a tick or two: give the gate the chance to err
    assert running(node) == "/gens/3" and helper_runs(node) == 1
    listing = node.exec([CAIRN_BIN, "generations"]).stdout.splitlines()
    assert listing[0] == "gate: confirmed"
    assert [line.split()[0] for line in listing[2:]] == ["3", "2", "1"]
    assert listing[3].split()[-1] == "bad" and listing[2].split()[-2:] == ["current", "confirmed"]


def test_a_supervisor_killed_in_the_window_rolls_back_exactly_once(
    cluster_factory: Any,
) -> None:
    node = start(cluster_factory)
    switch(node, 2)
    wait_until(lambda: gate(node)["status"] == "confirming", 10, what="the window to open")
    node.exec(["systemctl", "kill", "--signal=KILL", "cairn.service"])
    node.wait_unit("cairn.service", "failed", timeout=10)
    node.exec(["systemctl", "reset-failed", "cairn.service"])
    node.start_unit("cairn.service")
    node.wait_unit("cairn.service", "active", timeout=60)
    wait_until(lambda: running(node) == "/gens/1", WINDOW + 15, what="the rollback to 1")
    wait_until(lambda: gate(node)["status"] == "confirmed", 10, what="the gate to settle")
    assert gate(node)["bad"] == [2] and helper_runs(node) == 1

    # And a healthy generation with a kill in its window: confirmed, never rolled back.
    switch(node, 3)
    node.exec(["systemctl", "kill", "--signal=KILL", "cairn.service"])
    node.wait_unit("cairn.service", "failed", timeout=10)
    node.exec(["systemctl", "reset-failed", "cairn.service"])
    node.start_unit("cairn.service")
    node.wait_unit("cairn.service", "active", timeout=60)
    wait_until(lambda: 3 in gate(node)["confirmed"], WINDOW + 5, what="generation 3 confirmed")
    time.sleep(2.0)
    assert running(node) == "/gens/3" and helper_runs(node) == 1


def test_the_helper_refuses_a_missing_or_bad_generation(cluster_factory: Any) -> None:
    node = start(cluster_factory)

    def ask(target: int, bad: list[int]) -> Any:
        state = {"confirmed": [1], "bad": bad, "rollback": {"source": 1, "target": target,
                 "requested": 0.0}}  # fmt: skip
        node.exec(["bash", "-c", f"cat > /tmp/state/state.json <<'EOF'\n{json.dumps(state)}\nEOF"])
        return node.exec(
            [CAIRN_BIN, "rollback-helper", "--config", "/etc/cairn/cairn.json",
             "--state-dir", "/tmp/state"],
            check=False,
        )  # fmt: skip

    node.exec(["mkdir", "-p", "/tmp/state"])
    missing = ask(9, [])
    assert missing.returncode == 1 and "not an existing system generation" in missing.stderr
    bad = ask(2, [2])
    assert bad.returncode == 1 and "marked bad" in bad.stderr
    unconfirmed = ask(3, [])
    assert unconfirmed.returncode == 1 and "generation 3 was never confirmed" in unconfirmed.stderr
    assert running(node) == "/gens/1"
    assert node.exec(["readlink", f"{PROFILES}/system"]).stdout.strip() == "system-1-link"


def test_a_manual_rollback_reaches_a_helper_that_starts_late(cluster_factory: Any) -> None:
    # systemd starts the helper 3 s after it is asked: the gate looks at least once meanwhile.
    late = ROLLBACK_UNIT.replace("[Service]\n", "[Service]\nExecStartPre=/bin/sleep 3\n")
    node = start(cluster_factory, late)
    switch(node, 3)
    wait_until(lambda: gate(node)["confirmed"] == [1, 3], WINDOW, what="generation 3 confirmed")
    asked = node.exec([CAIRN_BIN, "rollback", "1"], check=False)
    assert asked.returncode == 0, asked.stderr
    wait_until(lambda: running(node) == "/gens/1", 30, what="the rollback to 1")
    wait_until(lambda: gate(node)["rollback"] is None, 10, what="the request to be done")
    g = gate(node)
    assert (g["status"], g["current"], g["confirmed"], g["bad"]) == ("confirmed", 1, [1, 3], [])
    assert helper_runs(node) == 1

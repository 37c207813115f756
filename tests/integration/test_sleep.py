"""Idle sleep and wake on demand in a real systemd node: services and model workers."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.conftest import REPO
from tests.harness import wait_until
from tests.integration import test_systemd_worker as worker

TTL = 3.0
START_S = 2.0
SLOW_HTTP = (REPO / "tests" / "harness" / "slow_http.py").read_text()


def slow_units(name: str, port: int) -> dict[str, str]:
    """A socket-activated HTTP service that takes START_S to become ready."""
    return {
        f"/etc/systemd/system/{name}.socket": f"[Socket]\nListenStream=127.0.0.1:{port}\n",
        f"/etc/systemd/system/{name}.service": (
            "[Service]\nType=notify\nNotifyAccess=main\n"
            f"ExecStart=/usr/bin/python3 /opt/slow_http.py --start-seconds {START_S}"
            f" --starts /run/{name}.starts\n"
        ),
    }


def node_with(cluster_factory: Any, config: dict[str, Any], extra: dict[str, Any]) -> Any:
    files = {
        "/opt/slow_http.py": SLOW_HTTP,
        "/etc/systemd/system/cairn.service": worker.SUPERVISOR_UNIT,
        "/etc/cairn/cairn.json": json.dumps({"version": 1, **config}),
        **extra,
    }
    node = cluster_factory(1, files=files).nodes[0]
    node.exec(["chmod", "755", "/root"])  # the venv's interpreter below /root must be reachable
    node.systemd.Reload()
    return node


def status(node: Any) -> dict[str, Any]:
    out = node.exec(["curl", "-sS", "--max-time", "5", "http://127.0.0.1:8470/status"]).stdout
    doc: dict[str, Any] = json.loads(out)
    return doc


def unit_view(node: Any, unit: str) -> dict[str, Any]:
    return next(u for u in status(node)["sleep"] if u["unit"] == unit)


def get(node: Any, port: int) -> str:
    out: str = node.exec(
        ["curl", "-sS", "--max-time", "30", f"http://127.0.0.1:{port}/"], check=False
    ).stdout
    return out


def starts(node: Any, name: str) -> int:
    out = node.exec(["cat", f"/run/{name}.starts"], check=False).stdout
    return sum(line.startswith("start ") for line in out.splitlines())


def start_cairn(node: Any, *sockets: str) -> None:
    for s in sockets:
        node.start_unit(s)
    node.start_unit("cairn.service")
    node.wait_unit("cairn.service", "active", timeout=60)


def test_a_service_sleeps_after_its_ttl_and_wakes_for_every_waiting_request(
    cluster_factory: Any,
) -> None:
    config = {
        "inference": {"workers": "systemd"},
        "sleep": {"services": [{"unit": "slow.service", "socket": "slow.socket", "ttl": TTL}]},
    }
    node = node_with(cluster_factory, config, slow_units("slow", 8080))
    start_cairn(node, "slow.socket")
    assert unit_view(node, "slow.service")["state"] == "asleep"

    # First use wakes it; reading /status (as here, every few hundred ms) is not use.
    assert get(node, 8080) == "ok\n"
    used = time.monotonic()
    assert starts(node, "slow") == 1
    wait_until(lambda: unit_view(node, "slow.service")["state"] == "asleep", TTL + 5, what="sleep")
    slept_after = time.monotonic() - used
    wait_until(lambda: node.unit("slow.service").ActiveState == "inactive", 10, what="the stop")
    assert TTL - 0.5 <= slept_after <= TTL + 3.0, slept_after
    assert node.unit("slow.socket").ActiveState == "active"  # still listening

    # 20 requests at a sleeping service: all answered, one start.
    script = (
        "for i in $(seq 20); do curl -sS -o /dev/null -w '%{http_code}\\n' --max-time 30 "
        "http://127.0.0.1:8080/ & done; wait"
    )
    codes = node.exec(["bash", "-c", script]).stdout.split()
    assert codes == ["200"] * 20, codes
    assert starts(node, "slow") == 2
    view = unit_view(node, "slow.service")
    assert view["wakes"] == 2 and view["sleeps"] == {"idle": 1}
    assert START_S <= view["last_wake_seconds"] < START_S + 2.0

    # An open connection keeps it awake past its TTL; it sleeps a TTL after the connection ends.
    hold = 2 * TTL + 2
    node.exec(
        [
            "systemd-run",
            "--unit=holder",
            "/usr/bin/python3",
            "-c",
            "import socket, time; s = socket.create_connection(('127.0.0.1', 8080));"
            f" time.sleep({hold})",
        ]
    )
    opened = time.monotonic()
    wait_until(lambda: unit_view(node, "slow.service")["busy"] >= 1, 10, what="the connection")
    while time.monotonic() - opened < hold - 1:
        view = unit_view(node, "slow.service")
        assert view["state"] == "awake", view
        time.sleep(0.5)
    wait_until(lambda: unit_view(node, "slow.service")["state"] == "asleep", TTL + 6, what="sleep")
    assert starts(node, "slow") == 2  # the holder found it awake

    metrics = node.exec(["curl", "-sS", "http://127.0.0.1:8470/metrics"]).stdout
    assert 'cairn_unit_sleeps_total{reason="idle",unit="slow.service"} 2.0' in metrics
    assert 'cairn_unit_wakes_total{unit="slow.service"} 2.0' in metrics


def test_a_killed_supervisor_reads_the_true_state_back(cluster_factory: Any) -> None:
    config = {
        "inference": {"workers": "systemd"},
        "sleep": {"services": [{"unit": "slow.service", "socket": "slow.socket", "ttl": TTL}]},
    }
    node = node_with(cluster_factory, config, slow_units("slow", 8080))
    start_cairn(node, "slow.socket")
    assert get(node, 8080) == "ok\n"
    wait_until(lambda: unit_view(node, "slow.service")["state"] == "asleep", TTL + 5, what="sleep")

    node.exec(["systemctl", "kill", "--signal=KILL", "cairn.service"])
    node.wait_unit("cairn.service", "failed", timeout=10)
    node.exec(["systemctl", "reset-failed", "cairn.service"])
    start_cairn(node)
    assert unit_view(node, "slow.service")["state"] == "asleep"  # from systemd, not a guess
    assert starts(node, "slow") == 1  # the restart woke nothing
    assert get(node, 8080) == "ok\n"
    assert unit_view(node, "slow.service")["state"] == "awake"


def test_memory_pressure_sleeps_the_least_recently_used_first(cluster_factory: Any) -> None:
    services = [
        {"unit": f"{n}.service", "socket": f"{n}.socket", "ttl": 600} for n in ("old", "new")
    ]
    # More than any test machine has: the sleeper is under pressure from the start.
    config = {
        "inference": {"workers": "systemd"},
        "sleep": {"services": services, "min_available_mb": 1 << 30},
    }
    node = node_with(
        cluster_factory, config, {**slow_units("old", 8081), **slow_units("new", 8082)}
    )
    start_cairn(node, "old.socket", "new.socket")
    assert get(node, 8081) == "ok\n"
    assert get(node, 8082) == "ok\n"
    wait_until(
        lambda: all(u["state"] == "asleep" for u in status(node)["sleep"]), 10, what="both asleep"
    )
    old = node.unit("old.service").InactiveEnterTimestampMonotonic
    new = node.unit("new.service").InactiveEnterTimestampMonotonic
    assert 0 < old < new
    assert all(u["sleeps"] == {"memory": 1} for u in status(node)["sleep"])


def test_a_sleeping_model_worker_wakes_for_a_streaming_chat(cluster_factory: Any) -> None:
    files = worker.files()
    cfg = json.loads(files["/etc/cairn/cairn.json"])
    cfg["models"][0]["idle_ttl"] = TTL
    files["/etc/cairn/cairn.json"] = json.dumps(cfg)
    node = cluster_factory(1, files=files).nodes[0]
    node.exec(["chmod", "755", "/root"])
    start_cairn(node, "cairn-model@demo.socket")
    unit = "cairn-model@demo.service"
    assert unit_view(node, unit)["state"] == "asleep"
    assert worker.chat(node)["object"] == "chat.completion"
    wait_until(lambda: node.unit(unit).ActiveState == "inactive", TTL + 8, what="sleep")
    assert unit_view(node, unit)["state"] == "asleep"
    assert status(node)["models"]["demo"]["state"] == "asleep"

    body = json.dumps(
        {
            "model": "demo",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 8,
            "stream": True,
        }
    )
    out = node.exec(
        [
            "curl",
            "-sSN",
            "--max-time",
            "60",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
            "http://127.0.0.1:8470/v1/chat/completions",
        ]
    ).stdout
    events = [e for e in out.split("\n\n") if e.strip()]
    assert events[0] == ": waking demo", events[:3]  # told at once, before the worker is up
    data = [e.removeprefix("data: ") for e in events if e.startswith("data: ")]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert chunks and all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert unit_view(node, unit)["wakes"] == 2

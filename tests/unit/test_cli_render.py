"""`cairn status` rendering of a document with GPUs, sensors and NixOS generations."""

from __future__ import annotations

import msgspec

from cairn.cli import render_generations, render_incidents, render_status, render_units
from cairn.components import State, Status
from cairn.identity import Identity
from cairn.policy.gate import GateView
from cairn.policy.sleep import Kind, Phase, UnitView
from cairn.state import Incident, Window
from cairn.status.document import StatusDocument
from cairn.system.generations import Generation, Generations
from cairn.system.gpu import Gpu
from cairn.system.probe import Cpu, Disk, Memory, Snapshot, Temperature

GIB = 1 << 30


def document() -> dict:
    snap = Snapshot(
        taken_at=0.0,
        duration_seconds=0.01,
        cpu=Cpu(count=4, usage_ratio=[0.5, 0.0, 1.0, 0.25], isolated=[2, 3]),
        load=[0.5, 0.4, 0.3],
        memory=Memory(8 * GIB, 6 * GIB, 2 * GIB),
        swap=Memory(0, 0, 0),
        disk=Disk("/var/lib/cairn", 100 * GIB, 40 * GIB, 60 * GIB),
        temperatures=[
            Temperature("coretemp", "Core 0", 51.0, 80.0, 100.0),
            Temperature("coretemp", "Core 1", 57.4, None, None),
        ],
        gpus=[
            Gpu(0, "NVIDIA GeForce RTX 4070", "GPU-0", 0.37, GIB, 12 * GIB, 64.0, 115.2),
            Gpu(1, "Tesla T4", None, None, None, None, None, None),
        ],
        gpu_reason="",
    )
    gens = Generations(
        "/nix/store/b",
        "/nix/store/a",
        [
            Generation(41, "/nix/store/a", "2026-11-20T10:00:00+00:00", False, True),
            Generation(42, "/nix/store/b", "2026-11-21T10:00:00+00:00", True, False),
        ],
    )
    doc = StatusDocument(
        node=Identity("ws", "rtx4070-workstation", None, None),
        version="0.1.0",
        started_at=0.0,
        uptime_seconds=3600.0,
        config_digest="sha256:" + "ab" * 32,
        ready=False,
        components={"api": Status(State.READY), "probe": Status(State.DEGRADED, "boom")},
        probe=snap,
        generation=gens,
        generation_reason="",
        models={},
        cluster=None,
        incidents=[
            Incident(
                "unit-failed-3",
                "unit-failed",
                "worker.service",
                0.0,
                "worker.service failed (start-limit-hit)",
                None,
                "restart (automatic)",
                ["10:00:01 restarted", "10:00:09 gave up after 3 resets in an hour"],
            ),
            Incident("disk-full-1", "disk-full", "/var/lib/cairn", 0.0, "4.0% free", 60.0),
        ],
        gate=GateView(
            42,
            "confirming",
            "80 s left; failing: worker.service is failed",
            [41],
            [40],
            Window(42, 0.0, 120.0),
            None,
        ),
        sleep=[
            UnitView(
                "cairn-model@demo.service",
                Kind.MODEL,
                None,
                Phase.ASLEEP,
                0,
                42.0,
                300.0,
                {"idle": 2},
                3,
                1.25,
            ),
            UnitView(
                "notebook.service",
                Kind.SERVICE,
                "notebook.socket",
                Phase.AWAKE,
                1,
                0.0,
                600.0,
                {},
                0,
                None,
            ),
        ],
    )
    out: dict = msgspec.to_builtins(doc)
    return out


def test_renders_every_section() -> None:
    out = render_status(document())
    lines = out.splitlines()
    assert lines[0] == "Node ws (rtx4070-workstation)  cairn 0.1.0  NOT READY"
    assert "  probe  degraded (boom)" in lines
    assert any(line.split() == ["cpu", "4", "cores:", "50%", "0%", "100%", "25%"] for line in lines)
    assert any(line.split() == ["isolated", "2,3"] for line in lines)
    assert any(line.split()[:3] == ["hottest", "57", "°C"] for line in lines)
    gpu0 = next(line for line in lines if line.strip().startswith("gpu 0"))
    assert gpu0.endswith("NVIDIA GeForce RTX 4070, 37% busy, 1.0 GiB of 12.0 GiB, 64 °C, 115 W")
    gpu1 = next(line for line in lines if line.strip().startswith("gpu 1"))
    assert gpu1.endswith("Tesla T4")
    assert any(line.split() == ["system-41", "booted"] for line in lines)
    assert any(line.split() == ["system-42", "current"] for line in lines)


def test_renders_the_sleepable_units() -> None:
    lines = render_units(document()["sleep"]).splitlines()
    assert lines[0].split() == [
        "UNIT",
        "KIND",
        "STATE",
        "BUSY",
        "IDLE",
        "TTL",
        "SLEEPS",
        "WAKES",
        "LAST",
        "WAKE",
    ]
    assert lines[1].split() == [
        "cairn-model@demo.service",
        "model",
        "asleep",
        "0",
        "42",
        "s",
        "300",
        "s",
        "2",
        "idle",
        "3",
        "1.25",
        "s",
    ]
    assert lines[2].split() == [
        "notebook.service",
        "service",
        "awake",
        "1",
        "0",
        "s",
        "600",
        "s",
        "0",
        "0",
        "-",
    ]
    assert render_units([]) == "no sleepable units"


def test_renders_the_generations_with_the_gates_verdicts() -> None:
    lines = render_generations(document()).splitlines()
    assert lines[0] == "gate: confirming (80 s left; failing: worker.service is failed)"
    assert lines[1].split() == ["GENERATION", "CREATED", "STATUS"]
    assert lines[2].split() == ["42", "2026-11-21", "10:00:00", "current"]
    assert lines[3].split() == ["41", "2026-11-20", "10:00:00", "booted", "confirmed"]


def test_renders_open_incidents_with_their_fixes_then_closed_ones() -> None:
    lines = render_incidents(document()["incidents"]).splitlines()
    assert lines[0].startswith("unit-failed-3  OPEN  since ")
    assert lines[0].endswith("worker.service: worker.service failed (start-limit-hit)")
    assert lines[1:4] == [
        "    fix: restart (automatic)",
        "    10:00:01 restarted",
        "    10:00:09 gave up after 3 resets in an hour",
    ]
    assert lines[4].startswith("disk-full-1  closed") and len(lines) == 5
    assert render_incidents([]) == "no incidents"

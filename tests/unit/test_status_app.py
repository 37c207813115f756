"""The status app in-process: failures become JSON and degrade readiness, never crash."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from importlib import resources
from pathlib import Path

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from cairn import config
from cairn.components import State, Status
from cairn.daemon import Supervisor
from cairn.gossip.digest import ModelDigest, NodeDigest
from cairn.gossip.service import MemberView
from cairn.identity import Identity
from cairn.inference.types import EngineStats, ModelView
from cairn.policy.gate import GateView
from cairn.policy.sleep import UnitView
from cairn.state import Incident, Rollback, Window
from cairn.status.app import create_app
from cairn.status.document import StatusDocument
from cairn.system import generations, probe
from cairn.system.gpu import Gpu
from tests.conftest import free_port


@pytest.fixture
def sup(tmp_path: Path) -> Supervisor:
    cfg = config.from_mapping(
        {
            "version": 1,
            "node": {"name": "unit", "state_dir": str(tmp_path)},
            "probe": {"nix_profiles": str(tmp_path / "nix")},
        }
    )
    s = Supervisor(cfg)
    s.components.set("api", State.READY)
    s.components.set("probe", State.STARTING, "waiting for the first sample")
    return s


async def test_unexpected_exception_is_json_500_without_trace(
    aiohttp_client, sup: Supervisor
) -> None:
    app = create_app(sup)

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("secret internals")

    app.router.add_get("/boom", boom)
    client: TestClient = await aiohttp_client(app)
    resp = await client.get("/boom")
    assert resp.status == 500
    body = await resp.text()
    assert "secret internals" not in body and "Traceback" not in body
    assert await resp.json() == {
        "error": {"status": 500, "message": "internal error; see the node's log"}
    }


async def test_failing_probe_degrades_and_is_counted(
    aiohttp_client, sup: Supervisor, monkeypatch
) -> None:
    def broken() -> None:
        raise OSError("disk vanished")

    monkeypatch.setattr(sup.probe, "sample", broken)
    await sup.probe_once()
    client: TestClient = await aiohttp_client(create_app(sup))
    ready = await client.get("/readyz")
    assert ready.status == 503
    assert (await ready.json())["not_ready"]["probe"] == {
        "state": "degraded",
        "detail": "last probe failed: disk vanished",
    }
    metrics = await (await client.get("/metrics")).text()
    assert "cairn_probe_failures_total 1.0" in metrics


async def test_successful_probe_makes_the_node_ready(aiohttp_client, sup: Supervisor) -> None:
    sup.probe.start()
    await sup.probe_once()
    sup.probe.stop()
    client: TestClient = await aiohttp_client(create_app(sup))
    assert (await client.get("/readyz")).status == 200
    doc = await (await client.get("/status")).json()
    assert doc["probe"]["disk"]["path"] == sup.config.node.state_dir
    assert doc["generation"] is None


OPENAPI = json.loads(resources.files("cairn.status").joinpath("openapi.json").read_text())


@pytest.mark.parametrize(
    ("schema", "struct"),
    [
        ("Status", StatusDocument),
        ("Identity", Identity),
        ("Snapshot", probe.Snapshot),
        ("Cpu", probe.Cpu),
        ("Memory", probe.Memory),
        ("Disk", probe.Disk),
        ("Temperature", probe.Temperature),
        ("Gpu", Gpu),
        ("Generation", generations.Generation),
        ("Generations", generations.Generations),
        ("ComponentStatus", Status),
        ("Member", MemberView),
        ("NodeDigest", NodeDigest),
        ("ModelDigest", ModelDigest),
        ("SleepableUnit", UnitView),
        ("Gate", GateView),
        ("ConfirmWindow", Window),
        ("Rollback", Rollback),
        ("Incident", Incident),
        ("ModelStatus", ModelView),
    ],
)
def test_openapi_schema_lists_exactly_the_struct_fields(
    schema: str, struct: type[msgspec.Struct]
) -> None:
    spec = OPENAPI["components"]["schemas"][schema]
    assert set(spec["properties"]) == set(struct.__struct_fields__)
    assert set(spec["required"]) == set(struct.__struct_fields__)
    assert spec["additionalProperties"] is False


def test_engine_stats_are_all_there_or_none_on_the_wire() -> None:
    """An embedding worker reports `{}` as stats, as /health and /status always did."""
    assert msgspec.json.encode(EngineStats()) == b"{}"
    full = EngineStats(1, 0, 0, 0, 0, 0, 0, 0.0, 0.0, 0)
    assert set(msgspec.to_builtins(full)) == set(EngineStats.__struct_fields__)
    assert msgspec.json.decode(b"{}", type=EngineStats) == EngineStats()


async def test_a_hung_probe_degrades_and_does_not_block_shutdown(
    sup: Supervisor, monkeypatch
) -> None:
    release = threading.Event()
    monkeypatch.setattr(sup.probe, "sample", lambda: release.wait(60))
    sup.config = config.from_mapping(
        {
            "version": 1,
            "node": {"state_dir": sup.config.node.state_dir},
            "api": {"port": free_port()},
            "probe": {"interval": 0.5, "nix_profiles": "/nonexistent"},
        }
    )
    stop = asyncio.Event()
    task = asyncio.create_task(sup.run(stop))
    deadline = time.monotonic() + 10
    while sup.components.snapshot()["probe"].state is not State.DEGRADED:
        assert time.monotonic() < deadline, sup.components.snapshot()
        await asyncio.sleep(0.05)
    assert "probe" in sup.components.not_ready()
    stopped_at = time.monotonic()
    stop.set()
    await asyncio.wait_for(task, 5)
    assert time.monotonic() - stopped_at < 5
    release.set()


async def test_same_named_sensors_stay_distinct_series(aiohttp_client, sup: Supervisor) -> None:
    sup.probe.start()
    await sup.probe_once()
    sup.probe.stop()
    assert sup.snapshot is not None
    two = [
        probe.Temperature("nvme", "Composite", 40.0, None, None),
        probe.Temperature("nvme", "Composite", 45.0, None, None),
    ]
    sup.snapshot = msgspec.structs.replace(sup.snapshot, temperatures=two)
    client: TestClient = await aiohttp_client(create_app(sup))
    text = await (await client.get("/metrics")).text()
    lines = [ln for ln in text.splitlines() if ln.startswith("cairn_temperature_celsius{")]
    assert len(lines) == len(set(lines)) == 2
    assert 'index="0"' in lines[0] and 'index="1"' in lines[1]


# Every family a standalone node without gossip exposes once it has a snapshot: the names and
# types dashboards and alerts read, whichever part's collector yields them.
FAMILIES = {
    "cairn_build_info": "gauge",
    "cairn_component_ready": "gauge",
    "cairn_connections_open": "gauge",
    "cairn_connections_refused": "counter",
    "cairn_cpu_isolated": "gauge",
    "cairn_cpu_usage_ratio": "gauge",
    "cairn_disk_free_bytes": "gauge",
    "cairn_disk_total_bytes": "gauge",
    "cairn_disk_used_bytes": "gauge",
    "cairn_fix_attempts": "counter",
    "cairn_gpu_memory_total_bytes": "gauge",
    "cairn_gpu_memory_used_bytes": "gauge",
    "cairn_gpu_pauses": "counter",
    "cairn_gpu_power_watts": "gauge",
    "cairn_gpu_temperature_celsius": "gauge",
    "cairn_gpu_utilization_ratio": "gauge",
    "cairn_gpu_workers_paused": "gauge",
    "cairn_gpus": "gauge",
    "cairn_http_request_duration_seconds": "histogram",
    "cairn_http_requests": "counter",
    "cairn_incidents_open": "gauge",
    "cairn_load_average": "gauge",
    "cairn_memory_available_bytes": "gauge",
    "cairn_memory_total_bytes": "gauge",
    "cairn_memory_used_bytes": "gauge",
    "cairn_model_active_slots": "gauge",
    "cairn_model_cached_prompt_tokens": "counter",
    "cairn_model_load_seconds": "gauge",
    "cairn_model_prompt_tokens": "counter",
    "cairn_model_queue_depth": "gauge",
    "cairn_model_request_duration_seconds": "histogram",
    "cairn_model_requests": "counter",
    "cairn_model_slots": "gauge",
    "cairn_model_state": "gauge",
    "cairn_model_tokens_per_second": "gauge",
    "cairn_nixos_generation": "gauge",
    "cairn_probe_duration_seconds": "gauge",
    "cairn_probe_failures": "counter",
    "cairn_probe_runs": "counter",
    "cairn_requests_forwarded": "counter",
    "cairn_swap_available_bytes": "gauge",
    "cairn_swap_total_bytes": "gauge",
    "cairn_swap_used_bytes": "gauge",
    "cairn_temperature_celsius": "gauge",
    "cairn_unit_asleep": "gauge",
    "cairn_unit_sleeps": "counter",
    "cairn_unit_wake_seconds": "histogram",
    "cairn_unit_wakes": "counter",
}


async def test_the_metric_families_are_the_documented_ones(aiohttp_client, sup: Supervisor) -> None:
    sup.probe.start()
    await sup.probe_once()
    sup.probe.stop()
    client: TestClient = await aiohttp_client(create_app(sup))
    text = await (await client.get("/metrics")).text()
    families = {
        f.name: f.type
        for f in text_string_to_metric_families(text)
        if not f.name.startswith("cairn_process_")
    }
    assert families == FAMILIES

"""The thermal guard on real standalone workers; the GPU readings are injected (no GPU here)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from cairn import config
from cairn.inference import demo_gguf, openai
from cairn.inference.children import ChildUnits
from cairn.inference.front import Inference, gpu_units, worker_units
from cairn.policy.thermal import Reading, ThermalGuard

SUSTAIN = 300.0


async def until(cond: Any, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.05)


async def test_a_hot_gpu_pauses_its_workers_until_it_cools(tmp_path: Path) -> None:
    model = str(demo_gguf.write_tiny_llama(tmp_path / "tiny.gguf"))
    cfg = config.from_mapping(
        {
            "version": 1,
            "node": {"state_dir": str(tmp_path / "state")},
            "models": [
                {"name": "gpu", "path": model, "kind": "gguf", "gpu_layers": 99},
                {"name": "cpu", "path": model, "kind": "gguf"},
            ],
        }
    )
    run = tmp_path / "state" / "run"
    units = worker_units(cfg, run)
    assert isinstance(units, ChildUnits)
    celsius = [70.0]
    now = [0.0]

    def readings() -> list[Reading]:
        return [(0, celsius[0], 0.5)]

    guard = ThermalGuard(readings, units, gpu_units(cfg), 85.0, 75.0, SUSTAIN, lambda: now[0])
    inf = Inference(cfg, run, units, thermal=guard)
    gpu, cpu = inf.models["gpu"], inf.models["cpu"]
    gpu_child, cpu_child = units.children[gpu.unit], units.children[cpu.unit]
    app = web.Application()
    app.add_subapp(openai.PREFIX, openai.create_app(inf.routes()))
    client = TestClient(TestServer(app))
    await client.start_server()
    await inf.start()
    try:
        await until(lambda: gpu_child.state == "ready" and cpu_child.state == "ready")

        celsius[0] = 86.0
        await guard.tick()
        now[0] += SUSTAIN - 1
        await guard.tick()
        assert gpu_child.state == "ready"  # hot, but not for long enough yet
        celsius[0] = 84.0  # a dip below the threshold starts the count over
        await guard.tick()
        celsius[0] = 90.0
        now[0] += 10
        await guard.tick()
        now[0] += SUSTAIN
        await guard.tick()
        assert guard.paused_units == {gpu.unit} and guard.pauses == 1
        assert gpu_child.state == "stopped" and cpu_child.state == "ready"

        body = {"model": "gpu", "prompt": "hi", "max_tokens": 2}
        resp = await client.post("/v1/completions", json=body)
        assert resp.status == 503
        assert "paused while the GPU cools down" in (await resp.json())["error"]["message"]
        assert gpu_child.state == "stopped"  # the request did not wake it
        ok = await client.post("/v1/completions", json={**body, "model": "cpu"})
        assert ok.status == 200

        celsius[0] = 80.0  # cooler, but not cool enough
        await guard.tick()
        assert guard.paused_units
        celsius[0] = 74.0
        await guard.tick()
        assert not guard.paused_units
        await until(lambda: gpu_child.state == "ready")  # it was running: started again
        resp = await client.post("/v1/completions", json=body)
        assert resp.status == 200
    finally:
        await client.close()
        await inf.stop()

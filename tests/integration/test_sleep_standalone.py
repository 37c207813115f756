"""The sleep policy on real standalone workers, with the clock and the memory reading in hand."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from cairn import config
from cairn.inference import demo_gguf, openai
from cairn.inference.front import Inference, sleepables, worker_units
from cairn.policy.sleep import Phase, Sleepable, Sleeper

TTL = 600.0


class Clock:
    """Monotonic time the test moves by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def meminfo(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "meminfo"
    path.write_text("MemTotal: 8000000 kB\nMemAvailable: 4000000 kB\n")
    yield path


def inference(
    tmp_path: Path, clock: Clock, meminfo: Path, *names: str, min_available_mb: int = 0
) -> Inference:
    """The front over standalone workers, watched by a sleeper on the test's clock."""
    model = demo_gguf.write_tiny_llama(tmp_path / "tiny.gguf")
    cfg = config.from_mapping(
        {
            "version": 1,
            "node": {"state_dir": str(tmp_path / "state")},
            "sleep": {"min_available_mb": min_available_mb},
            "models": [
                {"name": n, "path": str(model), "kind": "gguf", "idle_ttl": TTL} for n in names
            ],
        }
    )
    run = tmp_path / "state" / "run"
    units = worker_units(cfg, run)
    sleeper = Sleeper(cfg.sleep, sleepables(cfg, units), clock=clock, meminfo=meminfo)
    return Inference(cfg, run, units, sleeper=sleeper)


@contextlib.asynccontextmanager
async def running(inf: Inference) -> AsyncIterator[Sleeper]:
    """The workers started and ready, and their sleeper."""
    sleeper = inf.sleeper
    assert sleeper is not None
    await inf.start()
    try:
        await sleeper.start()
        async with asyncio.timeout(30):
            while any(s.phase is not Phase.AWAKE for s in sleeper.units.values()):
                await asyncio.sleep(0.05)
        yield sleeper
    finally:
        await inf.stop()


def now(s: Sleepable) -> Phase:
    """Its phase at this moment (a call, so the type checker does not assume it stays put)."""
    return s.phase


async def test_idle_past_the_ttl_sleeps_and_a_request_in_flight_never_does(
    tmp_path: Path, meminfo: Path
) -> None:
    clock = Clock()
    inf = inference(tmp_path, clock, meminfo, "a")
    async with running(inf) as sleeper:
        a = sleeper.units["cairn-model@a.service"]
        sleeper.begin(a.unit)  # a long request
        clock.t += 10 * TTL
        await sleeper.tick()
        assert now(a) is Phase.AWAKE and a.sleeps == {}
        sleeper.end(a.unit)  # idleness counts from the end of the last request
        clock.t += TTL - 1
        await sleeper.tick()
        assert now(a) is Phase.AWAKE
        clock.t += 1
        await sleeper.tick()
        assert now(a) is Phase.ASLEEP and a.sleeps == {"idle": 1}
        assert inf.models["a"].state() == ("asleep", "woken by the next request")
        await sleeper.wake(a.unit, 30)
        assert now(a) is Phase.AWAKE
        assert a.wakes == 1  # this wake; starting with the node is not one


async def test_memory_pressure_sleeps_the_least_recently_used_first(
    tmp_path: Path, meminfo: Path
) -> None:
    clock = Clock()
    inf = inference(tmp_path, clock, meminfo, "a", "b", "c", min_available_mb=2)
    async with running(inf) as sleeper:
        a, b, c = (sleeper.units[f"cairn-model@{n}.service"] for n in "abc")
        for s in (b, a):  # b was used before a
            sleeper.begin(s.unit)
            clock.t += 5
            sleeper.end(s.unit)
        sleeper.begin(c.unit)  # c is the oldest, but busy: never stopped
        c.last_active = 0.0
        await sleeper.tick()  # plenty of memory: nothing happens
        assert [now(s) for s in (a, b, c)] == [Phase.AWAKE] * 3

        meminfo.write_text("MemTotal: 8000000 kB\nMemAvailable: 1024 kB\n")
        await sleeper.tick()
        assert [now(s) for s in (a, b, c)] == [Phase.AWAKE, Phase.ASLEEP, Phase.AWAKE]
        await sleeper.tick()
        assert [now(s) for s in (a, b, c)] == [Phase.ASLEEP, Phase.ASLEEP, Phase.AWAKE]
        assert a.sleeps == b.sleeps == {"memory": 1} and c.sleeps == {}


async def test_a_request_that_comes_while_the_worker_stops_wakes_it_again(
    tmp_path: Path, meminfo: Path
) -> None:
    clock = Clock()
    inf = inference(tmp_path, clock, meminfo, "a")
    app = web.Application()
    app.add_subapp(openai.PREFIX, openai.create_app(inf.routes()))
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        async with running(inf) as sleeper:
            a = sleeper.units["cairn-model@a.service"]
            clock.t += TTL
            stop = asyncio.create_task(sleeper.tick())
            async with asyncio.timeout(10):
                while not a.stopping:
                    await asyncio.sleep(0.005)
            body = {"model": "a", "prompt": "hi", "max_tokens": 2}
            resp = await client.post("/v1/completions", json=body)  # waits for the stop
            assert resp.status == 200, await resp.text()
            await stop
            assert a.sleeps == {"idle": 1} and a.wakes == 1 and now(a) is Phase.AWAKE
    finally:
        await client.close()

"""The systemd client against a real systemd: jobs, typed failures, signals, counters."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cairn.system.units import JobFailed, SystemdUnits, UnitError, UnitState, UnitStatus

SLOW = """\
[Service]
Type=notify
NotifyAccess=all
ExecStart=/bin/sh -c 'sleep 0.5; systemd-notify --ready; exec sleep infinity'
"""
BROKEN = """\
[Service]
Type=notify
ExecStart=/bin/false
"""
ECHO_SOCKET = """\
[Socket]
ListenStream=127.0.0.1:7000
Accept=yes
"""
ECHO_SERVICE = """\
[Service]
ExecStart=/bin/cat
StandardInput=socket
"""
FILES = {
    "/etc/systemd/system/slow.service": SLOW,
    "/etc/systemd/system/broken.service": BROKEN,
    "/etc/systemd/system/echo.socket": ECHO_SOCKET,
    "/etc/systemd/system/echo@.service": ECHO_SERVICE,
}


async def _until(cond: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def _client(node: Any) -> AsyncIterator[SystemdUnits]:
    """A client on the node's system bus, closed afterwards."""
    units = SystemdUnits(node.bus_address)
    await units.open()
    try:
        yield units
    finally:
        await units.close()


def test_jobs_signals_and_counters(cluster_factory: Any) -> None:
    node = cluster_factory(1, files=FILES).nodes[0]
    node.systemd.Reload()

    async def scenario() -> None:
        async with _client(node) as units:
            seen: list[UnitState] = []
            units.watch(lambda s: seen.append(s) if s.name == "slow.service" else None)
            # A notify service's start job ends only once it is ready.
            await units.start("slow.service")
            assert (await units.state("slow.service")).active == "active"
            await _until(lambda: any(s.active == "active" for s in seen))
            states = [s.active for s in seen]
            assert states.index("activating") < states.index("active"), states
            await units.restart("slow.service")
            assert (await units.state("slow.service")).active == "active"
            await units.stop("slow.service")
            await _until(lambda: seen[-1].active == "inactive")
            # Two starts at once are merged by systemd into one job: both callers hear its end.
            async with asyncio.timeout(10):
                await asyncio.gather(units.start("slow.service"), units.start("slow.service"))
            await units.stop("slow.service")
            assert (await units.state("slow.service")).active == "inactive"

            with pytest.raises(JobFailed) as failed:
                await units.start("broken.service")
            assert failed.value.result == "failed" and failed.value.unit == "broken.service"
            assert (await units.state("broken.service")).active == "failed"
            await units.reset_failed("broken.service")
            assert (await units.state("broken.service")).active == "inactive"

            with pytest.raises(UnitError, match="no-such"):
                await units.start("no-such.service")

            # Accept=yes: systemd counts connections, one instance each.
            await units.start("echo.socket")
            node.exec(["sh", "-c", "echo hi | timeout 2 bash -c 'cat > /dev/tcp/127.0.0.1/7000'"])
            counters = await units.socket_counters("echo.socket")
            assert counters.accepted == 1
            assert counters.listen == [("Stream", "127.0.0.1:7000")]
            # logind's sleep locks, which starting suspend.target would ignore.
            assert await units.sleep_inhibitors() == []
            node.exec(["systemd-run", "--unit=inhibitor", "systemd-inhibit", "--what=sleep",
                       "--who=backup", "--why=copying", "sleep", "60"])  # fmt: skip
            await _until(lambda: node.unit("inhibitor.service").ActiveState == "active")
            async with asyncio.timeout(10):
                while not (held := await units.sleep_inhibitors()):
                    await asyncio.sleep(0.1)
            assert held == ["backup: copying"]

    asyncio.run(scenario())


def test_known_states_follow_the_signals_without_a_call(cluster_factory: Any) -> None:
    """What the front reads on every request: the last state, kept true by systemd's signals."""
    node = cluster_factory(1, files=FILES).nodes[0]
    node.systemd.Reload()

    async def scenario() -> None:
        async with _client(node) as units:
            assert units.known("slow.service") == UnitStatus(None)  # never read nor heard of
            node.exec(["systemctl", "start", "echo.socket"])  # nobody asks about this one
            node.exec(["systemctl", "start", "slow.service"])  # not through this client
            await _until(lambda: _active(units.known("slow.service")) == "active")
            assert "echo.socket" not in units._known  # its signals came first: not kept
            node.exec(["systemctl", "stop", "slow.service"])
            await _until(lambda: _active(units.known("slow.service")) == "inactive")
            assert (await units.state("echo.socket")).active == "active"
            assert _active(units.known("echo.socket")) == "active"  # read once: kept
            known = units.known("slow.service")
            assert known.process is None and not known.restarting and known.reason is None

    asyncio.run(scenario())


def _active(known: UnitStatus) -> str | None:
    return known.state.active if known.state else None

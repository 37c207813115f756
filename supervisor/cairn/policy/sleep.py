"""Idle sleep and wake on demand: the policy; systemd (or the children) does the stopping.

A unit is idle when it has had no request in flight and no open connection for its TTL,
counted from the end of the last one. Model workers report requests through the front
(`begin`/`end`); other services are watched through their sockets' connections in /proc/net.
Health probes and /status reads go around both, so they never keep anything awake.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from cairn.buckets import Buckets
from cairn.config import SleepConfig
from cairn.system.probe import available_bytes
from cairn.system.units import UnitError, Units, UnitState

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 120.0  # a stop that takes longer is given up on (systemd goes on with it)
WAKE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
PROC_NET = Path("/proc/net")
TCP_ESTABLISHED, TCP_TIME_WAIT, TCP_CLOSE_WAIT = "01", "06", "08"
UNIX_CONNECTING, UNIX_CONNECTED = "02", "03"


class Kind(enum.StrEnum):
    """What sleeps: a model's worker, or another socket-activated service."""

    MODEL = "model"
    SERVICE = "service"


class Phase(enum.StrEnum):
    """A sleepable unit as /status shows it."""

    AWAKE = "awake"
    WAKING = "waking"
    ASLEEP = "asleep"
    FAILED = "failed"
    UNKNOWN = "unknown"


def phase_of(state: UnitState | None) -> Phase:
    """The sleeper's word for a systemd ActiveState."""
    if state is None:
        return Phase.UNKNOWN
    return {
        "active": Phase.AWAKE,
        "reloading": Phase.AWAKE,
        "activating": Phase.WAKING,
        "deactivating": Phase.ASLEEP,
        "inactive": Phase.ASLEEP,
        "failed": Phase.FAILED,
    }.get(state.active, Phase.UNKNOWN)


class UnitView(msgspec.Struct, frozen=True):
    """One sleepable unit in /status."""

    unit: str
    kind: Kind
    socket: str | None
    state: Phase
    busy: int  # requests in flight (models) or open connections (services)
    idle_seconds: float  # since the last request, connection or wake ended; 0 while busy
    ttl_seconds: float
    sleeps: dict[str, int]  # by reason: idle, memory
    wakes: int
    last_wake_seconds: float | None  # from start to ready, the last time it woke


@dataclass
class Sleepable:
    """One unit the sleeper may stop, with what it knows of its use."""

    unit: str
    kind: Kind
    ttl: float
    units: Units
    socket: str | None = None
    state: UnitState | None = None
    last_active: float = 0.0  # monotonic: the end of the last request, connection or wake
    busy: int = 0  # requests in flight (models) or open connections (services)
    sleeps: dict[str, int] = field(default_factory=dict)  # by reason: idle, memory
    wakes: int = 0
    last_wake_s: float | None = None
    wake_latency: Buckets = field(default_factory=lambda: Buckets(WAKE_BUCKETS))
    listen: list[tuple[str, str]] = field(default_factory=list)
    time_wait: set[str] = field(default_factory=set)
    transition: asyncio.Lock = field(default_factory=asyncio.Lock)  # one start or stop at once
    stopping: bool = False  # a stop is under way: a new request must wake it again, not use it
    probing: int = 0  # health requests in flight: a stop lets them finish first
    no_probes: asyncio.Event = field(default_factory=asyncio.Event)  # set while probing == 0

    def __post_init__(self) -> None:
        self.no_probes.set()

    def in_use(self) -> bool:
        """Whether a request (model) or a connection (service) is open now."""
        return self.busy > 0

    def probe_began(self) -> None:
        """A health request to it is under way."""
        self.probing += 1
        self.no_probes.clear()

    def probe_ended(self) -> None:
        """That health request is over."""
        self.probing -= 1
        if not self.probing:
            self.no_probes.set()

    _waking_since: float | None = None

    @property
    def phase(self) -> Phase:
        """Awake, waking, asleep or failed."""
        return phase_of(self.state)

    def record_wake(self, seconds: float) -> None:
        """One wake and how long it took to be ready."""
        self.wakes += 1
        self.last_wake_s = seconds
        self.wake_latency.observe(seconds)


class Sleeper:
    """Stops idle units, wakes them for the front, and keeps the truth from systemd."""

    def __init__(
        self,
        config: SleepConfig,
        units: list[Sleepable],
        clock: Callable[[], float] = time.monotonic,
        meminfo: Path = Path("/proc/meminfo"),
    ) -> None:
        self.config = config
        self.units = {s.unit: s for s in units}
        self.clock = clock
        self.meminfo = meminfo

    async def start(self) -> None:
        """Read every unit's true state (a restart loses nothing) and follow its changes."""
        now = self.clock()
        watched: set[int] = set()
        for s in self.units.values():
            s.last_active = now  # after a restart nobody knows better: the TTL starts over
            if id(s.units) not in watched:
                s.units.watch(self._on_state)
                watched.add(id(s.units))
            try:
                s.state = await s.units.state(s.unit)
                if s.socket is not None:
                    counters = await s.units.socket_counters(s.socket)
                    s.listen = counters.listen
            except UnitError as err:
                log.warning("sleepable %s: %s", s.unit, err)
        log.info(
            "sleeper: %s",
            ", ".join(f"{s.unit} {s.phase} (ttl {s.ttl:g} s)" for s in self.units.values())
            or "nothing to watch",
        )

    def _on_state(self, state: UnitState) -> None:
        s = self.units.get(state.name)
        if s is None:
            return
        old, s.state = s.phase, state
        now = self.clock()
        if s.phase is Phase.WAKING and old is not Phase.WAKING:
            s._waking_since = now
        elif s.phase is Phase.AWAKE and old is not Phase.AWAKE:
            s.last_active = now  # a wake is use: whoever woke it gets a full TTL
            if s._waking_since is not None:
                s.record_wake(now - s._waking_since)
                log.info("%s awake after %.2f s", s.unit, now - s._waking_since)
            s._waking_since = None
        elif s.phase is not Phase.WAKING:
            s._waking_since = None

    # --- what the front tells us ---------------------------------------------------------

    def begin(self, unit: str) -> None:
        """A request for this unit arrived; it stays awake until `end`."""
        s = self.units.get(unit)
        if s is not None:
            s.busy += 1
            s.last_active = self.clock()

    def end(self, unit: str) -> None:
        """The request finished (answered, failed or abandoned): idleness counts from now."""
        s = self.units.get(unit)
        if s is not None:
            s.busy = max(0, s.busy - 1)
            s.last_active = self.clock()

    def awake(self, unit: str) -> bool:
        """Whether the unit is up (or not sleepable at all: then it is not ours to know)."""
        s = self.units.get(unit)
        return s is None or s.phase is Phase.AWAKE

    async def wake(self, unit: str, timeout: float) -> None:
        """Start the unit and wait until it is ready; raises UnitError or TimeoutError."""
        s = self.units[unit]
        async with asyncio.timeout(timeout), s.transition:
            if s.phase is not Phase.AWAKE:
                await s.units.start(unit)
                s.state = await s.units.state(unit)

    # --- the policy ----------------------------------------------------------------------

    async def tick(self) -> None:
        """One round: refresh connections, sleep what is idle, relieve memory pressure."""
        now = self.clock()
        for s in self.units.values():
            if s.kind is Kind.SERVICE and s.listen and s.phase is Phase.AWAKE:
                self._count_connections(s, now)
        if not self.config.enable:
            return
        for s in list(self.units.values()):
            if s.phase is Phase.AWAKE and s.busy == 0 and now - s.last_active >= s.ttl:
                await self.sleep(s, "idle")
        floor = self.config.min_available_mb << 20
        if floor and available_bytes(self.meminfo) < floor:
            idle = [s for s in self.units.values() if s.phase is Phase.AWAKE and s.busy == 0]
            if idle:
                lru = min(idle, key=lambda s: s.last_active)
                log.warning(
                    "memory below %d MiB: %s sleeps early", self.config.min_available_mb, lru.unit
                )
                await self.sleep(lru, "memory")

    async def sleep(self, s: Sleepable, reason: str) -> None:
        """Stop the unit unless something began to use it meanwhile."""
        async with s.transition:
            if s.busy or s.phase is not Phase.AWAKE:
                return
            s.stopping = True  # from here on no new health request starts, requests wait
            try:
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await s.no_probes.wait()  # the health requests under way finish first
                    if s.in_use():  # a request came meanwhile: it finds the worker awake
                        return
                    log.info(
                        "%s idle for %.0f s: sleeping (%s)",
                        s.unit,
                        self.clock() - s.last_active,
                        reason,
                    )
                    await s.units.stop(s.unit)
                    s.state = await s.units.state(s.unit)
            except (UnitError, TimeoutError) as err:
                log.warning("could not put %s to sleep: %s", s.unit, err or "timed out")
                return
            finally:
                s.stopping = False
            s.sleeps[reason] = s.sleeps.get(reason, 0) + 1

    def _count_connections(self, s: Sleepable, now: float) -> None:
        busy, closed = connections(s.listen)
        new_closed = closed - s.time_wait
        s.time_wait = closed
        if busy or new_closed:  # open now, or one ended since the last look
            s.last_active = now
        s.busy = busy

    def view(self) -> list[UnitView]:
        """Each sleepable unit for /status."""
        now = self.clock()
        return [
            UnitView(
                s.unit,
                s.kind,
                s.socket,
                s.phase,
                s.busy,
                0.0 if s.busy else round(now - s.last_active, 1),
                s.ttl,
                dict(s.sleeps),
                s.wakes,
                None if s.last_wake_s is None else round(s.last_wake_s, 3),
            )
            for s in self.units.values()
        ]

    def asleep(self) -> list[str]:
        """Units asleep now (for the digest)."""
        return [s.unit for s in self.units.values() if s.phase is Phase.ASLEEP]


class SleepCollector(Collector):
    """The sleeper's metrics, read at scrape time."""

    def __init__(self, sleeper: Sleeper) -> None:
        self.sleeper = sleeper

    def collect(self) -> Iterator[Metric]:
        """Per unit: asleep now, sleeps by reason, wakes, wake latency."""
        asleep = GaugeMetricFamily(
            "cairn_unit_asleep", "1 while the sleepable unit is asleep.", labels=["unit"]
        )
        sleeps = CounterMetricFamily(
            "cairn_unit_sleeps", "Times the sleeper stopped the unit.", labels=["unit", "reason"]
        )
        wakes = CounterMetricFamily("cairn_unit_wakes", "Times the unit woke.", labels=["unit"])
        latency = HistogramMetricFamily(
            "cairn_unit_wake_seconds", "From start to ready, per wake.", labels=["unit"]
        )
        for s in self.sleeper.units.values():
            asleep.add_metric([s.unit], 1.0 if s.phase is Phase.ASLEEP else 0.0)
            for reason in ("idle", "memory"):
                sleeps.add_metric([s.unit, reason], s.sleeps.get(reason, 0))
            wakes.add_metric([s.unit], s.wakes)
            latency.add_metric([s.unit], s.wake_latency.cumulative(), s.wake_latency.total)
        yield from (asleep, sleeps, wakes, latency)


# --- reading the kernel's view -----------------------------------------------------------


def _port(address: str) -> int | None:
    """The port of a systemd Listen address ("0.0.0.0:80", "[::]:80", "80"), or None."""
    tail = address.rsplit(":", 1)[-1] if not address.startswith("/") else ""
    return int(tail) if tail.isdigit() else None


def connections(listen: list[tuple[str, str]], proc: Path = PROC_NET) -> tuple[int, set[str]]:
    """Open (and queued) connections to these listening addresses, and the recently closed.

    TCP: sockets whose local port is a listening port, established (accepted, or still in the
    accept queue) or in CLOSE_WAIT (the client is done sending, the answer is not); and the
    identities of those in TIME_WAIT, at the service's end or at a client's end on this machine
    (a new one means a connection closed since the last look; a remote client that closes
    first keeps its TIME_WAIT, so a connection that opens and closes between two looks can go
    unseen). Unix: sockets connected at a listening path.
    """
    ports = {p for kind, a in listen if kind == "Stream" and (p := _port(a)) is not None}
    paths = {a for kind, a in listen if kind == "Stream" and a.startswith("/")}
    busy, closed = 0, set()
    if ports:
        for name in ("tcp", "tcp6"):
            rows: list[list[str]] = []
            with contextlib.suppress(FileNotFoundError):
                rows = [line.split() for line in (proc / name).read_text().splitlines()[1:]]
            # Every socket's local address is one of this machine's: that tells a local
            # client's end from a connection this machine made to someone else's port 80.
            here = {f[1].rsplit(":", 1)[0] for f in rows}
            for f in rows:
                local, remote, st = f[1], f[2], f[3]
                served = int(local.rsplit(":", 1)[1], 16) in ports
                if st in (TCP_ESTABLISHED, TCP_CLOSE_WAIT) and served:
                    busy += 1
                elif st == TCP_TIME_WAIT:
                    addr, port = remote.rsplit(":", 1)
                    if served or (int(port, 16) in ports and addr in here):
                        closed.add(f"{local}>{remote}")
    if paths:
        with contextlib.suppress(FileNotFoundError):
            for line in (proc / "unix").read_text().splitlines()[1:]:
                f = line.split()
                if len(f) >= 8 and f[7] in paths and f[5] in (UNIX_CONNECTING, UNIX_CONNECTED):
                    busy += 1
    return busy, closed

"""Self-heal: checks find problems, incidents record them, fixes repair what they may.

Each check is a small class that reports its current findings, one per subject (a unit, a
model, a path). A finding with no open incident opens one; an open incident whose finding is
gone is closed. A check may carry a fix; an automatic fix is attempted on every round while
its incident is open (it paces itself), and every attempt is written into the incident.
Incidents live in the state file, so they survive restarts; the journal, /status, /metrics and
the node digest all show them.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import psutil
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cairn.policy.thermal import Reading
from cairn.state import INCIDENTS_KEPT, Incident, Store
from cairn.system.probe import available_bytes
from cairn.system.units import JobFailed, UnitError, Units, unit_of

log = logging.getLogger(__name__)

FIXES_KEPT = 20  # fix attempts kept per incident, newest last
HOUR_S = 3600.0
FLAP_WINDOW_S = 600.0  # this many restarts by systemd within this window is flapping
FLAP_RESTARTS = 3
RECENT_INCIDENTS = 20  # closed incidents shown in /status, the newest


@dataclass(frozen=True)
class Finding:
    """One problem about one subject."""

    subject: str
    detail: str


class Fix(Protocol):
    """Repairs the subject of an incident; paces itself across rounds."""

    name: str
    automatic: bool

    async def attempt(self, subject: str) -> str | None:
        """Try once; what was done, or None if nothing is due this round."""

    def resolved(self, subject: str) -> None:
        """The incident closed: start afresh next time."""


class Check(Protocol):
    """Finds the current problems of one kind."""

    name: str
    fix: Fix | None

    async def findings(self) -> list[Finding]:
        """Every subject that fails this check now."""


# --- the restart ladder --------------------------------------------------------------------


@dataclass
class _Rung:
    delay: float
    next_at: float = 0.0
    limit_since: float | None = None
    gave_up: bool = False
    resets: deque[float] = field(default_factory=deque)


class RestartLadder:
    """Restart with backoff; at the start limit, cool down, reset-failed, go on; then give up.

    Exponential backoff between restarts; once systemd's start limit is hit, `cooldown` seconds,
    then reset-failed and again, at most `resets_per_hour` times an hour; then the unit is left
    stopped and its incident open.
    """

    name = "restart"
    automatic = True

    def __init__(
        self,
        units: Units,
        backoff: tuple[float, float] = (1.0, 60.0),
        cooldown: float = 60.0,
        resets_per_hour: int = 3,
        clock: Callable[[], float] = time.monotonic,
        hold: Callable[[str], bool] = lambda _unit: False,
    ) -> None:
        self.units = units
        self.hold = hold  # units to leave alone for now (the thermal guard's paused workers)
        self.backoff = backoff
        self.cooldown = cooldown
        self.resets_per_hour = resets_per_hour
        self.clock = clock
        self.rungs: dict[str, _Rung] = {}
        self.restarts: Counter[str] = Counter()
        self.resets: Counter[str] = Counter()

    def gave_up(self, unit: str) -> bool:
        """Whether the ladder ran out for this unit."""
        rung = self.rungs.get(unit)
        return rung is not None and rung.gave_up

    async def attempt(self, subject: str) -> str | None:
        """One step up the ladder, if one is due."""
        rung = self.rungs.setdefault(subject, _Rung(self.backoff[0]))
        now = self.clock()
        if rung.gave_up or now < rung.next_at or self.hold(subject):
            return None
        note = ""
        if rung.limit_since is not None:
            if now - rung.limit_since < self.cooldown:
                return None
            await self.units.reset_failed(subject)
            rung.resets.append(now)
            self.resets[subject] += 1
            rung.limit_since, rung.delay = None, self.backoff[0]
            note = "reset-failed after the cool-down; "
        before = await self.units.service_info(subject)
        self.restarts[subject] += 1
        rung.next_at = now + rung.delay
        rung.delay = min(rung.delay * 2, self.backoff[1])
        try:
            await self.units.restart(subject)
        except JobFailed as err:
            # A start systemd refused never ran: the main process start time did not move.
            if (await self.units.service_info(subject)).exec_started != before.exec_started:
                return f"{note}restarted: the job ended {err.result}"
        else:
            return f"{note}restarted"
        while rung.resets and now - rung.resets[0] > HOUR_S:
            rung.resets.popleft()
        if len(rung.resets) >= self.resets_per_hour:
            rung.gave_up = True
            await self.units.stop(subject)
            log.error(
                "%s: start limit hit again after %d resets this hour; leaving it stopped",
                subject,
                len(rung.resets),
            )
            return f"{note}start refused again after {len(rung.resets)} resets this hour: gave up"
        rung.limit_since = now
        return (
            f"{note}start refused (systemd's start limit): cooling down {self.cooldown:g} s"
            " before reset-failed"
        )

    def resolved(self, subject: str) -> None:
        """Healthy again: the backoff starts over (the hourly reset budget does not)."""
        rung = self.rungs.get(subject)
        if rung is not None and not rung.gave_up:
            rung.delay, rung.next_at, rung.limit_since = self.backoff[0], 0.0, None


# --- checks ------------------------------------------------------------------------------


class UnitFailed:
    """A watched unit failed (or, for one that must run, is not running), or flaps."""

    name = "unit-failed"

    def __init__(
        self,
        units: Units,
        watched: Callable[[], list[str]],
        fix: Fix | None,
        must_run: frozenset[str] = frozenset(),
    ) -> None:
        self.units = units
        self.watched = watched
        self.fix = fix
        self.must_run = must_run  # critical units; the others (sleepable workers) may be inactive
        self._restarts: dict[str, deque[tuple[float, int]]] = {}

    async def findings(self) -> list[Finding]:
        out = []
        now = time.monotonic()
        for unit in self.watched():
            try:
                st = await self.units.state(unit)
                service = unit.endswith(".service")  # sockets have no Result or NRestarts
                info = await self.units.service_info(unit) if service else None
            except UnitError as err:
                out.append(Finding(unit, str(err)))
                continue
            recent = 0
            if info is not None:
                seen = self._restarts.setdefault(unit, deque())
                seen.append((now, info.restarts))
                while seen and now - seen[0][0] > FLAP_WINDOW_S:
                    seen.popleft()
                recent = info.restarts - seen[0][1]
            if st.active == "failed":
                result = f" ({info.result})" if info is not None else ""
                out.append(Finding(unit, f"{unit} failed{result}"))
            elif unit in self.must_run and not st.running:
                out.append(Finding(unit, f"{unit} is {st.active}, and it must run"))
            elif recent >= FLAP_RESTARTS:
                out.append(Finding(unit, f"{unit} flapping: {recent} restarts in 10 min"))
        return out


class ModelProbe:
    """An awake worker does not answer a one-token probe (a sleeping one is left asleep)."""

    name = "model-probe"

    def __init__(
        self,
        probe: Callable[[str], Awaitable[str]],
        awake: Callable[[], list[str]],
        fix: Fix | None,
    ) -> None:
        self.probe = probe
        self.awake = awake
        self.fix = fix

    async def findings(self) -> list[Finding]:
        out = []
        for model in self.awake():
            if why := await self.probe(model):
                out.append(
                    Finding(unit_of(model), f"model {model} does not answer its probe: {why}")
                )
        return out


class DiskFull:
    """The state directory's file system is nearly full."""

    name = "disk-full"
    fix: Fix | None = None

    def __init__(self, path: Path, min_free_ratio: float) -> None:
        self.path = path
        self.min_free_ratio = min_free_ratio

    async def findings(self) -> list[Finding]:
        usage = psutil.disk_usage(str(self.path))
        free = usage.free / usage.total if usage.total else 1.0
        if free >= self.min_free_ratio:
            return []
        return [Finding(str(self.path), f"{free:.1%} free (below {self.min_free_ratio:.0%})")]


class MemoryLow:
    """Available memory is below the floor (the sleeper already puts units to sleep)."""

    name = "memory-low"
    fix: Fix | None = None

    def __init__(self, floor_bytes: int, meminfo: Path = Path("/proc/meminfo")) -> None:
        self.floor = floor_bytes
        self.meminfo = meminfo

    async def findings(self) -> list[Finding]:
        available = available_bytes(self.meminfo)
        if not self.floor or available >= self.floor:
            return []
        return [Finding("memory", f"{available >> 20} MiB available, below {self.floor >> 20}")]


class NoPeer:
    """Peers are configured but none is reachable."""

    name = "no-peer"
    fix: Fix | None = None

    def __init__(self, live: Callable[[], int]) -> None:
        self.live = live

    async def findings(self) -> list[Finding]:
        n = self.live()
        return [] if n > 1 else [Finding("cluster", "no peer reachable")]


class Unconfirmed:
    """The running generation is not confirmed (inside its window, or bad)."""

    name = "generation-unconfirmed"

    fix: Fix | None = None  # the gate decides and acts itself; it reports through record()

    def __init__(self, view: Callable[[], tuple[int | None, str, str]]) -> None:
        self.view = view

    async def findings(self) -> list[Finding]:
        current, status, detail = self.view()
        if current is None or status in ("confirmed", "unavailable"):
            return []
        return [Finding(f"generation {current}", f"{status}: {detail}" if detail else status)]


class StateUnsaved:
    """The state file cannot be written (a full, read-only or failing disk)."""

    name = "state-unsaved"
    fix: Fix | None = None

    def __init__(self, store: Store) -> None:
        self.store = store

    async def findings(self) -> list[Finding]:
        if not self.store.error:
            return []
        why = "; no decision of the gate is taken until it can be saved (this incident, too, is"
        return [Finding(str(self.store.file.path), f"{self.store.error}{why} in memory only)")]


class GpuHot:
    """A GPU is at or above its warning temperature, or its memory is nearly full."""

    name = "gpu"
    fix: Fix | None = None

    def __init__(
        self, readings: Callable[[], list[Reading]], warn_celsius: float, warn_memory_ratio: float,
    ) -> None:  # fmt: skip
        self.readings = readings
        self.warn_celsius = warn_celsius
        self.warn_memory_ratio = warn_memory_ratio

    async def findings(self) -> list[Finding]:
        out = []
        for index, celsius, memory in self.readings():
            problems = []
            if celsius is not None and celsius >= self.warn_celsius:
                problems.append(f"{celsius:.0f} °C (warning at {self.warn_celsius:g})")
            if memory is not None and memory >= self.warn_memory_ratio:
                problems.append(f"memory {memory:.0%} used")
            if problems:
                out.append(Finding(f"gpu {index}", ", ".join(problems)))
        return out


# --- the healer --------------------------------------------------------------------------


class Incidents:
    """The incident book in the state file: opened, noted, closed; every fix attempt counted."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self.fix_attempts: Counter[tuple[str, str]] = Counter()  # (fix, check)

    def open(self) -> list[Incident]:
        """The open incidents, oldest first."""
        return [i for i in self.store.state.incidents if i.closed is None]

    def view(self) -> list[Incident]:
        """The open incidents, then the most recently closed ones, newest first (/status)."""
        every = self.store.state.incidents
        closed = sorted((i for i in every if i.closed is not None), key=lambda i: -(i.closed or 0))
        return sorted(self.open(), key=lambda i: -i.since) + closed[:RECENT_INCIDENTS]

    def record(self, check: str, subject: str, detail: str, fix: str, done: str) -> None:
        """An automatic fix that ran outside the rounds (the gate's rollback): into its incident."""
        inc = next((i for i in self.open() if i.check == check and i.subject == subject), None)
        if inc is None:
            inc = self.opened(check, subject, detail, None)
        inc.fix = f"{fix} (automatic)"
        self.note(inc, fix, done, done)
        self.store.save()

    def opened(self, check: str, subject: str, detail: str, fix: Fix | None) -> Incident:
        """A new open incident (saved with the round)."""
        st = self.store.state
        st.incident_seq += 1
        how = "" if fix is None else f"{fix.name} ({'automatic' if fix.automatic else 'manual'})"
        inc = Incident(f"{check}-{st.incident_seq}", check, subject, self.clock(), detail, fix=how)
        st.incidents.append(inc)
        log.warning("incident %s opened: %s", inc.id, detail)
        return inc

    def note(self, inc: Incident, fix: str, what: str, done: str) -> None:
        """One fix attempt: counted, logged, and kept in the incident (the newest FIXES_KEPT)."""
        self.fix_attempts[(fix, inc.check)] += 1
        inc.fixes = [*inc.fixes, f"{time.strftime('%H:%M:%S')} {done}"][-FIXES_KEPT:]
        log.warning("incident %s: %s", inc.id, what)

    def trim(self) -> None:
        """Keep the newest INCIDENTS_KEPT closed incidents."""
        st = self.store.state
        closed = [i for i in st.incidents if i.closed is not None]
        drop = {id(i) for i in closed[: max(0, len(closed) - INCIDENTS_KEPT)]}
        st.incidents = [i for i in st.incidents if id(i) not in drop]


class Healer:
    """Runs the checks over the incident book, attempts the automatic fixes."""

    def __init__(self, incidents: Incidents, checks: list[Check]) -> None:
        self.incidents = incidents
        self.store = incidents.store
        self.checks = [*checks, StateUnsaved(self.store)]  # every node has a state file

    async def tick(self) -> None:
        """One round of every check."""
        changed = False
        for check in self.checks:
            try:
                found = {f.subject: f for f in await check.findings()}
            except Exception:  # a broken check must not stop the others
                log.exception("check %s failed to run", check.name)
                continue
            changed |= await self._apply(check, found)
        if changed or self.store.error:  # a refused save is tried again each round
            self.incidents.trim()
            self.store.save()

    async def _apply(self, check: Check, found: dict[str, Finding]) -> bool:
        changed = False
        book = self.incidents
        current = {i.subject: i for i in book.open() if i.check == check.name}
        fix = check.fix
        for subject, finding in found.items():
            inc = current.get(subject)
            if inc is None:
                inc, changed = book.opened(check.name, subject, finding.detail, fix), True
            elif inc.detail != finding.detail:
                inc.detail, changed = finding.detail, True
            if fix is not None and fix.automatic:
                try:
                    done = await fix.attempt(subject)
                except UnitError as err:
                    done = f"{fix.name} failed: {err}"
                if done is not None:
                    book.note(inc, fix.name, f"{fix.name} {subject}: {done}", done)
                    changed = True
        now = book.clock()
        for subject, inc in current.items():
            if subject not in found:
                inc.closed, changed = now, True
                log.info("incident %s resolved: %s", inc.id, subject)
                if fix is not None:
                    fix.resolved(subject)
        return changed


class HealCollector(Collector):
    """The incidents' and the restart ladder's metrics, read at scrape time."""

    def __init__(self, incidents: Incidents, ladder: RestartLadder | None) -> None:
        self.incidents = incidents
        self.ladder = ladder

    def collect(self) -> Iterator[Metric]:
        """Open incidents and fix attempts; restarts, resets and give-ups by unit."""
        opened = GaugeMetricFamily(
            "cairn_incidents_open", "Open incidents, by check.", labels=["check"]
        )
        for check, n in sorted(Counter(i.check for i in self.incidents.open()).items()):
            opened.add_metric([check], n)
        fixes = CounterMetricFamily(
            "cairn_fix_attempts", "Fix attempts, by fix and check.", labels=["check", "fix"]
        )
        for (fix, check), n in sorted(self.incidents.fix_attempts.items()):
            fixes.add_metric([check, fix], n)
        yield from (opened, fixes)
        ladder = self.ladder
        if ladder is None:
            return
        restarts = CounterMetricFamily(
            "cairn_unit_restarts", "Restarts by the escalation ladder.", labels=["unit"]
        )
        resets = CounterMetricFamily(
            "cairn_unit_resets", "reset-failed after systemd's start limit.", labels=["unit"]
        )
        gave_up = GaugeMetricFamily(
            "cairn_unit_given_up", "1 once the ladder left the unit stopped.", labels=["unit"]
        )
        for unit in sorted(ladder.rungs):
            restarts.add_metric([unit], ladder.restarts[unit])
            resets.add_metric([unit], ladder.resets[unit])
            gave_up.add_metric([unit], 1.0 if ladder.gave_up(unit) else 0.0)
        yield from (restarts, resets, gave_up)

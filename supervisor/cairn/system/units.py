"""Units: systemd over D-Bus (pydbus), or the standalone children behind the same interface."""

from __future__ import annotations

import asyncio
import builtins
import collections
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from cairn.errors import CairnError

log = logging.getLogger(__name__)

SYSTEMD = "org.freedesktop.systemd1"
LOGIN = "org.freedesktop.login1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
UNIT = "org.freedesktop.systemd1.Unit"
SOCKET = "org.freedesktop.systemd1.Socket"
SERVICE = "org.freedesktop.systemd1.Service"
PROPERTIES = "org.freedesktop.DBus.Properties"
CALL_TIMEOUT_MS = 25_000  # the D-Bus default; a start job is waited for separately
FINISHED_KEPT = 512  # JobRemoved results kept for callers whose reply came after the signal
JOB_WAIT_S = 900.0  # no job waits longer (a worker's start is bounded well below by its unit)


def unit_of(model: str) -> str:
    """The worker unit of a model (the standalone children answer to the same names)."""
    return f"cairn-model@{model}.service"


class UnitError(CairnError):
    """systemd refused or could not do what was asked."""


class JobFailed(UnitError):
    """A start/stop/restart job ended with a result other than `done`."""

    def __init__(self, unit: str, verb: str, result: str) -> None:
        super().__init__(f"{verb} {unit}: job {result}")
        self.unit, self.verb, self.result = unit, verb, result


@dataclass(frozen=True)
class UnitState:
    """A unit's state as systemd names it."""

    name: str
    active: str  # ActiveState: active, reloading, inactive, failed, activating, deactivating
    sub: str = ""

    @property
    def running(self) -> bool:
        """Active or on its way there: it holds (or is taking) its memory."""
        return self.active in ("active", "reloading", "activating", "deactivating")


@dataclass(frozen=True)
class SocketCounters:
    """A socket unit's counters (systemd counts connections only for Accept=yes sockets)."""

    accepted: int
    connections: int
    listen: list[tuple[str, str]]  # (type, address), e.g. ("Stream", "/run/x.sock")


@dataclass(frozen=True)
class ServiceInfo:
    """A service's `Result`, `NRestarts`, and when its main process last started.

    `exec_started` is `ExecMainStartTimestampMonotonic` (µs): a start systemd refuses (its start
    limit) leaves it as it was.
    """

    result: str
    restarts: int
    exec_started: int


@dataclass(frozen=True)
class Process:
    """A unit's main process, where the backend runs it itself (the standalone children)."""

    pid: int | None  # None while it does not run
    starts: int  # how often it was started


@dataclass(frozen=True)
class UnitStatus:
    """What a backend knows of a unit now, read without a call: what the front shows and acts on."""

    state: UnitState | None  # None: neither read nor heard of yet (socket-activated, say)
    reason: str | None = None  # the backend's own words for how it is; None: it has none
    process: Process | None = None  # None: systemd runs it (the worker reports its own pid)
    spawned: bool = False  # activating, and its process has not yet said it is loading
    restarting: bool = False  # failed, and restarting itself after a backoff: a start only waits


Watcher = Callable[[UnitState], None]


class Units(Protocol):
    """What the sleeper and the healer ask of systemd; the standalone backend answers too."""

    async def start(self, unit: str) -> None:
        """Start it and wait for the job (a Type=notify service: until READY=1)."""

    async def stop(self, unit: str) -> None:
        """Stop it and wait for the job."""

    async def restart(self, unit: str) -> None:
        """Restart it and wait for the job."""

    async def reset_failed(self, unit: str) -> None:
        """Clear its failed state and start-limit counter."""

    async def state(self, unit: str) -> UnitState:
        """Its current state."""

    def known(self, unit: str) -> UnitStatus:
        """What the backend knows of it now, without asking anyone (no I/O, no waiting)."""

    async def socket_counters(self, unit: str) -> SocketCounters:
        """A socket unit's counters and listening addresses."""

    async def service_info(self, unit: str) -> ServiceInfo:
        """A service's last result and how often systemd restarted it."""

    def watch(self, fn: Watcher) -> None:
        """Call `fn` on the event loop whenever a unit's ActiveState or SubState changes."""


def unit_name_from_path(path: str) -> str:
    """The unit name in a systemd object path (`_2d` is '-', and so on)."""
    tail = path.rsplit("/", 1)[-1]
    out, i = [], 0
    while i < len(tail):
        if tail[i] == "_" and i + 2 < len(tail):
            out.append(chr(int(tail[i + 1 : i + 3], 16)))
            i += 3
        else:
            out.append(tail[i])
            i += 1
    return "".join(out)


class SystemdUnits:
    """systemd's manager on a D-Bus connection; signals arrive on a GLib thread of its own.

    Method calls block, so they run in the default executor; JobRemoved and PropertiesChanged
    are passed to the event loop, so no state is ever polled.
    """

    def __init__(self, address: str | None = None) -> None:
        self.address = address  # None: the system bus
        self._bus: Any = None
        self._mainloop: Any = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._jobs: dict[str, asyncio.Future[str]] = {}
        self._finished: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._watchers: list[Watcher] = []
        self._subscriptions: list[Any] = []
        # The last state of each unit someone read or asked about, kept true by the signals.
        self._known: dict[str, UnitState | None] = {}

    async def open(self) -> None:
        """Connect, subscribe to the manager's signals, and start the signal thread."""
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._connect)

    def _connect(self) -> None:
        import pydbus
        from gi.repository import GLib

        try:
            self._bus = pydbus.connect(self.address) if self.address else pydbus.SystemBus()
            self._call(MANAGER_PATH, MANAGER, "Subscribe", None, None)
        except GLib.Error as err:
            raise UnitError(f"cannot reach systemd over D-Bus: {err.message}") from None
        # Subscriptions made on this thread deliver on the default main context: the loop below.
        self._subscriptions = [
            self._bus.subscribe(
                sender=SYSTEMD, iface=MANAGER, signal="JobRemoved", signal_fired=self._on_job
            ),
            self._bus.subscribe(
                sender=SYSTEMD,
                iface=PROPERTIES,
                signal="PropertiesChanged",
                arg0=UNIT,
                signal_fired=self._on_properties,
            ),
        ]
        self._mainloop = GLib.MainLoop()
        self._thread = threading.Thread(target=self._mainloop.run, name="cairn-dbus", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        """Unsubscribe and stop the signal thread."""
        for sub in self._subscriptions:
            sub.unsubscribe()
        self._subscriptions = []
        if self._mainloop is not None:
            self._mainloop.quit()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)
        for fut in self._jobs.values():
            fut.cancel()

    # --- signals (GLib thread → event loop) ----------------------------------------------

    def _on_job(self, _sender: str, _path: str, _iface: str, _sig: str, params: Any) -> None:
        _id, job, unit, result = params
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._job_done, str(job), str(unit), str(result))

    def _job_done(self, job: str, unit: str, result: str) -> None:
        # Kept even when someone waits: systemd merges a second request for the same unit into
        # the running job and returns its path, and that caller's reply may come after this.
        self._finished[job] = result
        while len(self._finished) > FINISHED_KEPT:
            self._finished.popitem(last=False)
        fut = self._jobs.pop(job, None)
        if fut is not None and not fut.done():
            fut.set_result(result)

    def _on_properties(self, _sender: str, path: str, _iface: str, _sig: str, params: Any) -> None:
        _iface_name, changed, _invalidated = params
        if "ActiveState" not in changed and "SubState" not in changed:
            return
        name = unit_name_from_path(path)
        active, sub = changed.get("ActiveState"), changed.get("SubState")
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._changed, name, active, sub)

    def _changed(self, name: str, active: str | None, sub: str | None) -> None:
        if active is None:  # only SubState came: read the pair so watchers get both
            task = asyncio.ensure_future(self.state(name))
            task.add_done_callback(self._notify_read)
            return
        self._notify(UnitState(name, active, sub or ""))

    def _notify_read(self, task: asyncio.Future[UnitState]) -> None:
        if not task.cancelled() and task.exception() is None:
            self._notify(task.result())

    def _notify(self, state: UnitState) -> None:
        if state.name in self._known:
            self._known[state.name] = state
        for fn in self._watchers:
            try:
                fn(state)
            except Exception:  # one watcher's bug must not hide the change from the others
                log.exception("unit watcher failed on %s", state.name)

    def watch(self, fn: Watcher) -> None:
        """Call `fn` on every ActiveState/SubState change."""
        self._watchers.append(fn)

    # --- calls ----------------------------------------------------------------------------

    def _call(
        self, path: str, iface: str, method: str, args: Any, reply: str | None, dest: str = SYSTEMD
    ) -> Any:
        """One blocking method call on systemd (or `dest`); returns the reply's values."""
        from gi.repository import GLib

        ret = self._bus.con.call_sync(
            dest,
            path,
            iface,
            method,
            args,
            GLib.VariantType.new(reply) if reply else None,
            0,
            CALL_TIMEOUT_MS,
            None,
        )
        return ret.unpack() if ret is not None else None

    async def _run(self, fn: Callable[[], Any], what: str) -> Any:
        from gi.repository import GLib

        try:
            return await asyncio.to_thread(fn)
        except GLib.Error as err:
            # e.g. NoSuchUnit, or AccessDenied when polkit does not allow this user the verb
            raise UnitError(f"{what}: {err.message}") from None

    async def _job(self, verb: str, method: str, unit: str) -> None:
        from gi.repository import GLib

        args = GLib.Variant("(ss)", (unit, "replace"))
        (job,) = await self._run(
            lambda: self._call(MANAGER_PATH, MANAGER, method, args, "(o)"), f"{verb} {unit}"
        )
        result = self._finished.get(job)
        if result is None:
            assert self._loop is not None
            # One future per job, shared by every caller that got this job path.
            fut = self._jobs.get(job)
            if fut is None:
                fut = self._jobs[job] = self._loop.create_future()
            try:
                result = await asyncio.wait_for(asyncio.shield(fut), JOB_WAIT_S)
            except TimeoutError:
                raise UnitError(
                    f"{verb} {unit}: no end of job {job} after {JOB_WAIT_S:g} s"
                ) from None
        if result != "done":
            raise JobFailed(unit, verb, result)

    async def start(self, unit: str) -> None:
        """StartUnit, then wait for its JobRemoved."""
        await self._job("start", "StartUnit", unit)

    async def stop(self, unit: str) -> None:
        """StopUnit, then wait for its JobRemoved."""
        await self._job("stop", "StopUnit", unit)

    async def restart(self, unit: str) -> None:
        """RestartUnit, then wait for its JobRemoved."""
        await self._job("restart", "RestartUnit", unit)

    async def reset_failed(self, unit: str) -> None:
        """ResetFailedUnit."""
        from gi.repository import GLib

        args = GLib.Variant("(s)", (unit,))
        await self._run(
            lambda: self._call(MANAGER_PATH, MANAGER, "ResetFailedUnit", args, None),
            f"reset-failed {unit}",
        )

    def _unit_path(self, unit: str) -> str:
        from gi.repository import GLib

        # LoadUnit, not GetUnit: an inactive unit nobody referenced may be unloaded.
        args = GLib.Variant("(s)", (unit,))
        (path,) = self._call(MANAGER_PATH, MANAGER, "LoadUnit", args, "(o)")
        return str(path)

    def _get_all(self, unit: str, iface: str) -> dict[str, Any]:
        from gi.repository import GLib

        args = GLib.Variant("(s)", (iface,))
        (props,) = self._call(self._unit_path(unit), PROPERTIES, "GetAll", args, "(a{sv})")
        return dict(props)

    async def state(self, unit: str) -> UnitState:
        """The unit's ActiveState and SubState."""
        props = await self._run(lambda: self._get_all(unit, UNIT), f"read {unit}")
        if props.get("LoadState") == "not-found":
            raise UnitError(f"read {unit}: no such unit")
        state = self._known[unit] = UnitState(
            unit, str(props["ActiveState"]), str(props["SubState"])
        )
        return state

    def known(self, unit: str) -> UnitStatus:
        """The state last read or signalled; from now on the signals keep it for this unit."""
        return UnitStatus(self._known.setdefault(unit, None))

    async def socket_counters(self, unit: str) -> SocketCounters:
        """NAccepted, NConnections and Listen of a socket unit."""
        props = await self._run(lambda: self._get_all(unit, SOCKET), f"read {unit}")
        return SocketCounters(
            int(props["NAccepted"]),
            int(props["NConnections"]),
            [(str(t), str(a)) for t, a in props["Listen"]],
        )

    async def service_info(self, unit: str) -> ServiceInfo:
        """Result and NRestarts of a service unit."""
        props = await self._run(lambda: self._get_all(unit, SERVICE), f"read {unit}")
        return ServiceInfo(
            str(props["Result"]),
            int(props["NRestarts"]),
            int(props["ExecMainStartTimestampMonotonic"]),
        )

    async def sleep_inhibitors(self) -> builtins.list[str]:
        """Who holds a logind lock that blocks sleep ("who: why"); suspend.target ignores them."""

        def call() -> Any:
            manager = "org.freedesktop.login1.Manager"
            return self._call(
                "/org/freedesktop/login1", manager, "ListInhibitors", None, None, LOGIN
            )

        (rows,) = await self._run(call, "list logind inhibitors")
        return [
            f"{who}: {why}"
            for what, who, why, mode, _uid, _pid in rows
            if "sleep" in what.split(":") and mode == "block"
        ]

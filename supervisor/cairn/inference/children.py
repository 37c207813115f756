"""Standalone workers: the supervisor spawns each model's worker and hears its sd_notify."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from cairn.config import ModelConfig
from cairn.system.units import (
    JobFailed,
    Process,
    ServiceInfo,
    SocketCounters,
    UnitError,
    UnitState,
    UnitStatus,
    Watcher,
)

log = logging.getLogger(__name__)

STOP_GRACE_S = 3.0  # the supervisor as a whole must stop within 5 s
MAX_BACKOFF_S = 60.0


class ChildWorker:
    """One model's worker process, restarted with backoff when it dies.

    The child reports over the same sd_notify protocol it uses under systemd: the supervisor
    binds a datagram socket per worker and passes it as NOTIFY_SOCKET.
    """

    def __init__(
        self, model: ModelConfig, config_path: Path, socket_path: Path, notify_path: Path
    ) -> None:
        self.model = model
        self.config_path = config_path
        self.socket_path = socket_path
        self.notify_path = notify_path
        self.state = "stopped"
        self.reason = ""
        self.pid: int | None = None
        self.starts = 0
        self.respawns = 0  # starts after a failure (waking from sleep is not one)
        self.ready = asyncio.Event()
        self._proc: asyncio.subprocess.Process | None = None
        self._notify: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.on_change: Callable[[str], None] | None = None

    def _set(self, state: str, reason: str | None = None) -> None:
        old, self.state = self.state, state
        if reason is not None:
            self.reason = reason
        if state != old and self.on_change is not None:
            self.on_change(state)

    def running(self) -> bool:
        """Whether it is being supervised (started and not stopped)."""
        return self._task is not None and not self._stopping

    def start(self) -> None:
        """Start supervising: spawn now, respawn after crashes, until stop()."""
        self._stopping = False
        self.ready.clear()
        self._set("starting", "")  # now, not when the task first runs: the state is read at once
        self.notify_path.parent.mkdir(parents=True, exist_ok=True)
        self.notify_path.unlink(missing_ok=True)
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(self.notify_path))
        self._notify.setblocking(False)
        asyncio.get_running_loop().add_reader(self._notify.fileno(), self._on_notify)
        self._task = asyncio.create_task(self._supervise(), name=f"worker-{self.model.name}")

    def _on_notify(self) -> None:
        assert self._notify is not None
        while True:
            try:
                data = self._notify.recv(4096).decode(errors="replace")
            except BlockingIOError:
                return
            for line in data.splitlines():
                key, _, value = line.partition("=")
                if key == "READY" and value == "1":
                    self.ready.set()
                    self._set("ready", "")
                elif key == "STATUS":
                    if value.startswith("failed: "):
                        self.reason = value.removeprefix("failed: ")
                    elif value.startswith("loading"):
                        self._set("loading")

    async def _supervise(self) -> None:
        backoff = 1.0
        while True:
            rc = await self._run_once()
            if self.stopping():
                break
            self.ready.clear()
            self._set("failed", self.reason or f"worker exited with status {rc}")
            log.warning(
                "worker %s failed (%s); restarting in %.0f s", self.model.name, self.reason, backoff
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)
            self.respawns += 1

    def stopping(self) -> bool:
        """True once stop() was called."""
        return self._stopping

    async def _run_once(self) -> int:
        self._set("starting", "")
        env = {
            **os.environ,
            "NOTIFY_SOCKET": str(self.notify_path),
            "CAIRN_SUPERVISOR_PID": str(os.getpid()),  # the worker dies with us (PDEATHSIG)
        }
        env.pop("LISTEN_FDS", None)
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cairn",
            "worker",
            "--config",
            str(self.config_path),
            "--model",
            self.model.name,
            "--socket",
            str(self.socket_path),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
        )
        self.pid, self.starts = self._proc.pid, self.starts + 1
        try:
            await asyncio.wait_for(self._wait_ready_or_exit(), self.model.startup_timeout)
        except TimeoutError:
            self.reason = f"not ready after {self.model.startup_timeout:g} s"
            self._proc.kill()
        rc = await self._proc.wait()
        self.pid = None
        return rc

    async def _wait_ready_or_exit(self) -> None:
        assert self._proc is not None
        ready = asyncio.create_task(self.ready.wait())
        exited = asyncio.create_task(self._proc.wait())
        await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        exited.cancel()

    async def stop(self) -> None:
        """Stop the worker (SIGTERM, then SIGKILL after a grace period) and stop supervising."""
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._notify is not None:
            asyncio.get_running_loop().remove_reader(self._notify.fileno())
            self._notify.close()
            self._notify = None
            self.notify_path.unlink(missing_ok=True)
        self.pid = None
        self.ready.clear()
        self._set("stopped")


# systemd's words for a child's states, so the sleeper reads both backends alike.
ACTIVE_STATE = {
    "starting": "activating",
    "loading": "activating",
    "ready": "active",
    "failed": "failed",
    "stopped": "inactive",
}


class ChildUnits:
    """The `Units` interface over the standalone children, one per `cairn-model@NAME.service`."""

    def __init__(self, children: dict[str, ChildWorker]) -> None:
        self.children = children
        self._watchers: list[Watcher] = []
        self._failed: dict[str, list[asyncio.Future[None]]] = {}
        for unit, child in children.items():
            child.on_change = lambda state, unit=unit: self._changed(unit, state)

    def _changed(self, unit: str, state: str) -> None:
        if state == "failed":  # a start waiting for this one has its answer
            for fut in self._failed.get(unit, []):
                if not fut.done():
                    fut.set_result(None)
        for fn in self._watchers:
            fn(UnitState(unit, ACTIVE_STATE[state], state))

    def open(self) -> None:
        """Start supervising every child: spawn now, respawn after crashes."""
        for child in self.children.values():
            child.start()

    async def close(self) -> None:
        """Stop every child."""
        await asyncio.gather(*(child.stop() for child in self.children.values()))

    def _child(self, unit: str) -> ChildWorker:
        child = self.children.get(unit)
        if child is None:
            raise UnitError(f"{unit}: no such unit")
        return child

    async def start(self, unit: str) -> None:
        """Spawn the worker (if it is not running) and wait until it is ready."""
        child = self._child(unit)
        if not child.running():
            child.start()
        ready = asyncio.ensure_future(child.ready.wait())
        failed = asyncio.get_running_loop().create_future()
        self._failed.setdefault(unit, []).append(failed)
        try:
            done, _ = await asyncio.wait(
                {ready, failed}, timeout=child.model.startup_timeout, return_when="FIRST_COMPLETED"
            )
        finally:
            ready.cancel()
            self._failed[unit].remove(failed)
        if ready not in done:
            raise JobFailed(unit, "start", "failed" if failed in done else "timeout")

    async def stop(self, unit: str) -> None:
        """Stop the worker (SIGTERM, then SIGKILL)."""
        await self._child(unit).stop()

    async def restart(self, unit: str) -> None:
        """Stop, then start and wait for ready."""
        await self.stop(unit)
        await self.start(unit)

    async def reset_failed(self, unit: str) -> None:
        """Nothing to reset: a child has no start limit."""
        self._child(unit)

    async def state(self, unit: str) -> UnitState:
        """The child's state in systemd's words."""
        child = self._child(unit)
        return UnitState(unit, ACTIVE_STATE[child.state], child.state)

    def known(self, unit: str) -> UnitStatus:
        """The child as it is now: its state and why, its process, whether it is in backoff."""
        child = self._child(unit)
        return UnitStatus(
            UnitState(unit, ACTIVE_STATE[child.state], child.state),
            reason=None if child.state == "stopped" else child.reason,
            process=Process(child.pid, child.starts),
            spawned=child.state == "starting",
            restarting=child.state == "failed",  # its supervising task waits out a backoff
        )

    async def socket_counters(self, unit: str) -> SocketCounters:
        """Children have no socket units."""
        raise UnitError(f"{unit}: standalone workers have no socket unit")

    async def service_info(self, unit: str) -> ServiceInfo:
        """Whether the child last failed, and how often it was respawned."""
        child = self._child(unit)
        failed = child.state == "failed"
        return ServiceInfo("exit-code" if failed else "success", child.respawns, child.starts)

    def watch(self, fn: Watcher) -> None:
        """Call `fn` on every state change of a child."""
        self._watchers.append(fn)

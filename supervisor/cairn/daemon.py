"""The supervisor daemon: wires config, probe, scheduler, status API and systemd notification."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from pathlib import Path

import msgspec
from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from cairn import __version__
from cairn.components import Components, State
from cairn.config import Config
from cairn.generations import Generations
from cairn.probe import Probe, Snapshot
from cairn.sdnotify import Notifier

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 3.0  # in-flight HTTP requests get this long; the whole stop stays under 5 s


class Identity(msgspec.Struct, frozen=True):
    """Who this node is."""

    name: str
    hostname: str
    boot_id: str | None
    machine_id: str | None


def _read_id(path: str) -> str | None:
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


class Supervisor:
    """One node's daemon; everything the status API shows hangs off this object."""

    def __init__(self, config: Config, notifier: Notifier | None = None) -> None:
        self.config = config
        self.config_digest = config.digest()
        self.version = __version__
        self.identity = Identity(
            name=config.node.name,
            hostname=socket.gethostname(),
            boot_id=_read_id("/proc/sys/kernel/random/boot_id"),
            machine_id=_read_id("/etc/machine-id"),
        )
        self.notifier = notifier or Notifier()
        self.components = Components()
        self.state_dir = Path(config.node.state_dir)
        self.probe = Probe(self.state_dir, Path(config.probe.nix_profiles))
        self.snapshot: Snapshot | None = None
        self.generation: Generations | None = None
        self.generation_reason = "not read yet"
        self.probe_runs = 0
        self.probe_failures = 0
        self.started_at = time.time()
        self._started_mono = time.monotonic()

    def uptime(self) -> float:
        """Seconds since the daemon started."""
        return time.monotonic() - self._started_mono

    async def probe_once(self) -> None:
        """Take one snapshot off the loop and publish it; a failure degrades, never crashes."""
        try:
            snap = await asyncio.to_thread(self.probe.sample)
            self.generation, self.generation_reason = await asyncio.to_thread(self.probe.generation)
        except Exception as err:  # a probe bug must not take the daemon down
            self.probe_failures += 1
            log.exception("probe failed")
            self.components.set("probe", State.DEGRADED, f"last probe failed: {err}")
        else:
            self.snapshot = snap
            self.components.set("probe", State.READY)
        finally:
            self.probe_runs += 1
            self._announce()

    def _announce(self) -> None:
        waiting = sorted(self.components.not_ready())
        text = "ready" if not waiting else "waiting for " + ", ".join(waiting)
        self.notifier.send(f"STATUS={text}")

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set, then shut down cleanly."""
        from cairn.status.app import create_app  # imported here: the app imports this module

        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.components.set("api", State.STARTING, "binding")
        self.components.set("probe", State.STARTING, "waiting for the first sample")
        self.probe.start()

        runner = web.AppRunner(create_app(self), shutdown_timeout=SHUTDOWN_GRACE_S)
        await runner.setup()
        api = self.config.api
        site = web.TCPSite(runner, api.host, api.port, reuse_address=True)
        scheduler = AsyncIOScheduler()
        watchdog: asyncio.Task[None] | None = None
        try:
            await site.start()
            self.components.set("api", State.READY)
            log.info("serving on http://%s:%d/", api.host, api.port)
            # The first CPU reading needs one interval since start() primed the counters.
            scheduler.add_job(
                self.probe_once,
                "interval",
                seconds=self.config.probe.interval,
                id="probe",
                max_instances=1,
                coalesce=True,
            )
            scheduler.start()
            self.notifier.send("READY=1\nSTATUS=waiting for probe")
            watchdog = asyncio.create_task(self.notifier.watchdog())
            await stop.wait()
        finally:
            log.info("shutting down")
            self.notifier.send("STOPPING=1")
            if scheduler.running:
                scheduler.shutdown(wait=False)
            if watchdog is not None:
                watchdog.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watchdog
            await runner.cleanup()
            self.probe.stop()
            log.info("stopped")


def run(config: Config) -> int:
    """Run the daemon until SIGTERM or SIGINT; returns the process exit code."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Supervisor(config).run(stop)

    try:
        asyncio.run(main())
    except OSError as err:  # e.g. the port is taken: say so plainly
        log.error("cannot start: %s", err)
        return 1
    return 0

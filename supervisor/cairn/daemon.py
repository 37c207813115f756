"""The supervisor daemon, the composition root: builds every part, runs the scheduler and APIs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cairn import __version__, guard, operator
from cairn.auth import read_token
from cairn.background import run_in_daemon_thread
from cairn.components import Components, State
from cairn.config import Config, WorkerManager
from cairn.errors import CairnError, ConfigError, StateError
from cairn.gossip.digest import SUSPENDED, ModelDigest, NodeDigest
from cairn.gossip.digest import encode as encode_digest
from cairn.gossip.keyring import Keyring
from cairn.gossip.service import Cluster, GossipCollector
from cairn.guard import ConnectionsCollector
from cairn.identity import of_this_machine
from cairn.inference import openai
from cairn.inference.front import Inference, gpu_units, sleepables, worker_units
from cairn.inference.metrics import InferenceCollector
from cairn.inference.types import ModelState
from cairn.policy.gate import Gate, GateCollector, GateError, selected_generation
from cairn.policy.heal import (
    Check,
    DiskFull,
    GpuHot,
    HealCollector,
    Healer,
    Incidents,
    MemoryLow,
    ModelProbe,
    NoPeer,
    RestartLadder,
    Unconfirmed,
    UnitFailed,
)
from cairn.policy.power import may_suspend
from cairn.policy.sleep import Kind, Phase, Sleepable, SleepCollector, Sleeper
from cairn.policy.thermal import Reading, ThermalCollector, ThermalGuard
from cairn.state import StateFile, Store
from cairn.status.app import create_app
from cairn.status.document import StatusDocument
from cairn.system.probe import Probe, Snapshot, SnapshotCollector
from cairn.system.sdnotify import Notifier
from cairn.system.units import SystemdUnits, UnitError, Units, unit_of
from cairn.system.wol import mac_of

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 3.0  # in-flight HTTP requests get this long; the whole stop stays under 5 s
DIGEST_EVERY_S = 1.0  # a changed digest goes out within this; an unchanged one is refreshed
DIGEST_REFRESH_S = 30.0
FIRST_PROBE_MAX_S = 1.0  # the first round comes soon, whatever the interval
GATE_EVERY_S = 2.0  # how often the generation gate looks (a switch is seen within this)
POWER_EVERY_S = 10.0
SUSPEND_BACKOFF_S = (
    600.0  # after a suspend that failed  # how often an idle node asks whether it may suspend
)
MODEL_WATCH_S = 1.0  # worker states change on notify; this only refreshes /health and readiness
NOW = timedelta(0)  # a job's first run: at once


@dataclass(frozen=True)
class Job:
    """One periodic task of the daemon."""

    name: str
    tick: Callable[[], Awaitable[None]]
    every: float  # seconds between runs
    first: timedelta | None = None  # from the start to the first run; None: one interval


class Supervisor:
    """One node's daemon: builds the parts in order, each from those below; shows their views."""

    def __init__(self, config: Config, notifier: Notifier | None = None) -> None:
        self.config = config
        self.config_digest = config.digest()
        self.version = __version__
        self.identity = of_this_machine(config.node.name)
        self.notifier = notifier or Notifier()
        self.components = Components()
        self.state_dir = Path(config.node.state_dir)
        self.operator_socket = config.operator_socket()
        self.probe = Probe(self.state_dir, Path(config.probe.nix_profiles))
        self.snapshot: Snapshot | None = None
        self.probe_runs = 0
        self.probe_failures = 0
        # systemd on the system bus: for socket-activated workers and for sleepable services.
        systemd = (
            config.inference.workers is WorkerManager.SYSTEMD
            or config.sleep.services
            or config.power.enable
            or config.heal.critical_units
        )
        self.systemd = SystemdUnits() if systemd else None
        # Reads the key file: a missing or bad one stops the start here, with its reason.
        self.cluster = Cluster(config.gossip, config.node.name) if config.gossip else None
        self.api_token = read_token(config.api.token_file) if config.api.token_file else None
        self.connections = guard.ConnectionLimits.for_api()
        run_dir = config.run_dir()
        workers = worker_units(config, run_dir, self.systemd)
        services = [
            Sleepable(svc.unit, Kind.SERVICE, svc.ttl, self.systemd, svc.socket)
            for svc in config.sleep.services
            if self.systemd is not None  # always, when there are services
        ]
        self.sleeper = Sleeper(config.sleep, [*sleepables(config, workers), *services])
        heal = config.heal
        self.thermal = ThermalGuard(
            self._gpu_readings,
            workers,
            gpu_units(config),
            heal.gpu_pause_celsius,
            heal.gpu_resume_celsius,
            heal.gpu_pause_after,
        )
        self.inference = Inference(
            config,
            run_dir,
            workers,
            sleeper=self.sleeper,
            cluster=self.cluster,
            thermal=self.thermal,
        )
        self.store = Store(
            StateFile(self.state_dir / "state.json"),
            lambda error: self.components.set(
                "state", State.DEGRADED if error else State.READY, error
            ),
        )
        incidents = self.incidents = Incidents(self.store)
        self.gate = Gate(
            self.store,
            heal.confirm_window,
            self.identity.boot_id or "",
            self.probe.generation,
            self.critical_failing,
            self._start_rollback,
            on_rollback=lambda generation, detail, done: incidents.record(
                Unconfirmed.name, f"generation {generation}", detail, "rollback", done
            ),
        )
        self.ladder = self._ladder(self.systemd) if self.systemd is not None else None
        self.healer = Healer(incidents, self._checks(workers))
        self.power = "on"  # "suspended" while this node leaves the cluster to suspend
        self.mac = config.power.mac
        self._suspend_again_at = 0.0
        self._digest_sent: tuple[bytes, float] = (b"", 0.0)
        self.started_at = time.time()
        self._started_mono = time.monotonic()
        self._inflight: asyncio.Future[Snapshot] | None = None
        self._inflight_since = 0.0
        self._status_text = ""

    def _ladder(self, units: Units) -> RestartLadder:
        heal = self.config.heal
        return RestartLadder(
            units,
            backoff=(min(1.0, heal.restart_backoff_max), heal.restart_backoff_max),
            cooldown=heal.reset_cooldown,
            resets_per_hour=heal.resets_per_hour,
            hold=lambda unit: unit in self.thermal.paused_units,
        )

    def _checks(self, workers: Units) -> list[Check]:
        """The healer's checks, over the parts built before it."""
        heal, config = self.config.heal, self.config
        models = [unit_of(m.name) for m in config.models]
        systemd_workers = config.inference.workers is WorkerManager.SYSTEMD
        # A worker that hangs (stopped, deadlocked) never exits, so nothing restarts it but the
        # healer: standalone children climb the same ladder as systemd's workers.
        worker_ladder = self.ladder if systemd_workers else self._ladder(workers)
        watched = [*heal.critical_units, *(models if systemd_workers else [])]
        checks: list[Check] = []
        if self.systemd is not None and watched:
            # A critical unit that sleeps when idle must only not fail.
            sleepable = {svc.unit for svc in config.sleep.services}
            must_run = frozenset(heal.critical_units) - sleepable
            checks.append(UnitFailed(self.systemd, lambda: watched, self.ladder, must_run))
        if not systemd_workers and models:  # children restart themselves: only report
            checks.append(UnitFailed(workers, lambda: models, None))
        gate = self.gate
        checks += [
            ModelProbe(
                lambda name: self.inference.probe(name, wake=False),
                lambda: list(self.inference.models),
                worker_ladder,
            ),
            DiskFull(self.state_dir, heal.disk_min_free),
            MemoryLow(heal.memory_min_mb << 20),
            GpuHot(self._gpu_readings, heal.gpu_warn_celsius, heal.gpu_warn_memory),
            Unconfirmed(lambda: (gate.current, gate.status, gate.detail)),
        ]
        if self.cluster is not None and self.cluster.cfg.join:
            cluster = self.cluster
            checks.append(NoPeer(lambda: cluster.member.live_count() if cluster.member else 0))
        return checks

    def jobs(self) -> list[Job]:
        """The periodic work, one row per job: what runs, how often, and whether it runs here."""
        cfg, gossip = self.config, self.cluster is not None
        first_probe = min(cfg.probe.interval, FIRST_PROBE_MAX_S)  # readiness waits on it
        table = [
            (Job("power", self.power_tick, POWER_EVERY_S), gossip and cfg.power.enable),
            (Job("gossip", self.gossip_tick, DIGEST_EVERY_S, NOW), gossip),
            (Job("gate", self.gate.tick, GATE_EVERY_S, NOW), True),
            (Job("heal", self.heal_tick, cfg.heal.interval), True),
            (
                Job("probe", self.probe_once, cfg.probe.interval, timedelta(seconds=first_probe)),
                True,
            ),
            (Job("sleep", self.sleeper.tick, cfg.sleep.interval), bool(self.sleeper.units)),
            (Job("models", self.watch_models, MODEL_WATCH_S, NOW), bool(cfg.models)),
        ]
        return [job for job, runs in table if runs]

    def _gpu_readings(self) -> list[Reading]:
        snap = self.snapshot
        if snap is None:
            return []
        return [
            (
                g.index,
                g.temperature_celsius,
                g.memory_used_bytes / g.memory_total_bytes
                if g.memory_used_bytes is not None and g.memory_total_bytes
                else None,
            )
            for g in snap.gpus
        ]

    async def heal_tick(self) -> None:
        """Thermal guard first (it may stop units), then every check."""
        await self.thermal.tick()
        await self.healer.tick()

    def accepted_tokens(self) -> list[str]:
        """Bearer tokens the API takes from the network: the operator's."""
        return [self.api_token] if self.api_token else []

    def peer_keyring(self) -> Keyring | None:
        """The keys peers sign forwarded requests with (the gossip keyring), if gossip is on."""
        return self.cluster.keyring if self.cluster else None

    def uptime(self) -> float:
        """Seconds since the daemon started."""
        return time.monotonic() - self._started_mono

    def view(self) -> StatusDocument:
        """The /status document: every part's view."""
        return StatusDocument(
            node=self.identity,
            version=self.version,
            started_at=self.started_at,
            uptime_seconds=round(self.uptime(), 3),
            config_digest=self.config_digest,
            ready=self.components.ready(),
            components=self.components.snapshot(),
            probe=self.snapshot,
            generation=self.gate.generations,  # as the gate last read them (every GATE_EVERY_S)
            generation_reason=self.gate.reason,
            models=self.inference.view(),
            cluster=self.cluster.view() if self.cluster else None,
            sleep=self.sleeper.view(),
            gate=self.gate.view(),
            incidents=self.incidents.view(),
        )

    def collectors(self) -> list[Collector]:
        """Every part's metrics collector, this daemon's own first."""
        listeners = [self.connections]
        if self.cluster is not None:
            listeners.append(self.cluster.transport.limits)
        parts: list[Collector] = [
            _DaemonCollector(self),
            SnapshotCollector(lambda: self.snapshot),
            InferenceCollector(self.inference),
        ]
        if self.cluster is not None:
            parts.append(GossipCollector(self.cluster))
        return [
            *parts,
            SleepCollector(self.sleeper),
            HealCollector(self.incidents, self.ladder),
            ThermalCollector(self.thermal),
            ConnectionsCollector(listeners),
            GateCollector(self.gate),
        ]

    async def probe_once(self) -> None:
        """Take one snapshot off the loop and publish it; a failing or hung probe degrades."""
        interval = self.config.probe.interval
        if self._inflight is not None and not self._inflight.done():
            stuck = time.monotonic() - self._inflight_since
            self.components.set("probe", State.DEGRADED, f"probe stuck for {stuck:.0f} s")
            self._announce()
            return
        self._inflight = run_in_daemon_thread(self.probe.sample, "cairn-probe")
        # A round that outlives its wait still settles later; retrieve its outcome so an
        # exception there is not reported as never retrieved.
        self._inflight.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._inflight_since = time.monotonic()
        self.probe_runs += 1
        try:
            snap = await asyncio.wait_for(asyncio.shield(self._inflight), interval)
        except TimeoutError:
            log.warning("probe did not finish within %.1f s", interval)
            self.components.set("probe", State.DEGRADED, f"probe slower than {interval:g} s")
        except Exception as err:  # a probe bug must not take the daemon down
            self.probe_failures += 1
            log.exception("probe failed")
            self.components.set("probe", State.DEGRADED, f"last probe failed: {err}")
        else:
            self.snapshot = snap
            self.components.set("probe", State.READY)
        self._announce()

    async def watch_models(self) -> None:
        """Refresh worker health and the inference component's readiness."""
        await self.inference.poll_health()
        waiting = self.inference.not_ready()
        if waiting:
            detail = "; ".join(
                f"{n}: {state}: {why}" if why else f"{n}: {state}"
                for n, (state, why) in sorted(waiting.items())
            )
            failed = any(state is ModelState.FAILED for state, _ in waiting.values())
            self.components.set("inference", State.DEGRADED if failed else State.STARTING, detail)
        else:
            self.components.set("inference", State.READY)
        self._announce()

    def digest(self) -> NodeDigest:
        """The health digest this node gossips to its peers."""
        snap = self.snapshot
        models = {}
        for name, view in self.inference.view().items():
            cfg = self.config.model(name)
            assert cfg is not None
            s = view.stats
            models[name] = ModelDigest(
                str(view.state),
                cfg.slots if s.slots is None else s.slots,
                s.active or 0,
                s.queued or 0,
                cfg.queue,
            )
        gpu = snap.gpus[0] if snap and snap.gpus else None
        return NodeDigest(
            api_port=self.config.api.port,
            version=self.version,
            generation=selected_generation(self.gate.generations),
            load1=snap.load[0] if snap else 0.0,
            memory_available=snap.memory.available_bytes if snap else 0,
            memory_total=snap.memory.total_bytes if snap else 0,
            gpu_celsius=gpu.temperature_celsius if gpu else None,
            gpu_util=gpu.utilization_ratio if gpu else None,
            models=models,
            sleeping=self.sleeper.asleep(),
            incidents=len(self.incidents.open()),
            power=self.power,
            mac=self.mac,
        )

    async def gossip_tick(self) -> None:
        """Publish the digest when it changed (or has not gone out for a while); reload keys."""
        assert self.cluster is not None
        self.cluster.reload_keys()
        d = self.digest()
        body, sent_at = self._digest_sent
        now = time.monotonic()
        new = encode_digest(d)
        if new != body or now - sent_at > DIGEST_REFRESH_S:
            self.cluster.publish(new)
            self._digest_sent = (new, now)

    async def critical_failing(self) -> list[str]:
        """The critical checks that fail now: what keeps a new generation from confirmation."""
        failing = []
        for unit in self.config.heal.critical_units:
            assert self.systemd is not None
            try:
                st = await self.systemd.state(unit)
            except UnitError as err:
                failing.append(str(err))
                continue
            asleep_ok = unit in self.sleeper.units and st.active == "inactive"
            if st.active != "active" and not asleep_ok:
                failing.append(f"{unit} is {st.active}")
        if self.config.heal.probe_models:
            for name in self.inference.models:
                if why := await self.inference.probe(name):
                    failing.append(f"model {name}: {why}")
        if self.cluster is not None and self.cluster.cfg.join:
            member = self.cluster.member
            if member is None or member.live_count() < 2:
                failing.append("no peer reachable")
        return failing

    async def _start_rollback(self) -> None:
        if self.systemd is None:
            raise GateError("rollback needs systemd (this node runs standalone)")
        await self.systemd.start(self.config.heal.rollback_unit)

    async def power_tick(self) -> None:
        """Suspend when the cluster can do without this node; rejoin when it wakes."""
        assert self.cluster is not None and self.cluster.member is not None
        assert self.systemd is not None
        if self.mac is None or time.monotonic() < self._suspend_again_at:
            return  # nobody could wake it, or the last try failed a short while ago
        units = self.sleeper.units.values()
        last = max([self.inference.last_request, *(s.last_active for s in units)])
        ok, why = may_suspend(
            self.cluster.name,
            list(self.inference.models),
            time.monotonic() - last,
            self.config.power.idle_after,
            all(s.phase is Phase.ASLEEP for s in units),
            self.cluster.views(),
        )
        if not ok:
            return
        try:
            if inhibitors := await self.systemd.sleep_inhibitors():
                log.info("not suspending: sleep inhibited by %s", "; ".join(inhibitors))
                return
        except UnitError as err:
            log.warning("not suspending: cannot read logind's inhibitors: %s", err)
            self._suspend_again_at = time.monotonic() + SUSPEND_BACKOFF_S
            return
        log.warning("suspending this node: %s", why)
        self.power = SUSPENDED
        await self.gossip_tick()  # the digest says so, and carries the MAC
        self.cluster.member.leave()
        try:
            await self.systemd.start("suspend.target")  # the job ends once the machine resumed
        except UnitError as err:
            log.error("could not suspend: %s; trying again in %.0f s", err, SUSPEND_BACKOFF_S)
            self._suspend_again_at = time.monotonic() + SUSPEND_BACKOFF_S
        self.power = "on"
        self.cluster.member.resume()
        await self.gossip_tick()
        log.info("resumed; back in the cluster")

    def _announce(self) -> None:
        waiting = sorted(self.components.not_ready())
        text = "ready" if not waiting else "waiting for " + ", ".join(waiting)
        if text != self._status_text:  # probes and model checks run every second or so
            self._status_text = text
            self.notifier.send(f"STATUS={text}")

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set, then shut down cleanly."""
        self.components.set("api", State.STARTING, "binding")
        self.components.set("probe", State.STARTING, "waiting for the first sample")
        if self.config.models:
            self.components.set("inference", State.STARTING, "starting workers")
        app = create_app(self)
        app.add_subapp(openai.PREFIX, openai.create_app(self.inference.routes()))
        runner = web.AppRunner(
            app,
            shutdown_timeout=SHUTDOWN_GRACE_S,
            handler_cancellation=True,
            keepalive_timeout=guard.HEADER_TIMEOUT_S,  # also the deadline for a request's headers
        )
        ops = web.AppRunner(
            operator.create_app(self.gate),
            shutdown_timeout=SHUTDOWN_GRACE_S,
            keepalive_timeout=guard.HEADER_TIMEOUT_S,
        )
        scheduler = AsyncIOScheduler()
        watchdog: asyncio.Task[None] | None = None
        probe_started = False
        try:
            # NVML's init can take seconds on a GPU host without the persistence daemon.
            await run_in_daemon_thread(self._prepare, "cairn-start")
            probe_started = True
            if self.systemd is not None:
                await self.systemd.open()
            await self.inference.start()
            await self.sleeper.start()
            await runner.setup()
            api = self.config.api
            await guard.GuardedSite(runner, api.host, api.port, self.connections).start()
            self.components.set("api", State.READY)
            log.info("serving on http://%s:%d/", api.host, api.port)
            await ops.setup()
            await operator.serve(ops, self.operator_socket)
            log.info("operator actions on %s", self.operator_socket)
            if self.cluster is not None:
                self.components.set("gossip", State.STARTING, "binding")
                await self.cluster.start()
                self.components.set("gossip", State.READY)
                if self.config.power.enable:
                    self.mac = self.mac or mac_of(self.cluster.advertise())
                    if self.mac is None:
                        log.warning(
                            "power: no MAC for %s; this node never suspends",
                            self.cluster.advertise(),
                        )
            now = datetime.now().astimezone()
            for job in self.jobs():
                first = {} if job.first is None else {"next_run_time": now + job.first}
                scheduler.add_job(
                    job.tick,
                    "interval",
                    seconds=job.every,
                    id=job.name,
                    max_instances=1,
                    coalesce=True,
                    **first,
                )
            scheduler.start()
            if not stop.is_set():
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
            if self.cluster is not None:
                await self.cluster.stop()  # leave first: peers see "left", not "dead"
            await runner.cleanup()
            await ops.cleanup()
            await self.inference.stop()
            if self.systemd is not None:
                await self.systemd.close()
            if probe_started:
                self._release_probe()
            log.info("stopped")

    def _prepare(self) -> None:
        self.state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        self.probe.start()

    def _release_probe(self) -> None:
        # A probe thread stuck inside NVML must not see the library shut down under it;
        # the process is about to exit, which releases NVML anyway.
        if self._inflight is None or self._inflight.done():
            self.probe.stop()
        else:
            log.warning("a probe is still running; leaving NVML to process exit")


class _DaemonCollector(Collector):
    """The daemon's own metrics: its components' readiness, and its probe rounds."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup

    def collect(self) -> Iterator[Metric]:
        """Readiness per component; probe rounds attempted and failed."""
        sup = self.sup
        ready = GaugeMetricFamily(
            "cairn_component_ready", "1 when the component is ready, else 0.", labels=["component"]
        )
        for name, st in sup.components.snapshot().items():
            ready.add_metric([name], 1.0 if st.state == "ready" else 0.0)
        yield ready
        runs = CounterMetricFamily("cairn_probe_runs", "Probe rounds attempted.")
        runs.add_metric([], sup.probe_runs)
        yield runs
        fails = CounterMetricFamily("cairn_probe_failures", "Probe rounds that failed.")
        fails.add_metric([], sup.probe_failures)
        yield fails


def run(config: Config) -> int:
    """Run the daemon until SIGTERM or SIGINT; returns the process exit code."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Supervisor(config).run(stop)

    guard.raise_fd_limit()
    guard.quiet_floods()
    try:
        asyncio.run(main())
    except (ConfigError, StateError) as err:  # a key or token file, or a newer state file
        log.error("cannot start: %s", err)
        return 2  # as for a bad config: systemd does not restart it (RestartPreventExitStatus)
    except (OSError, CairnError) as err:  # e.g. a port is taken
        log.error("cannot start: %s", err)
        return 1
    return 0

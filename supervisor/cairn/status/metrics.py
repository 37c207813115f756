"""Prometheus metrics: HTTP counters plus a collector that exposes the latest probe snapshot."""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from cairn.inference.types import EngineStats, ModelState
from cairn.policy.sleep import Phase

if TYPE_CHECKING:
    from cairn.daemon import Supervisor
    from cairn.system.probe import Snapshot


def _gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"cairn_{name}", doc, labels=labels)


class NodeCollector(Collector):
    """Reads the supervisor's state at scrape time; nothing is copied between scrapes."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup

    def collect(self) -> Iterator[Metric]:
        """Yield one family per quantity."""
        sup = self.sup
        ready = _gauge("component_ready", "1 when the component is ready, else 0.", ["component"])
        for name, st in sup.components.snapshot().items():
            ready.add_metric([name], 1.0 if st.state == "ready" else 0.0)
        yield ready
        runs = CounterMetricFamily("cairn_probe_runs", "Probe rounds attempted.")
        runs.add_metric([], sup.probe_runs)
        yield runs
        fails = CounterMetricFamily("cairn_probe_failures", "Probe rounds that failed.")
        fails.add_metric([], sup.probe_failures)
        yield fails
        yield from self._snapshot()
        yield from self._models()
        yield from self._gossip()
        yield from self._sleep()
        yield from self._heal()
        yield from self._connections()
        fwd = CounterMetricFamily(
            "cairn_requests_forwarded", "Requests this node passed on to a peer's front."
        )
        fwd.add_metric([], sup.inference.forwarded)
        yield fwd
        gen = _gauge(
            "nixos_generation", "Number of the NixOS generation the system profile selects."
        )
        current = [g.number for g in sup.generation.profiles if g.current] if sup.generation else []
        if current:
            gen.add_metric([], current[0])
        yield gen

    def _connections(self) -> Iterator[Metric]:
        sup = self.sup
        listeners = [sup.connections]
        if sup.cluster is not None:
            listeners.append(sup.cluster.transport.limits)
        opened = _gauge("connections_open", "Open inbound TCP connections.", ["listener"])
        refused = CounterMetricFamily(
            "cairn_connections_refused",
            "Inbound connections closed at once: over a cap per client, or in all.",
            labels=["listener", "reason"],
        )
        for limits in listeners:
            opened.add_metric([limits.name], limits.open_total)
            for reason in ("per_client", "total"):
                refused.add_metric([limits.name, reason], limits.refused[reason])
        yield from (opened, refused)

    def _heal(self) -> Iterator[Metric]:
        sup = self.sup
        opened = _gauge("incidents_open", "Open incidents, by check.", ["check"])
        for check, n in sorted(collections.Counter(i.check for i in sup.incidents.open()).items()):
            opened.add_metric([check], n)
        fixes = CounterMetricFamily(
            "cairn_fix_attempts", "Fix attempts, by fix and check.", labels=["check", "fix"]
        )
        for (fix, check), n in sorted(sup.incidents.fix_attempts.items()):
            fixes.add_metric([check, fix], n)
        yield from (opened, fixes)
        ladder = sup.ladder
        if ladder is not None:
            restarts = CounterMetricFamily(
                "cairn_unit_restarts", "Restarts by the escalation ladder.", labels=["unit"]
            )
            resets = CounterMetricFamily(
                "cairn_unit_resets", "reset-failed after systemd's start limit.", labels=["unit"]
            )
            gave_up = _gauge("unit_given_up", "1 once the ladder left the unit stopped.", ["unit"])
            for unit in sorted(ladder.rungs):
                restarts.add_metric([unit], ladder.restarts[unit])
                resets.add_metric([unit], ladder.resets[unit])
                gave_up.add_metric([unit], 1.0 if ladder.gave_up(unit) else 0.0)
            yield from (restarts, resets, gave_up)
        paused = _gauge("gpu_workers_paused", "1 while the thermal guard pauses GPU workers.")
        paused.add_metric([], 1.0 if sup.thermal.paused_units else 0.0)
        pauses = CounterMetricFamily("cairn_gpu_pauses", "Thermal pauses of the GPU workers.")
        pauses.add_metric([], sup.thermal.pauses)
        yield from (paused, pauses)

    def _sleep(self) -> Iterator[Metric]:
        units = self.sup.sleeper.units.values()
        asleep = _gauge("unit_asleep", "1 while the sleepable unit is asleep.", ["unit"])
        sleeps = CounterMetricFamily(
            "cairn_unit_sleeps", "Times the sleeper stopped the unit.", labels=["unit", "reason"]
        )
        wakes = CounterMetricFamily("cairn_unit_wakes", "Times the unit woke.", labels=["unit"])
        latency = HistogramMetricFamily(
            "cairn_unit_wake_seconds", "From start to ready, per wake.", labels=["unit"]
        )
        for s in units:
            asleep.add_metric([s.unit], 1.0 if s.phase is Phase.ASLEEP else 0.0)
            for reason in ("idle", "memory"):
                sleeps.add_metric([s.unit, reason], s.sleeps.get(reason, 0))
            wakes.add_metric([s.unit], s.wakes)
            latency.add_metric([s.unit], s.wake_latency.cumulative(), s.wake_latency.total)
        yield from (asleep, sleeps, wakes, latency)

    def _gossip(self) -> Iterator[Metric]:
        member = self.sup.cluster.member if self.sup.cluster else None
        if member is None:
            return
        st = member.stats
        states = _gauge(
            "gossip_members", "Cluster members by state, this node included.", ["state"]
        )
        for state, n in member.counts().items():
            states.add_metric([str(state)], n)
        yield states
        aware = _gauge("gossip_awareness", "Lifeguard local health: 0 is healthy.")
        aware.add_metric([], member.awareness)
        yield aware
        for name, doc, value in (
            ("gossip_packets_received", "Gossip datagrams received.", st.packets_in),
            ("gossip_packets_sent", "Gossip datagrams sent.", st.packets_out),
            ("gossip_received_bytes", "Gossip bytes received, push-pull included.", st.bytes_in),
            ("gossip_sent_bytes", "Gossip bytes sent, push-pull included.", st.bytes_out),
            ("gossip_suspicions", "Members this node began to suspect.", st.suspicions),
            ("gossip_refutations", "Suspicions of this node it refuted.", st.refutations),
            ("gossip_deaths", "Members this node declared dead.", st.deaths),
            (
                "gossip_tcp_probe_acks",
                "Probes answered only over TCP: UDP to that peer is lossy or blocked.",
                st.tcp_acks,
            ),
            ("gossip_push_pulls", "Push-pull exchanges this node began.", st.push_pulls),
            (
                "gossip_push_pull_failures",
                "Push-pull exchanges that failed.",
                st.push_pull_failures,
            ),
        ):
            c = CounterMetricFamily(f"cairn_{name}", doc)
            c.add_metric([], value)
            yield c
        dropped = CounterMetricFamily(
            "cairn_gossip_dropped_packets", "Gossip input dropped, by reason.", labels=["reason"]
        )
        for reason, n in sorted(st.dropped.items()):
            dropped.add_metric([reason], n)
        yield dropped
        rtt = HistogramMetricFamily("cairn_gossip_probe_rtt_seconds", "Probe round-trip times.")
        rtt.add_metric([], st.rtt.cumulative(), st.rtt.total)
        yield rtt
        assert self.sup.cluster is not None
        wol = CounterMetricFamily(
            "cairn_wake_on_lan_packets", "Magic packets sent to wake suspended peers."
        )
        wol.add_metric([], self.sup.cluster.wol_sent)
        yield wol

    def _snapshot(self) -> Iterator[Metric]:
        snap = self.sup.snapshot
        if snap is None:
            return
        dur = _gauge("probe_duration_seconds", "How long the last probe round took.")
        dur.add_metric([], snap.duration_seconds)
        cpu = _gauge("cpu_usage_ratio", "Busy share of each core since the last probe.", ["cpu"])
        for i, r in enumerate(snap.cpu.usage_ratio):
            cpu.add_metric([str(i)], r)
        iso = _gauge("cpu_isolated", "1 for cores isolated with isolcpus=.", ["cpu"])
        for i in snap.cpu.isolated:
            iso.add_metric([str(i)], 1.0)
        load = _gauge("load_average", "System load average.", ["window"])
        for w, v in zip(("1m", "5m", "15m"), snap.load, strict=True):
            load.add_metric([w], v)
        yield from (dur, cpu, iso, load)
        for kind, m in (("memory", snap.memory), ("swap", snap.swap)):
            for field in ("total", "available", "used"):
                g = _gauge(f"{kind}_{field}_bytes", f"{kind.capitalize()} {field}, bytes.")
                g.add_metric([], getattr(m, f"{field}_bytes"))
                yield g
        for field in ("total", "free", "used"):
            g = _gauge(f"disk_{field}_bytes", f"State-dir filesystem {field}, bytes.", ["path"])
            g.add_metric([snap.disk.path], getattr(snap.disk, f"{field}_bytes"))
            yield g
        # psutil merges same-named devices (two NVMe drives are both "nvme"), so labels alone
        # repeat; the position within the chip keeps every series unique.
        temp = _gauge(
            "temperature_celsius", "Kernel-exposed sensor temperature.", ["chip", "sensor", "index"]
        )
        seen: dict[str, int] = {}
        for t in snap.temperatures:
            index = seen[t.chip] = seen.get(t.chip, -1) + 1
            temp.add_metric([t.chip, t.label, str(index)], t.celsius)
        yield temp
        yield from self._gpus(snap)

    def _models(self) -> Iterator[Metric]:
        state = _gauge("model_state", "1 for the model's current state.", ["model", "state"])
        stats: list[tuple[GaugeMetricFamily, Callable[[EngineStats], float | None]]] = [
            (
                _gauge("model_queue_depth", "Requests waiting for a slot.", ["model"]),
                lambda s: s.queued,
            ),
            (
                _gauge("model_active_slots", "Slots decoding a request.", ["model"]),
                lambda s: s.active,
            ),
            (_gauge("model_slots", "Slots configured.", ["model"]), lambda s: s.slots),
            (
                _gauge("model_tokens_per_second", "Recent generation rate.", ["model"]),
                lambda s: s.tokens_per_second,
            ),
        ]
        load = _gauge(
            "model_load_seconds", "How long the worker took to load its model.", ["model"]
        )
        for name, m in self.sup.inference.status().items():
            for st in ModelState:
                state.add_metric([name, st], 1.0 if m.state is st else 0.0)
            for fam, read in stats:
                if (value := read(m.stats)) is not None:
                    fam.add_metric([name], float(value))
            if m.load_seconds is not None:
                load.add_metric([name], m.load_seconds)
        yield state
        yield load
        yield from (fam for fam, _ in stats)

    def _gpus(self, snap: Snapshot) -> Iterator[Metric]:
        count = _gauge("gpus", "GPUs NVML can see.")
        count.add_metric([], len(snap.gpus))
        yield count
        fields = {
            "utilization_ratio": "GPU busy share.",
            "memory_used_bytes": "GPU memory in use, bytes.",
            "memory_total_bytes": "GPU memory, bytes.",
            "temperature_celsius": "GPU core temperature.",
            "power_watts": "GPU board power draw.",
        }
        for field, doc in fields.items():
            g = _gauge(f"gpu_{field}", doc, ["gpu", "name"])
            for gpu in snap.gpus:
                value = getattr(gpu, field)
                if value is not None:
                    g.add_metric([str(gpu.index), gpu.name], float(value))
            yield g


# `_created` series double every counter and no dashboard of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    """The registry served at /metrics; one per app, never the global default."""

    def __init__(self, sup: Supervisor) -> None:
        self.registry = CollectorRegistry()
        self.http_requests = Counter(
            "cairn_http_requests",
            "HTTP requests answered.",
            ["method", "route", "code"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "cairn_http_request_duration_seconds",
            "HTTP request handling time.",
            ["route"],
            registry=self.registry,
        )
        self.model_requests = Counter(
            "cairn_model_requests",
            "Inference requests answered, by model.",
            ["model", "route", "code"],
            registry=self.registry,
        )
        # Whole-request time as the client sees it (a stream counts until its last byte).
        self.model_duration = Histogram(
            "cairn_model_request_duration_seconds",
            "Inference request time, by model.",
            ["model", "route"],
            registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )
        Info("cairn_build", "Supervisor build.", registry=self.registry).info(
            {"version": sup.version}
        )
        ProcessCollector(namespace="cairn", registry=self.registry)
        self.registry.register(NodeCollector(sup))

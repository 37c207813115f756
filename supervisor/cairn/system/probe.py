"""The node probe: CPU, load, memory, swap, disk, temperatures, GPUs; and the NixOS generations."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import psutil
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cairn.system import generations
from cairn.system.cpus import ISOLATED_PATH, read_cpu_list
from cairn.system.generations import Generations
from cairn.system.gpu import Gpu, Nvml


class Cpu(msgspec.Struct, frozen=True):
    """Per-core busy ratio since the previous sample, and which cores are isolated."""

    count: int
    usage_ratio: list[float]
    isolated: list[int]


class Memory(msgspec.Struct, frozen=True):
    """RAM or swap in bytes."""

    total_bytes: int
    available_bytes: int
    used_bytes: int


class Disk(msgspec.Struct, frozen=True):
    """Usage of the filesystem that holds `path`."""

    path: str
    total_bytes: int
    free_bytes: int
    used_bytes: int


class Temperature(msgspec.Struct, frozen=True):
    """One kernel-exposed sensor."""

    chip: str
    label: str
    celsius: float
    high_celsius: float | None
    critical_celsius: float | None


class Snapshot(msgspec.Struct, frozen=True):
    """Everything one probe round saw."""

    taken_at: float
    duration_seconds: float
    cpu: Cpu
    load: list[float]
    memory: Memory
    swap: Memory
    disk: Disk
    temperatures: list[Temperature]
    gpus: list[Gpu]
    gpu_reason: str


def available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    """MemAvailable from /proc/meminfo."""
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no MemAvailable in {meminfo}")


def _temperatures() -> list[Temperature]:
    read = getattr(psutil, "sensors_temperatures", None)
    if read is None:
        return []
    out = []
    for chip, sensors in read().items():
        for i, s in enumerate(sensors):
            out.append(
                Temperature(
                    chip, s.label or f"{chip}{i}", s.current, s.high or None, s.critical or None
                )
            )
    return out


def busy_ratios(before: list[Any], after: list[Any]) -> list[float]:
    """Per-core busy share between two psutil.cpu_times(percpu=True) readings."""
    if len(before) != len(after):  # a core went on- or offline: no comparable baseline
        return [0.0] * len(after)
    out = []
    for a, b in zip(before, after, strict=True):
        # /proc/stat counts guest time inside user time too; psutil lists both.
        total = (sum(b) - _guest(b)) - (sum(a) - _guest(a))
        idle = (b.idle + getattr(b, "iowait", 0.0)) - (a.idle + getattr(a, "iowait", 0.0))
        out.append(min(1.0, max(0.0, 1.0 - idle / total)) if total > 0 else 0.0)
    return out


def _guest(t: Any) -> float:
    return float(getattr(t, "guest", 0.0) + getattr(t, "guest_nice", 0.0))


class Probe:
    """Takes snapshots; owns the NVML session and the CPU times of the previous sample."""

    def __init__(self, state_dir: Path, profiles_dir: Path, nvml: Nvml | None = None) -> None:
        self.state_dir = state_dir
        self.profiles_dir = profiles_dir
        self.nvml = nvml or Nvml()
        # Our own baseline: psutil.cpu_percent keeps its baseline per thread, and samples run
        # on whichever worker thread is free.
        self._cpu_times: list[Any] = []

    def start(self) -> None:
        """Take the CPU baseline (usage needs two readings) and open NVML."""
        self._cpu_times = psutil.cpu_times(percpu=True)
        self.nvml.start()

    def stop(self) -> None:
        """Release NVML."""
        self.nvml.stop()

    def sample(self) -> Snapshot:
        """Take one snapshot; blocking but short, run it off the event loop."""
        t0 = time.monotonic()
        times = psutil.cpu_times(percpu=True)
        usage = busy_ratios(self._cpu_times, times) if self._cpu_times else [0.0] * len(times)
        self._cpu_times = times
        vm, sw = psutil.virtual_memory(), psutil.swap_memory()
        du = psutil.disk_usage(str(self.state_dir))
        gpus, gpu_reason = self.nvml.sample()
        return Snapshot(
            taken_at=time.time(),
            duration_seconds=time.monotonic() - t0,
            cpu=Cpu(
                count=psutil.cpu_count() or 0,
                usage_ratio=usage,
                isolated=read_cpu_list(ISOLATED_PATH),
            ),
            load=list(os.getloadavg()),
            memory=Memory(vm.total, vm.available, vm.total - vm.available),
            swap=Memory(sw.total, sw.free, sw.used),
            disk=Disk(str(self.state_dir), du.total, du.free, du.used),
            temperatures=_temperatures(),
            gpus=gpus,
            gpu_reason=gpu_reason,
        )

    def generation(self) -> tuple[Generations | None, str]:
        """The NixOS generations, or (None, reason)."""
        return generations.read(self.profiles_dir)


def _gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"cairn_{name}", doc, labels=labels)


class SnapshotCollector(Collector):
    """The latest snapshot as gauges, read at scrape time; nothing before the first."""

    def __init__(self, latest: Callable[[], Snapshot | None]) -> None:
        self.latest = latest

    def collect(self) -> Iterator[Metric]:
        """One family per quantity."""
        snap = self.latest()
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

"""The node probe: CPU, load, memory, swap, disk, temperatures, GPUs; and the NixOS generations."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import msgspec
import psutil

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

"""Node probe: available memory, a real snapshot of this machine."""

from __future__ import annotations

import threading
import time
from collections import namedtuple
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from cairn.system.gpu import Nvml
from cairn.system.probe import Probe, available_bytes, busy_ratios


def test_available_memory_is_read(tmp_path: Path) -> None:
    assert available_bytes(Path("/proc/meminfo")) > 0
    fake = tmp_path / "meminfo"
    fake.write_text("MemTotal:  100 kB\nMemAvailable:   42 kB\n")
    assert available_bytes(fake) == 42 * 1024


class NoDriver:
    """Stands in for pynvml on a machine without the NVIDIA driver."""

    def nvmlInit(self) -> None:
        raise OSError("libnvidia-ml.so.1: cannot open shared object file")


def test_snapshot_of_this_machine(tmp_path: Path) -> None:
    probe = Probe(tmp_path, tmp_path / "nix", Nvml(NoDriver()))
    probe.start()
    snap = probe.sample()
    probe.stop()
    assert snap.cpu.count == psutil.cpu_count()
    assert len(snap.cpu.usage_ratio) == snap.cpu.count
    assert all(0.0 <= r <= 1.0 for r in snap.cpu.usage_ratio)
    assert snap.memory.total_bytes == psutil.virtual_memory().total
    assert 0 < snap.memory.available_bytes <= snap.memory.total_bytes
    assert snap.disk.path == str(tmp_path) and snap.disk.free_bytes > 0
    assert len(snap.load) == 3
    assert snap.gpus == [] and "libnvidia-ml" in snap.gpu_reason


Times = namedtuple("Times", "user system idle iowait")


def test_busy_ratios_from_cpu_times() -> None:
    before = [Times(10, 0, 90, 0), Times(0, 0, 100, 0)]
    after = [Times(40, 10, 140, 10), Times(0, 0, 100, 0)]  # core 0: 40 busy of 100; core 1: idle
    assert busy_ratios(before, after) == [pytest.approx(0.4), 0.0]
    assert busy_ratios(before, after[:1]) == [0.0]  # hotplug: no baseline


def test_usage_is_seen_from_any_thread(tmp_path: Path) -> None:
    # Regression: psutil.cpu_percent keeps its baseline per thread, so a sample taken on
    # another worker thread read 0 % on a busy machine.
    probe = Probe(tmp_path, tmp_path / "nix", Nvml(NoDriver()))
    probe.start()
    stop = time.monotonic() + 0.5
    spinner = threading.Thread(
        target=lambda: [None for _ in iter(lambda: time.monotonic() < stop, False)]
    )
    spinner.start()
    spinner.join()
    with ThreadPoolExecutor(1) as pool:
        snap = pool.submit(probe.sample).result()
    assert max(snap.cpu.usage_ratio) > 0.3

"""NVML reading against a fake NVML library (no GPU exists here); the real path is the same code."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from cairn.system.gpu import Nvml


class NotSupported(Exception):
    """Like pynvml.NVMLError_NotSupported."""


class FakeNvml:
    """Two boards: a full one and one whose power sensor is not supported; old bytes names."""

    NVML_TEMPERATURE_GPU = 0

    def __init__(self, count: int = 2) -> None:
        self.count = count
        self.shut = False

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        self.shut = True

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetName(self, h: int) -> Any:
        return "NVIDIA GeForce RTX 4070" if h == 0 else b"Tesla T4"

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return f"GPU-{h}"

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        return SimpleNamespace(gpu=37, memory=10)

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        return SimpleNamespace(used=1 << 30, total=12 << 30, free=11 << 30)

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        return 64

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        if h == 1:
            raise NotSupported("Not Supported")
        return 115_250  # milliwatts


def test_reads_every_gpu_in_base_units() -> None:
    nv = Nvml(FakeNvml())
    nv.start()
    gpus, reason = nv.sample()
    assert reason == ""
    first, second = gpus
    assert first.name == "NVIDIA GeForce RTX 4070" and first.uuid == "GPU-0"
    assert first.utilization_ratio == 0.37
    assert (first.memory_used_bytes, first.memory_total_bytes) == (1 << 30, 12 << 30)
    assert first.temperature_celsius == 64.0 and first.power_watts == 115.25
    assert second.name == "Tesla T4" and second.power_watts is None


def test_no_gpu_is_a_reason_not_an_error() -> None:
    nv = Nvml(FakeNvml(count=0))
    nv.start()
    assert nv.sample() == ([], "NVML found no GPU")


def test_missing_driver_is_a_reason() -> None:
    class Broken(FakeNvml):
        def nvmlInit(self) -> None:
            raise OSError("NVML Shared Library Not Found")

    nv = Nvml(Broken())
    nv.start()
    gpus, reason = nv.sample()
    assert gpus == [] and reason == "NVML unavailable: NVML Shared Library Not Found"


def test_real_pynvml_without_driver_gives_a_reason() -> None:
    # The real library on this machine: no NVIDIA driver, so init fails and we say why.
    nv = Nvml()
    nv.start()
    gpus, reason = nv.sample()
    nv.stop()
    if gpus:  # a machine with a GPU: the same code read real boards
        assert all(g.memory_total_bytes for g in gpus)
    else:
        assert reason.startswith("NVML unavailable")


def test_stop_shuts_nvml_down_once() -> None:
    fake = FakeNvml()
    nv = Nvml(fake)
    nv.start()
    nv.stop()
    nv.stop()
    assert fake.shut


def test_a_lost_gpu_does_not_hide_the_others() -> None:
    class OneLost(FakeNvml):
        def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
            if i == 1:
                raise NotSupported("GPU is lost")
            return i

    nv = Nvml(OneLost())
    nv.start()
    gpus, reason = nv.sample()
    assert [g.index for g in gpus] == [0]
    assert reason == "GPU 1: GPU is lost"

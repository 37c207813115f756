"""NVIDIA GPUs through NVML (`pynvml` from nvidia-ml-py); no GPU is a reason, not a crash."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

log = logging.getLogger(__name__)
T = TypeVar("T")


class Gpu(msgspec.Struct, frozen=True):
    """One GPU's sample; a field NVML does not support on this board is None."""

    index: int
    name: str
    uuid: str | None
    utilization_ratio: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    temperature_celsius: float | None
    power_watts: float | None


class Nvml:
    """Owns the NVML session; `sample()` returns (gpus, reason-when-empty)."""

    def __init__(self, nvml: Any | None = None) -> None:
        self._nvml = nvml
        self._ready = False
        self.reason = ""

    def start(self) -> None:
        """Initialise NVML once; remember why not when it fails."""
        try:
            if self._nvml is None:
                import pynvml

                self._nvml = pynvml
            self._nvml.nvmlInit()
            self._ready = True
        except Exception as err:  # NVMLError subclasses, or an OSError from the loader
            self.reason = f"NVML unavailable: {err}"
            log.info("%s", self.reason)

    def stop(self) -> None:
        """Shut NVML down if it was started."""
        if self._ready and self._nvml is not None:
            self._ready = False
            try:
                self._nvml.nvmlShutdown()
            except Exception as err:  # shutting down must not raise during our own shutdown
                log.warning("nvmlShutdown failed: %s", err)

    def sample(self) -> tuple[list[Gpu], str]:
        """One reading of every GPU it can read, and what went wrong ("" when nothing did)."""
        if not self._ready or self._nvml is None:
            return [], self.reason or "NVML not started"
        nv = self._nvml
        try:
            count = nv.nvmlDeviceGetCount()
        except Exception as err:
            return [], f"NVML error: {err}"
        if count == 0:
            return [], "NVML found no GPU"
        gpus, problems = [], []
        for i in range(count):
            try:
                gpus.append(self._one(nv, i))
            except Exception as err:  # one lost board must not hide the others
                problems.append(f"GPU {i}: {err}")
        return gpus, "; ".join(problems)

    @staticmethod
    def _one(nv: Any, index: int) -> Gpu:
        handle = nv.nvmlDeviceGetHandleByIndex(index)

        def opt(fn: Callable[[], T]) -> T | None:
            try:
                return fn()
            except Exception:  # NVMLError_NotSupported and friends: the board lacks the sensor
                return None

        name = opt(lambda: nv.nvmlDeviceGetName(handle))
        util = opt(lambda: nv.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0)
        mem = opt(lambda: nv.nvmlDeviceGetMemoryInfo(handle))
        temp = opt(lambda: float(nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU)))
        power = opt(lambda: nv.nvmlDeviceGetPowerUsage(handle) / 1000.0)
        return Gpu(
            index=index,
            name=_text(name) or f"GPU {index}",
            uuid=_text(opt(lambda: nv.nvmlDeviceGetUUID(handle))),
            utilization_ratio=util,
            memory_used_bytes=None if mem is None else int(mem.used),
            memory_total_bytes=None if mem is None else int(mem.total),
            temperature_celsius=temp,
            power_watts=power,
        )


def _text(value: str | bytes | None) -> str | None:
    # Older NVML bindings return bytes.
    return value.decode() if isinstance(value, bytes) else value

"""Thermal guard: a GPU hot for too long pauses the GPU workers until it has cooled.

Readings come from a callable (the probe's NVML snapshot on a real node; a test passes its own,
there being no GPU here). At or above `pause_celsius` for `sustain_s` on the hottest GPU, the
units of models that offload to the GPU are stopped and marked paused: the front does not wake
them and routes their requests to peers. At or below `resume_celsius` the pause ends and the
units that were running are started again; the others wake on their next request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cairn.system.units import UnitError, Units

log = logging.getLogger(__name__)

Reading = tuple[int, float | None, float | None]  # (gpu index, °C, memory used ratio)


class ThermalGuard:
    """Pauses GPU workers while the GPU is too hot."""

    def __init__(
        self,
        readings: Callable[[], list[Reading]],
        units: Units,
        gpu_units: list[str],
        pause_celsius: float,
        resume_celsius: float,
        sustain_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.readings = readings
        self.units = units
        self.gpu_units = gpu_units
        self.pause_celsius = pause_celsius
        self.resume_celsius = resume_celsius
        self.sustain_s = sustain_s
        self.clock = clock
        self.paused_units: set[str] = set()  # the front reads this (the same set object)
        self.pauses = 0
        self._hot_since: float | None = None
        self._were_running: list[str] = []

    def hottest(self) -> float | None:
        """The hottest GPU's temperature, or None without readings."""
        temps = [c for _, c, _ in self.readings() if c is not None]
        return max(temps, default=None)

    async def tick(self) -> None:
        """One look at the temperatures: pause, keep paused, or resume."""
        hottest = self.hottest()
        if hottest is None or not self.gpu_units:
            return
        now = self.clock()
        if self.paused_units:
            if hottest <= self.resume_celsius:
                await self._resume(hottest)
            return
        if hottest < self.pause_celsius:
            self._hot_since = None
            return
        if self._hot_since is None:
            self._hot_since = now
            log.warning("GPU at %.0f °C: pausing its workers after %.0f s", hottest, self.sustain_s)
        if now - self._hot_since >= self.sustain_s:
            await self._pause(hottest)

    async def _pause(self, hottest: float) -> None:
        self.paused_units.update(self.gpu_units)
        self.pauses += 1
        self._were_running = []
        log.error(
            "GPU at %.0f °C for %.0f s: pausing %s until %.0f °C",
            hottest,
            self.sustain_s,
            ", ".join(self.gpu_units),
            self.resume_celsius,
        )
        for unit in self.gpu_units:
            try:
                if (await self.units.state(unit)).running:
                    self._were_running.append(unit)
                await self.units.stop(unit)
            except UnitError as err:
                log.error("could not pause %s: %s", unit, err)

    async def _resume(self, hottest: float) -> None:
        log.warning("GPU cooled to %.0f °C: resuming %s", hottest, ", ".join(self.gpu_units))
        self.paused_units.clear()
        self._hot_since = None
        for unit in self._were_running:
            try:
                await self.units.start(unit)
            except UnitError as err:
                log.error("could not resume %s: %s", unit, err)
        self._were_running = []


class ThermalCollector(Collector):
    """The thermal guard's metrics, read at scrape time."""

    def __init__(self, guard: ThermalGuard) -> None:
        self.guard = guard

    def collect(self) -> Iterator[Metric]:
        """Paused now, and pauses so far."""
        paused = GaugeMetricFamily(
            "cairn_gpu_workers_paused", "1 while the thermal guard pauses GPU workers."
        )
        paused.add_metric([], 1.0 if self.guard.paused_units else 0.0)
        pauses = CounterMetricFamily("cairn_gpu_pauses", "Thermal pauses of the GPU workers.")
        pauses.add_metric([], self.guard.pauses)
        yield from (paused, pauses)

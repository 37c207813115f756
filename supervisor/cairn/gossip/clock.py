"""The two seams between the protocol and the world: a clock and a transport."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

Addr = tuple[str, int]


class Timer(Protocol):
    """A scheduled callback that can be cancelled."""

    def cancel(self) -> None:
        """Do not run it."""


class Clock(Protocol):
    """Monotonic time for timers, wall time for packet stamps."""

    def now(self) -> float:
        """Monotonic seconds."""

    def wall(self) -> float:
        """Seconds since the epoch."""

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        """Run `fn` after `delay` seconds."""


class Transport(Protocol):
    """Datagrams for the protocol, request/response streams for push-pull and TCP probes."""

    def send(self, addr: Addr, data: bytes) -> None:
        """Send one datagram; loss is the protocol's problem."""

    def exchange(
        self,
        addr: Addr,
        data: bytes,
        done: Callable[[bytes | None], None],
        timeout: float | None = None,
    ) -> None:
        """Send `data` on a stream and call `done` with the reply, or None on any failure.

        `timeout` (seconds) shortens the transport's own stream timeout for this exchange.
        """


class LoopClock:
    """The real clock: asyncio's loop for timers."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def now(self) -> float:
        """The loop's monotonic time."""
        return self.loop.time()

    def wall(self) -> float:
        """time.time()."""
        return time.time()

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        """loop.call_later."""
        return self.loop.call_later(max(0.0, delay), fn)

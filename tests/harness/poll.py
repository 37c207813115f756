"""Poll a condition until it holds or a deadline passes: the one polling helper of the tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from .errors import HarnessError

T = TypeVar("T")


def wait_until(
    probe: Callable[[], T | None],
    timeout: float,
    *,
    what: str,
    interval: float = 0.05,
) -> T:
    """Call probe until it returns a truthy value and return it; raise after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise HarnessError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)

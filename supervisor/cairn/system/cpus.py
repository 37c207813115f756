"""The kernel's CPU lists: the format ('0-2,5,7-8') and the sysfs files that use it."""

from __future__ import annotations

from pathlib import Path

ISOLATED_PATH = Path("/sys/devices/system/cpu/isolated")
ONLINE_PATH = Path("/sys/devices/system/cpu/online")


def parse_cpu_list(text: str) -> list[int]:
    """Parse the kernel's CPU list format ('0-2,5,7-8') into sorted core numbers."""
    cores: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        start, end = int(lo), int(hi or lo)
        if end < start:
            raise ValueError(f"descending range {part!r}")
        cores.update(range(start, end + 1))
    return sorted(cores)


def read_cpu_list(path: Path = ISOLATED_PATH) -> list[int]:
    """A CPU list file (by default the cores isolcpus= took away); [] when none or unknown."""
    try:
        return parse_cpu_list(path.read_text())
    except (OSError, ValueError):
        return []

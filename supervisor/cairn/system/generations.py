"""NixOS generations as the node sees them: system profiles, current and booted system."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path

import msgspec

_LINK = re.compile(r"^system-(\d+)-link$")


class Generation(msgspec.Struct, frozen=True):
    """One `system-N-link` profile; `current` marks the one the system profile selects."""

    number: int
    path: str
    created: str
    current: bool
    booted: bool


class Generations(msgspec.Struct, frozen=True):
    """The node's NixOS systems; `current`/`booted` are store paths or None."""

    current: str | None
    booted: str | None
    profiles: list[Generation]


def _target(link: Path) -> str | None:
    try:
        return os.path.realpath(link, strict=True)
    except OSError:
        return None


def _profile_number(profiles_dir: Path) -> int | None:
    """Number of the generation the `system` profile link points at (system -> system-N-link)."""
    try:
        m = _LINK.match(os.readlink(profiles_dir / "system"))
    except OSError:
        return None
    return int(m[1]) if m else None


def read(profiles_dir: Path, run_dir: Path = Path("/run")) -> tuple[Generations | None, str]:
    """Read the generations; (None, reason) when this is not a NixOS system."""
    if not (run_dir / "current-system").exists():
        return None, f"{run_dir / 'current-system'} does not exist: not a NixOS system"
    if not profiles_dir.is_dir():
        return None, f"{profiles_dir} does not exist"
    current = _target(run_dir / "current-system")
    booted = _target(run_dir / "booted-system")
    # "Current" is the one generation the system profile points at: several generations may
    # share a store path (a rollback then a re-switch), so comparing paths would mark several.
    selected = _profile_number(profiles_dir)
    found: list[Generation] = []
    for entry in profiles_dir.iterdir():
        m = _LINK.match(entry.name)
        target = _target(entry) if m else None
        if m is None or target is None:
            continue
        number = int(m[1])
        created = datetime.fromtimestamp(entry.lstat().st_mtime, UTC).isoformat()
        found.append(Generation(number, target, created, number == selected, target == booted))
    found.sort(key=lambda g: g.number)
    return Generations(current, booted, found), ""

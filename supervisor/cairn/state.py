"""What the node must remember across restarts, in one JSON file written atomically.

Write to a temporary file in the same directory, fsync it, rename it over the old one, fsync
the directory: a supervisor killed at any moment leaves either the old state or the new one.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import msgspec

log = logging.getLogger(__name__)

INCIDENTS_KEPT = 200  # closed incidents kept in the history, newest last


class Window(msgspec.Struct, frozen=True):
    """A confirm window: `generation` became current at `opened` (Unix time)."""

    generation: int
    opened: float
    deadline: float
    boot_id: str = ""  # the boot it was opened in


class Rollback(msgspec.Struct, frozen=True):
    """A rollback asked of the privileged helper: from a failed generation to a confirmed one."""

    source: int
    target: int
    requested: float  # Unix time
    manual: bool = False
    attempts: int = 1  # times the helper was asked


class Incident(msgspec.Struct):
    """A problem a check found about one subject: open until the check passes again."""

    id: str
    check: str
    subject: str
    since: float  # Unix time
    detail: str
    closed: float | None = None
    fix: str = ""  # the fix tied to it and whether it runs by itself, e.g. "restart (automatic)"
    fixes: list[str] = []  # what was tried, in order (the newest FIXES_KEPT)


class State(msgspec.Struct):
    """Everything in the state file."""

    version: int = 1
    confirmed: list[int] = []
    bad: list[int] = []
    window: Window | None = None
    rollback: Rollback | None = None
    incidents: list[Incident] = []
    incident_seq: int = 0


class Store:
    """The state in memory and its file: whoever changes `state` calls `save()`."""

    def __init__(self, file: StateFile) -> None:
        self.file = file
        self.state = file.load()

    def save(self) -> None:
        """Write the state out (atomically)."""
        self.file.save(self.state)


class StateFile:
    """The state on disk: loaded once, saved after every change."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> State:
        """The saved state; a fresh one if there is none. A damaged file is kept aside."""
        try:
            return msgspec.json.decode(self.path.read_bytes(), type=State)
        except FileNotFoundError:
            return State()
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            aside = self.path.with_suffix(".damaged")
            log.error("state file %s is damaged (%s); moved to %s", self.path, err, aside)
            with contextlib.suppress(OSError):
                self.path.replace(aside)
            return State()

    def save(self, state: State) -> None:
        """Write, fsync, rename, fsync the directory."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        data = msgspec.json.format(msgspec.json.encode(state), indent=2) + b"\n"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dirfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)

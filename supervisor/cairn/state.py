"""What the node must remember across restarts, in one JSON file written atomically.

Write to a temporary file in the same directory, fsync it, rename it over the old one, fsync
the directory: a supervisor killed at any moment leaves either the old state or the new one.
A change becomes the state in memory only once it is on disk (`Store.save`): a decision the
disk refused (full, read-only, failing) is neither acted on nor shown as made.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import msgspec

from cairn.errors import StateError
from cairn.files import NotASmallFile, read_small

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1  # a file of a higher version is refused, never read in part
INCIDENTS_KEPT = 200  # closed incidents kept in the history, newest last
MAX_BYTES = 16 << 20  # a state file is a few hundred KiB at most; a larger one is not read


# forbid_unknown_fields on each: a field this version does not know is damage.
class Window(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A confirm window: `generation` became current at `opened` (Unix time)."""

    generation: int
    opened: float
    deadline: float
    boot_id: str = ""  # the boot it was opened in


class Rollback(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A rollback asked of the privileged helper: from the running generation to a confirmed one.

    It stays in the file until the target runs, or the gate gives up on it (a bounded number
    of tries): the helper, started asynchronously, always finds it there.
    """

    source: int
    target: int
    requested: float  # Unix time
    manual: bool = False
    attempts: int = 1  # times the helper was asked


class Incident(msgspec.Struct, forbid_unknown_fields=True):
    """A problem a check found about one subject: open until the check passes again."""

    id: str
    check: str
    subject: str
    since: float  # Unix time
    detail: str
    closed: float | None = None
    fix: str = ""  # the fix tied to it and whether it runs by itself, e.g. "restart (automatic)"
    fixes: list[str] = []  # what was tried, in order (the newest FIXES_KEPT)


class State(msgspec.Struct, forbid_unknown_fields=True):
    """Everything in the state file."""

    version: int = SCHEMA_VERSION
    confirmed: list[int] = []
    bad: list[int] = []
    window: Window | None = None
    rollback: Rollback | None = None
    incidents: list[Incident] = []
    incident_seq: int = 0


class _Version(msgspec.Struct):
    """Only the version, read before anything else."""

    version: int = SCHEMA_VERSION


class Damaged(StateError):
    """The state file is not a state file of any version; the message says why."""


class Store:
    """The state in memory and its file: a change is saved first, then becomes the state."""

    def __init__(
        self, file: StateFile, on_save: Callable[[str], None] = lambda error: None
    ) -> None:
        self.file = file
        self.state = file.load()
        self.error = ""  # why the last save failed; empty once one succeeded
        self.on_save = on_save  # told after every save: the error, or "" (readiness)

    def save(self, state: State | None = None) -> bool:
        """Write `state` (default: the one in memory) and make it the state; False if refused."""
        new = self.state if state is None else state
        try:
            self.file.save(new)
        except OSError as err:
            if not self.error:  # the gate retries every tick: say it once
                log.error("cannot save the state to %s: %s", self.file.path, err)
            self.error = f"cannot write {self.file.path}: {err.strerror or err}"
        else:
            if self.error:
                log.warning("the state is saved to %s again", self.file.path)
            self.error = ""
            self.state = new
        self.on_save(self.error)
        return not self.error


class StateFile:
    """The state on disk: loaded once, saved after every change."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> State | None:
        """The saved state, None if there is none; raises StateError (Damaged, or newer)."""
        try:
            data = self._read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise StateError(f"cannot read the state file {self.path}: {err.strerror}") from None
        try:
            version = msgspec.json.decode(data, type=_Version).version
            if version > SCHEMA_VERSION:
                raise StateError(
                    f"the state file {self.path} is of version {version}, newer than this"
                    f" Cairn's {SCHEMA_VERSION}: refusing to read it in part (a newer Cairn"
                    " wrote it; run that one, or move the file away to start afresh)"
                )
            return msgspec.json.decode(data, type=State)
        except (ValueError, RecursionError) as err:  # not JSON, not UTF-8, wrong shape, too deep
            raise Damaged(f"the state file {self.path} is damaged: {err}") from None

    def _read_bytes(self) -> bytes:
        """The file's bytes, read only from a plain file of sane size.

        The root helper reads this file from a directory the `cairn` user owns: a link (to
        /etc/shadow, say), a FIFO (which would block it) or a huge file is refused, not read.
        """
        try:
            return read_small(self.path, MAX_BYTES, follow_links=False)
        except NotASmallFile as err:
            raise Damaged(f"the state file {err}") from None

    def load(self) -> State:
        """The saved state; a fresh one if there is none, or it is damaged (then kept aside)."""
        try:
            return self.read() or State()
        except Damaged as err:
            aside = self.path.with_suffix(".damaged")
            log.error("%s; moved to %s, starting from a fresh state", err, aside)
            with contextlib.suppress(OSError):
                self.path.replace(aside)
            return State()

    def save(self, state: State) -> None:
        """Write, fsync, rename, fsync the directory; raises OSError, leaving the old file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One fixed name: a save cut short by a crash leaves one file the next save reuses.
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        data = msgspec.json.format(msgspec.json.encode(state), indent=2) + b"\n"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()  # what was written of it takes space a full disk lacks
            raise
        dirfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)

"""Ownership records, the sweep of leftovers from crashed runs, and signal-safe teardown."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import Any

from . import cgroups, names, netns
from .errors import HarnessError, Terminated

log = logging.getLogger(__name__)

NSPAWN_PROPAGATE = Path("/run/systemd/nspawn/propagate")
_BLOCKED = {signal.SIGINT, signal.SIGTERM}


@contextmanager
def global_lock() -> Iterator[None]:
    """Serialise cluster-id allocation and sweeping across test processes."""
    names.STATE_ROOT.mkdir(parents=True, exist_ok=True)
    with open(names.STATE_ROOT / "lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def owner_token(pid: int | None = None) -> str:
    """Return "pid:starttime", which identifies a process even across pid reuse."""
    pid = os.getpid() if pid is None else pid
    stat = Path(f"/proc/{pid}/stat").read_text()
    start = stat.rpartition(")")[2].split()[19]
    return f"{pid}:{start}"


def owner_alive(token: str) -> bool:
    """Return whether the process named by an owner token still runs."""
    try:
        return owner_token(int(token.split(":")[0])) == token
    except (OSError, ValueError, IndexError):
        return False


def nspawn_processes() -> dict[int, str]:
    """Map pid to machine name for every running harness nspawn."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv[0].endswith(b"systemd-nspawn"):
            continue
        for arg in argv:
            if arg.startswith(f"--machine={names.PREFIX}-".encode()):
                found[int(entry.name)] = arg.partition(b"=")[2].decode()
    return found


def leftovers(cid: int | None = None) -> list[str]:
    """List harness resources on this host (of cluster cid only, when given)."""
    found = [f"netns {n}" for n in netns.list_netns()]
    found += [f"link {n}" for n in netns.host_links()]
    found += [f"nspawn {m} (pid {p})" for p, m in nspawn_processes().items()]
    found += [f"cgroup {p}" for p in cgroups.leftovers()]
    if names.STATE_ROOT.is_dir():
        found += [f"state {p}" for p in names.STATE_ROOT.glob(f"{names.PREFIX}-*")]
    if NSPAWN_PROPAGATE.is_dir():
        found += [f"propagate {p}" for p in NSPAWN_PROPAGATE.glob(f"{names.PREFIX}-*")]
    return [f for f in found if _matches(f, cid)]


def _matches(entry: str, cid: int | None) -> bool:
    """Return whether a leftovers() entry is a harness resource of cluster cid."""
    name = Path(entry.split()[1]).name
    found = names.cluster_id_of(name)
    return found is not None and (cid is None or found == cid)


def stale_clusters() -> set[int]:
    """Return ids of clusters whose owning process is gone (call under global_lock)."""
    stale = set()
    for entry in leftovers():
        cid = names.cluster_id_of(Path(entry.split()[1]).name)
        if cid is not None and not owner_alive(_read_owner(cid)):
            stale.add(cid)
    return stale


def _read_owner(cid: int) -> str:
    """Return the owner token recorded for cluster cid, or "" if none."""
    try:
        return (names.STATE_ROOT / names.cluster_name(cid) / "owner").read_text().strip()
    except OSError:
        return ""


def sweep() -> list[str]:
    """Remove everything left by crashed runs; return what was removed."""
    with global_lock():
        return sweep_locked()


def sweep_locked() -> list[str]:
    """Sweep while the caller already holds global_lock."""
    removed: list[str] = []
    for cid in sorted(stale_clusters()):
        gone = leftovers(cid)
        log.warning("sweeping leftovers of crashed cluster %s: %s", cid, gone)
        destroy(cid, list(nspawn_processes_of(cid)))
        removed += gone
    return removed


def nspawn_processes_of(cid: int) -> dict[int, str]:
    """Return the harness nspawn processes belonging to cluster cid."""
    return {p: m for p, m in nspawn_processes().items() if names.cluster_id_of(m) == cid}


def destroy(cid: int, pids: list[int], timeout: float = 10.0) -> None:
    """Stop the given nspawn pids and delete every resource of cluster cid."""
    errors: list[str] = []
    best_effort(errors, stop_processes, pids, timeout)
    for path in cgroups.leftovers():
        if names.cluster_id_of(path.name) == cid:
            best_effort(errors, cgroups.kill, path)
            best_effort(errors, cgroups.remove, path)
    for name in netns.list_netns():
        if names.cluster_id_of(name) == cid:
            best_effort(errors, netns.delete_netns, name)
    best_effort(errors, netns.delete_link, names.host_link(cid))
    for path in NSPAWN_PROPAGATE.glob(f"{names.cluster_name(cid)}-*"):
        shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(names.STATE_ROOT / names.cluster_name(cid), ignore_errors=True)
    if errors:
        raise HarnessError(f"cleaning up cluster {cid}: {'; '.join(errors)}")


def best_effort(errors: list[str], step: Callable[..., object], *args: Any) -> None:
    """Run one cleanup step; on failure log it, record it in errors and carry on."""
    try:
        step(*args)
    except Exception as exc:  # a failed step must not stop the rest
        log.warning("cleanup step %s%r failed: %s", step.__name__, args, exc)
        errors.append(f"{step.__name__}: {exc}")


def stop_processes(pids: list[int], timeout: float) -> None:
    """SIGTERM each pid (nspawn powers its container off), SIGKILL what outlives timeout."""
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while (alive := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in alive:
        log.warning("nspawn %s ignored SIGTERM for %.0f s, killing it", pid, timeout)
        _signal(pid, signal.SIGKILL)
    while [p for p in alive if _alive(p)]:
        time.sleep(0.02)


def _signal(pid: int, sig: signal.Signals) -> None:
    """Send sig to pid, ignoring a process that is already gone."""
    with suppress(ProcessLookupError):
        os.kill(pid, sig)


def _alive(pid: int) -> bool:
    """Return whether pid exists and is not a zombie (its parent reaps it later)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back while tearing down; they are delivered afterwards."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class SigtermGuard:
    """While any cluster is live, turn SIGTERM into an exception so teardown runs."""

    def __init__(self) -> None:
        """Start with no live clusters and no handler installed."""
        self._users = 0
        self._installed = False
        self._previous: Any = None

    def acquire(self) -> None:
        """Install the handler for the first live cluster (main thread only)."""
        self._users += 1
        if self._users == 1 and _in_main_thread():
            self._previous = signal.signal(signal.SIGTERM, _raise_terminated)
            self._installed = True

    def release(self) -> None:
        """Restore the previous handler when the last live cluster is gone."""
        self._users -= 1
        if self._users == 0 and self._installed and _in_main_thread():
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False


def _in_main_thread() -> bool:
    """Return whether signal handlers can be installed from here."""
    return threading.current_thread() is threading.main_thread()


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    """Signal handler: unwind the stack so context managers tear clusters down."""
    raise Terminated(f"signal {signum} received")


SIGTERM_GUARD = SigtermGuard()

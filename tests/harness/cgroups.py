"""Give each nspawn its own cgroup so containers never share nspawn's payload cgroup."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import time
from pathlib import Path

from . import names

log = logging.getLogger(__name__)

# With --keep-unit and no systemd on the host, nspawn puts the container in
# "<own cgroup>/payload"; two nodes started from one cgroup would share it.


def _mounts() -> list[tuple[Path, str]]:
    """Return (mount point, hierarchy key) of the cgroup2 and name=systemd mounts."""
    found: list[tuple[Path, str]] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype, _source, options = [*right.split(), "", ""][:3]
        mountpoint = Path(left.split()[4])
        if fstype == "cgroup2":
            found.append((mountpoint, ""))
        elif fstype == "cgroup" and "name=systemd" in options.split(","):
            found.append((mountpoint, "name=systemd"))
    return found


def _own_paths() -> dict[str, str]:
    """Map hierarchy key ("" for v2, "name=systemd") to this process's cgroup path."""
    paths = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        paths[controllers] = path
    return paths


def parents() -> list[Path]:
    """Return the directories under which node cgroups are created."""
    own = _own_paths()
    return [mount / own[key].lstrip("/") for mount, key in _mounts() if key in own]


def create(name: str) -> list[Path]:
    """Create cgroup name in every relevant hierarchy and return their paths."""
    paths = [parent / name for parent in parents()]
    for path in paths:
        path.mkdir(exist_ok=True)
    return paths


def kill(path: Path) -> None:
    """SIGKILL every process left in cgroup path and its children."""
    if not path.is_dir():
        return
    if (path / "cgroup.kill").exists():
        (path / "cgroup.kill").write_text("1")
        return
    for procs in path.rglob("cgroup.procs"):
        for pid in procs.read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def remove(path: Path, timeout: float = 5.0) -> None:
    """Remove cgroup path and its children, bottom-up, once their processes are gone."""
    if not path.is_dir():
        return
    deadline = time.monotonic() + timeout
    for sub in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        _rmdir(sub, deadline)
    _rmdir(path, deadline)


def _rmdir(path: Path, deadline: float) -> None:
    """Rmdir a cgroup, retrying while exiting processes still hold it (EBUSY)."""
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                raise
        time.sleep(0.05)


def leftovers() -> list[Path]:
    """Return harness cgroups that still exist under this process's parents."""
    return [p for parent in parents() if parent.is_dir() for p in parent.glob(f"{names.PREFIX}-*")]

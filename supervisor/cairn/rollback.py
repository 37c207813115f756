"""The privileged rollback helper (`cairn rollback-helper`, run by cairn-rollback.service).

It does one thing: switch the system to the generation the supervisor asked for in the state
file, if that is an existing system generation that was confirmed and is not marked bad. The
request stays in the file until the target runs (or the supervisor gives up on it), so a
helper that starts late still finds it. It repoints the `system` profile (as `nix-env
--switch-generation` does: a new link renamed over the old) and runs that generation's
`bin/switch-to-configuration switch`, which also makes it the boot default. It only reads
the state file: a damaged or newer one is refused, never moved or rewritten.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

from cairn.errors import StateError
from cairn.state import StateFile

log = logging.getLogger(__name__)


class Refused(Exception):
    """The request is not one to carry out; the message says why."""


def target(state_file: StateFile, profiles: Path) -> int:
    """The requested generation, checked; raises Refused."""
    try:
        st = state_file.read()
    except StateError as err:
        raise Refused(str(err)) from None
    if st is None or st.rollback is None:
        raise Refused(f"no rollback is requested in {state_file.path}")
    n = st.rollback.target
    link = profiles / f"system-{n}-link"
    if not link.is_symlink() or not link.exists():
        raise Refused(f"generation {n} is not an existing system generation ({link})")
    if n in st.bad:
        raise Refused(f"generation {n} is marked bad")
    if n not in st.confirmed:
        raise Refused(f"generation {n} was never confirmed")
    if not os.access(link / "bin" / "switch-to-configuration", os.X_OK):
        raise Refused(f"generation {n} has no bin/switch-to-configuration")
    return n


def run(state_file: StateFile, profiles: Path) -> int:
    """Carry out the requested rollback; the exit status of switch-to-configuration, or 1."""
    try:
        n = target(state_file, profiles)
    except Refused as err:
        log.error("refusing to roll back: %s", err)
        return 1
    system = profiles / "system"
    tmp = profiles / f".system-rollback-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(f"system-{n}-link", tmp)
    os.replace(tmp, system)
    log.warning("switching the system profile to generation %d", n)
    done = subprocess.run([str(system / "bin" / "switch-to-configuration"), "switch"], check=False)
    if done.returncode:
        log.error("switch-to-configuration of generation %d exited %d", n, done.returncode)
    return done.returncode

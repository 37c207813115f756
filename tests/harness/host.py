"""Check that this host can boot harness nodes (root, nspawn, debootstrap, ...)."""

from __future__ import annotations

import os
import shutil

from . import rootfs
from .errors import HarnessUnavailable

TOOLS = ("systemd-nspawn", "ip", "nsenter", "setpriv")


def missing_requirements() -> list[str]:
    """Return what this host lacks to run harness nodes; empty when all is there."""
    missing = [] if os.geteuid() == 0 else ["root (euid 0)"]
    tools = TOOLS if rootfs.is_cached() else (*TOOLS, "debootstrap")
    missing += [f"`{tool}` on PATH" for tool in tools if shutil.which(tool) is None]
    return missing


def require_host() -> None:
    """Raise HarnessUnavailable naming everything that is missing."""
    missing = missing_requirements()
    if missing:
        raise HarnessUnavailable(
            "integration nodes need "
            + ", ".join(missing)
            + " (apt-get install systemd-container debootstrap iproute2 util-linux; run as root)"
        )

"""Who this node is: configured name, hostname, boot and machine ids."""

from __future__ import annotations

import socket
from pathlib import Path

import msgspec


class Identity(msgspec.Struct, frozen=True):
    """Who this node is."""

    name: str
    hostname: str
    boot_id: str | None
    machine_id: str | None


def _read_id(path: str) -> str | None:
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


def of_this_machine(name: str) -> Identity:
    """Identity of the running node under its configured name."""
    return Identity(
        name=name,
        hostname=socket.gethostname(),
        boot_id=_read_id("/proc/sys/kernel/random/boot_id"),
        machine_id=_read_id("/etc/machine-id"),
    )

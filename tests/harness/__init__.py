"""Boot throwaway real-systemd nodes with systemd-nspawn for integration tests."""

from .cleanup import leftovers, sweep
from .cluster import Cluster
from .errors import HarnessError, HarnessUnavailable, Terminated
from .host import missing_requirements, require_host
from .node import Node
from .poll import wait_until
from .rootfs import ensure_rootfs

__all__ = [
    "Cluster",
    "HarnessError",
    "HarnessUnavailable",
    "Node",
    "Terminated",
    "ensure_rootfs",
    "leftovers",
    "missing_requirements",
    "require_host",
    "sweep",
    "wait_until",
]

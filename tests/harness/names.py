"""Names shared by every resource the harness creates, so leftovers can be found."""

from __future__ import annotations

import re
from pathlib import Path

PREFIX = "cairnt"
STATE_ROOT = Path("/run/cairn-harness")
_ID = re.compile(rf"^{PREFIX}-?(\d+)")


def cluster_name(cid: int) -> str:
    """Return the name of cluster cid; also its state dir name."""
    return f"{PREFIX}-{cid}"


def lan_netns(cid: int) -> str:
    """Return the network namespace holding the cluster's bridge."""
    return f"{PREFIX}-{cid}-lan"


def node_name(cid: int, index: int) -> str:
    """Return the machine name, hostname, netns and cgroup name of a node."""
    return f"{PREFIX}-{cid}-n{index}"


def host_link(cid: int) -> str:
    """Return the host-side veth name (kept under the 15-char interface limit)."""
    return f"{PREFIX}{cid}h"


def cluster_id_of(name: str) -> int | None:
    """Return the cluster id encoded in a harness resource name, or None."""
    match = _ID.match(name)
    return int(match.group(1)) if match else None


def subnet_prefix(cid: int) -> str:
    """Return the first three octets of the cluster's /24."""
    return f"10.231.{cid}"

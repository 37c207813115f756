"""Network namespaces, a bridge per cluster, and veths for nodes and the host."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

from . import names
from .errors import HarnessError

log = logging.getLogger(__name__)

NETNS_DIR = Path("/run/netns")
BRIDGE = "br0"


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    """Run `ip` (inside netns when given) and return its stdout."""
    argv = ["ip", *(("-n", netns) if netns else ()), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise HarnessError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return proc.stdout


def list_netns() -> list[str]:
    """Return the names of all named network namespaces."""
    return sorted(p.name for p in NETNS_DIR.iterdir()) if NETNS_DIR.is_dir() else []


def claim(name: str) -> bool:
    """Create netns name; False if it already exists (atomic, so usable as a claim)."""
    proc = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, check=False)
    if proc.returncode == 0:
        return True
    if "File exists" in proc.stderr:
        return False
    raise HarnessError(f"ip netns add {name} failed: {proc.stderr.strip()}")


def setup_lan(cid: int) -> str:
    """Give the claimed lan netns a bridge and the host a veth into it; return host IP."""
    lan, link = names.lan_netns(cid), names.host_link(cid)
    host_ip = f"{names.subnet_prefix(cid)}.1"
    ip("link", "set", "lo", "up", netns=lan)
    ip("link", "add", BRIDGE, "type", "bridge", netns=lan)
    ip("link", "set", BRIDGE, "up", netns=lan)
    ip("link", "add", link, "type", "veth", "peer", "name", "host", "netns", lan)
    ip("link", "set", "host", "master", BRIDGE, "up", netns=lan)
    ip("addr", "add", f"{host_ip}/24", "dev", link)
    ip("link", "set", link, "up")
    return host_ip


def add_node(cid: int, index: int) -> tuple[str, str]:
    """Create node index's netns with eth0 bridged onto the lan; return (netns, ip)."""
    lan, netns = names.lan_netns(cid), names.node_name(cid, index)
    node_ip = f"{names.subnet_prefix(cid)}.{10 + index}"
    if not claim(netns):
        raise HarnessError(f"netns {netns} already exists")
    port = f"n{index}"
    ip("link", "add", "eth0", "netns", netns, "type", "veth", "peer", "name", port, "netns", lan)
    ip("link", "set", port, "master", BRIDGE, "up", netns=lan)
    ip("link", "set", "lo", "up", netns=netns)
    ip("addr", "add", f"{node_ip}/24", "dev", "eth0", netns=netns)
    ip("link", "set", "eth0", "up", netns=netns)
    return netns, node_ip


def delete_netns(name: str) -> None:
    """Delete netns name if present; its veths go with it."""
    if (NETNS_DIR / name).exists():
        ip("netns", "delete", name)


def delete_link(name: str) -> None:
    """Delete a host link if it still exists."""
    if (Path("/sys/class/net") / name).exists():
        ip("link", "delete", name, check=False)


def host_links() -> list[str]:
    """Return host interfaces whose name carries the harness prefix."""
    return sorted(
        p.name for p in Path("/sys/class/net").iterdir() if p.name.startswith(names.PREFIX)
    )

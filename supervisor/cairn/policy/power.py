"""Node power: suspend a node the cluster does not need, and wake it with Wake-on-LAN.

Off by default (`[power] enable`). A node may suspend when it has served no request for
`idle_after` seconds, every sleepable unit on it is asleep, and each of its models is served by
a live peer whose name sorts before its own: the lowest-named server of every model stays up,
so two nodes never leave a model unserved by suspending at once on stale views. Before it
suspends it publishes `power = "suspended"` and its MAC in its digest and leaves the cluster;
a peer that gets a request for a model only suspended members serve sends their MACs a magic
packet and answers 503 with Retry-After.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from pathlib import Path

from cairn.gossip.digest import NodeDigest
from cairn.gossip.messages import MemberState

MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}\Z")
WOL_PORT = 9
WOL_BROADCAST = ("255.255.255.255", WOL_PORT)  # the LAN's broadcast, the customary port
SUSPENDED = "suspended"


@dataclass(frozen=True)
class PeerView:
    """What the policy needs of one member: its name, state and last digest."""

    name: str
    state: MemberState
    digest: NodeDigest | None


def may_suspend(
    me: str,
    models: list[str],
    idle_for: float,
    idle_after: float,
    all_asleep: bool,
    peers: list[PeerView],
) -> tuple[bool, str]:
    """Whether this node may suspend now, and why (not)."""
    if idle_for < idle_after:
        return False, f"used {idle_for:.0f} s ago (suspends after {idle_after:g} s idle)"
    if not all_asleep:
        return False, "a sleepable unit is awake"
    for model in models:
        keepers = [
            p.name
            for p in peers
            if p.state is MemberState.ALIVE
            and p.name < me
            and p.digest is not None
            and p.digest.power != SUSPENDED
            and model in p.digest.models
            and p.digest.models[model].state != "failed"
        ]
        if not keepers:
            return False, f"no live peer before '{me}' serves '{model}'"
    return True, "idle, and every model is served by a peer that stays up"


def wake_targets(model: str, peers: list[PeerView]) -> list[tuple[str, str]]:
    """(name, MAC) of suspended members that serve `model`, to send a magic packet to."""
    return [
        (p.name, p.digest.mac)
        for p in peers
        if p.state is MemberState.LEFT
        and p.digest is not None
        and p.digest.power == SUSPENDED
        and p.digest.mac is not None
        and model in p.digest.models
    ]


def magic_packet(mac: str) -> bytes:
    """Six 0xff bytes, then the MAC sixteen times."""
    if not MAC.match(mac.lower()):
        raise ValueError(f"not a MAC address: {mac!r}")
    raw = bytes.fromhex(mac.replace(":", ""))
    return b"\xff" * 6 + raw * 16


def send_magic_packet(mac: str, to: tuple[str, int] = WOL_BROADCAST) -> None:
    """Broadcast a Wake-on-LAN packet for `mac` (UDP, the customary port 9)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.sendto(magic_packet(mac), to)


def mac_of(address: str, sys_net: Path = Path("/sys/class/net")) -> str | None:
    """The MAC of the interface that holds `address` (IPv4), or None."""
    import psutil

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == address for a in addrs):
            try:
                mac = (sys_net / name / "address").read_text().strip().lower()
            except OSError:
                return None
            return mac if MAC.match(mac) and mac != "00:00:00:00:00:00" else None
    return None

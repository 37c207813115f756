"""Wake-on-LAN: the magic packet, and the MAC of the interface that holds an address."""

from __future__ import annotations

import re
import socket
from pathlib import Path

MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}\Z")
WOL_PORT = 9
WOL_BROADCAST = ("255.255.255.255", WOL_PORT)  # the LAN's broadcast, the customary port


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

"""Wake-on-LAN: the magic packet on the wire, the MAC of an address's interface."""

from __future__ import annotations

import socket

import psutil
import pytest

from cairn.system.wol import mac_of, magic_packet, send_magic_packet


def test_magic_packet_is_six_ff_then_the_mac_sixteen_times() -> None:
    pkt = magic_packet("52:54:00:12:34:56")
    assert len(pkt) == 102 and pkt[:6] == b"\xff" * 6
    assert pkt[6:] == bytes.fromhex("525400123456") * 16
    with pytest.raises(ValueError, match="not a MAC"):
        magic_packet("52:54:00:12:34")


def test_magic_packet_goes_out_over_udp() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5)
        send_magic_packet("52:54:00:12:34:56", rx.getsockname())
        data, _ = rx.recvfrom(200)
    assert data == magic_packet("52:54:00:12:34:56")


def test_the_mac_is_read_from_the_interface_holding_the_address() -> None:
    assert mac_of("127.0.0.1") is None  # loopback's is all zeros
    assert mac_of("192.0.2.1") is None  # an address no interface has
    for name, addrs in psutil.net_if_addrs().items():
        v4 = [a.address for a in addrs if a.family == socket.AF_INET]
        macs = [a.address for a in addrs if a.family == psutil.AF_LINK]
        if v4 and macs and macs[0] != "00:00:00:00:00:00":
            assert mac_of(v4[0]) == macs[0].lower(), name

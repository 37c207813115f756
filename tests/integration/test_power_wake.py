"""A node asked for a model only a suspended peer serves sends that peer a magic packet."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from pathlib import Path
from typing import Any

from cairn import config
from cairn.gossip import digest as digests
from cairn.gossip.digest import SUSPENDED, ModelDigest, NodeDigest
from cairn.gossip.messages import MemberState
from cairn.gossip.service import Cluster
from cairn.system.wol import magic_packet
from tests.conftest import free_port

MAC = "02:00:00:00:00:0b"


def gossip(key: Path, port: int, join: list[str]) -> Any:
    doc = {"key_file": str(key), "bind": "127.0.0.1", "port": port, "join": join}
    return config.from_mapping({"version": 1, "gossip": {**doc, "profile": "local"}}).gossip


async def until(cond: Any, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.05)


async def test_wake_sends_one_magic_packet_to_the_suspended_server(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    pa = free_port()
    a = Cluster(gossip(key, pa, []), "a")
    b = Cluster(gossip(key, free_port(), [f"127.0.0.1:{pa}"]), "b")
    await a.start()
    await b.start()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        a.wol_to = rx.getsockname()
        try:
            assert a.member is not None and b.member is not None
            await until(lambda: "b" in a.member.members)
            models = {"m": ModelDigest("asleep", 4, 0, 0, 16)}
            d = NodeDigest(8470, "0", None, 0.0, 0, 0, None, None, models, power=SUSPENDED, mac=MAC)
            b.publish(digests.encode(d))
            b.member.leave()  # the digest rides along with the goodbye
            rec = a.member.members["b"]
            await until(lambda: rec.state is MemberState.LEFT and rec.digest is not None)

            assert a.wake("m") == ["b"]
            await until(lambda: a.wol_sent == 1)
            assert rx.recv(200) == magic_packet(MAC)
            assert a.wake("m") == ["b"]  # asked again at once: no second packet
            assert a.wol_sent == 1
            assert a.wake("other") == []
        finally:
            await b.stop()
            await a.stop()

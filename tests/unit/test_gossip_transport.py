"""The gossip TCP listener on real sockets: strangers cannot crowd the members out."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest

from cairn.config import Profile
from cairn.gossip import transport as transport_module
from cairn.gossip.clock import LoopClock
from cairn.gossip.keyring import Keyring
from cairn.gossip.membership import Membership
from cairn.gossip.messages import MemberState
from cairn.gossip.profiles import TIMINGS
from cairn.gossip.transport import STREAMS_PER_PEER, STREAMS_TOTAL, SocketTransport
from tests.conftest import free_port

LAN = TIMINGS[Profile.LAN]  # tcp_timeout 10 s
# B reaches A's address from 127.0.0.1, the kernel's source for anything on lo: A sits at .2.
A_HOST, B_HOST = "127.0.0.2", "127.0.0.1"


async def _node(name: str, host: str, ring: Keyring) -> Membership:
    loop = asyncio.get_running_loop()
    port = free_port()
    transport = SocketTransport(LAN.tcp_timeout)
    member = Membership(name, (host, port), LAN, ring, LoopClock(loop), transport, random.Random(1))
    await transport.start(host, port, member)
    member.start()
    return member


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Membership, Membership]]:
    ring = Keyring([bytes(range(32))], "c")
    a, b = await _node("a", A_HOST, ring), await _node("b", B_HOST, ring)
    yield a, b
    for m in (a, b):
        m.stop()
        assert isinstance(m.transport, SocketTransport)
        await m.transport.close()


async def _join(b: Membership, a: Membership) -> int:
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    b.join([(a.host, a.port)], done.set_result)
    return await asyncio.wait_for(done, 5)


async def _hold(source: str, a: Membership) -> asyncio.StreamWriter:
    """A stranger's stream from `source`: connected, sending nothing."""
    _, writer = await asyncio.open_connection(a.host, a.port, local_addr=(source, 0))
    return writer


async def test_a_members_push_pull_passes_while_strangers_fill_the_total(
    pair: tuple[Membership, Membership], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Strangers hold their streams for the whole test, however slowly this machine opens them.
    monkeypatch.setattr(transport_module, "FIRST_FRAME_S", LAN.tcp_timeout)
    a, b = pair
    assert await _join(b, a) == 1
    assert a.members["b"].state is MemberState.ALIVE
    limits = a.transport.limits  # type: ignore[attr-defined]
    strangers = [f"127.0.1.{i}" for i in range(1, STREAMS_TOTAL // STREAMS_PER_PEER + 1)]
    held = [await _hold(s, a) for s in strangers for _ in range(STREAMS_PER_PEER)]
    await asyncio.sleep(0.1)  # the listener has accepted them all
    assert limits.open_total == STREAMS_TOTAL
    late = await _hold("127.0.2.1", a)  # one more stranger: over the total
    await asyncio.sleep(0.1)
    assert limits.refused["total"] == 1
    assert await _join(b, a) == 1  # the member is not held to the total
    assert limits.refused["total"] == 1
    for w in (*held, late):
        w.close()


async def test_a_stranger_holds_a_stream_only_until_the_first_frame_deadline(
    pair: tuple[Membership, Membership],
) -> None:
    a, b = pair
    assert await _join(b, a) == 1
    # The member's stream, as slow, keeps the whole tcp_timeout (a lossy link's resends).
    _, from_member = await asyncio.open_connection(a.host, a.port, local_addr=(B_HOST, 0))
    from_member.write(b"\x00\x00")
    transport = a.transport
    assert isinstance(transport, SocketTransport)
    assert transport.first_frame_s() == 2.0  # LAN: not the 10 s tcp_timeout
    reader, writer = await asyncio.open_connection(a.host, a.port, local_addr=("127.0.3.1", 0))
    writer.write(b"\x00\x00")  # half a frame's length, then nothing
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    async with asyncio.timeout(LAN.tcp_timeout / 2):
        assert await reader.read() == b""
    assert 1.5 <= loop.time() - t0 <= 3.0
    assert transport.limits.open == {B_HOST: 1}  # the member's, still open
    for w in (writer, from_member):
        w.close()

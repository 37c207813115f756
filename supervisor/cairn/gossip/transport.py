"""The real transport: one UDP socket for the protocol, a TCP listener for push-pull."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import struct
from collections.abc import Callable

from cairn.gossip.clock import Addr
from cairn.gossip.membership import MAX_STREAM_BYTES, Membership
from cairn.gossip.messages import MemberState
from cairn.guard import ConnectionLimits, unmapped

log = logging.getLogger(__name__)
_FRAME = struct.Struct(">I")
# Inbound push-pull streams open at once: a peer has one or two in flight; more is a flood.
# Streams from live or suspect members' addresses are not held to the total: strangers
# filling it must not cut the members off from each other.
STREAMS_PER_PEER = 8
STREAMS_TOTAL = 128
# A stranger's stream (from no member's address) must send its first frame within this, not
# the whole tcp_timeout (a fifth of it where that is longer, for a WAN): anyone may connect, and
# holds a slot only this long. A joiner's push-pull is a few KiB, and Linux resends a lost
# segment after 200 ms, 400, 800: three losses in a row of one segment still arrive in 1.4 s.
# After a lost SYN the first resend waits 3 s: at 20 % loss both ways, 1 to 4 of 20 such
# push-pulls missed 2 s (measured; a joiner retries). Members' streams have all of tcp_timeout.
FIRST_FRAME_S = 2.0
_MEMBERS = (MemberState.ALIVE, MemberState.SUSPECT)


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, owner: SocketTransport) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        member = self.owner.member
        if member is None:
            return
        try:
            member.handle_packet(data, (str(addr[0]), int(addr[1])))
        except Exception:  # a bug in a handler must cost one packet, not the receive loop
            log.exception("gossip packet from %s:%s broke a handler", addr[0], addr[1])
            member.stats.drop("internal_error")

    def error_received(self, exc: Exception) -> None:
        log.debug("gossip socket error: %s", exc)  # ICMP unreachable from a dead peer


class SocketTransport:
    """asyncio sockets behind the `Transport` seam."""

    def __init__(self, tcp_timeout: float) -> None:
        self.tcp_timeout = tcp_timeout
        self.member: Membership | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.limits = ConnectionLimits("gossip", STREAMS_PER_PEER, STREAMS_TOTAL)

    async def start(self, host: str, port: int, member: Membership) -> None:
        """Bind UDP and TCP on the same port."""
        loop = asyncio.get_running_loop()
        self.member = member
        self._udp, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self), local_addr=(host, port)
        )
        self._server = await asyncio.start_server(self._serve, host, port, reuse_address=True)

    async def close(self) -> None:
        """Stop listening and abandon exchanges in flight."""
        if self._server is not None:
            self._server.close()
        if self._udp is not None:
            self._udp.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def send(self, addr: Addr, data: bytes) -> None:
        """One datagram, best effort."""
        if self._udp is None or self._udp.is_closing():
            return
        try:
            self._udp.sendto(data, addr)
        except OSError as err:  # e.g. no route: the protocol treats it as loss
            log.debug("gossip send to %s:%d failed: %s", *addr, err)

    def exchange(
        self,
        addr: Addr,
        data: bytes,
        done: Callable[[bytes | None], None],
        timeout: float | None = None,
    ) -> None:
        """One request and its reply over a fresh TCP connection, in the background."""
        limit = self.tcp_timeout if timeout is None else min(timeout, self.tcp_timeout)
        task = asyncio.get_running_loop().create_task(self._exchange(addr, data, done, limit))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _exchange(
        self, addr: Addr, data: bytes, done: Callable[[bytes | None], None], limit: float
    ) -> None:
        reply = None
        writer = None
        try:
            async with asyncio.timeout(max(0.0, limit)):
                reader, writer = await asyncio.open_connection(*addr)
                writer.write(_FRAME.pack(len(data)) + data)
                await writer.drain()
                reply = await _read_frame(reader)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as err:
            log.debug("stream to %s:%d failed: %s", *addr, err)
        finally:
            if writer is not None:
                writer.close()
        done(reply)

    def first_frame_s(self) -> float:
        """How long a stranger's inbound stream may take to send its first frame."""
        return min(self.tcp_timeout, max(FIRST_FRAME_S, self.tcp_timeout / 5))

    def _from_member(self, client: str) -> bool:
        """Whether `client` is the address of a live or suspect member."""
        if self.member is None:
            return False
        try:
            ip = str(unmapped(ipaddress.ip_address(client)))
        except ValueError:
            return False
        hosts = {m.host for m in self.member.members.values() if m.state in _MEMBERS}
        return ip in hosts or client in hosts

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) else ""
        member = self._from_member(client)
        if not self.limits.admit(client, capped=not member):
            writer.transport.abort()  # the descriptor is free again at once
            return
        started = asyncio.get_running_loop().time()
        try:
            # Deadlines for a stranger's first frame, then for the whole exchange: a stream
            # that trickles its frame is cut off.
            first = self.tcp_timeout if member else self.first_frame_s()
            async with asyncio.timeout(first) as deadline:
                try:
                    data = await _read_frame(reader)
                except ValueError:
                    if self.member is not None:
                        self.member.stats.drop("oversized")
                    return
                deadline.reschedule(started + self.tcp_timeout)
                reply = self.member.handle_stream(data) if self.member is not None else None
                if reply is not None:
                    writer.write(_FRAME.pack(len(reply)) + reply)
                    await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as err:
            log.debug("incoming stream failed: %s", err)
        finally:
            self.limits.release(client)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = _FRAME.unpack(await reader.readexactly(_FRAME.size))
    if size > MAX_STREAM_BYTES:
        raise ValueError(f"stream frame of {size} bytes")
    return await reader.readexactly(size)

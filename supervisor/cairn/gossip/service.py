"""The daemon's side of gossip: sockets, joining with backoff, key reloads, digests, the view."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from cairn.config import GossipConfig
from cairn.errors import CairnError
from cairn.gossip import digest as digests
from cairn.gossip.clock import Addr, LoopClock
from cairn.gossip.digest import PeerView, wake_targets
from cairn.gossip.keyring import Keyring
from cairn.gossip.membership import Member, Membership
from cairn.gossip.messages import Digest, MemberState
from cairn.gossip.profiles import TIMINGS
from cairn.gossip.transport import SocketTransport
from cairn.system.wol import WOL_BROADCAST, send_magic_packet

log = logging.getLogger(__name__)

JOIN_BACKOFF_S = (1.0, 30.0)
WOL_EVERY_S = 10.0  # at most one magic packet per machine this often


@dataclass(frozen=True)
class Peer:
    """A live member that serves a model, as the router sees it."""

    name: str
    host: str
    api_port: int
    model: digests.ModelDigest


class MemberView(msgspec.Struct, frozen=True):
    """One row of the cluster table in /status."""

    name: str
    address: str
    state: str
    incarnation: int
    self: bool
    since_seconds: float | None
    digest_age_seconds: float | None
    digest: dict[str, Any] | None


def parse_join(entry: str, default_port: int) -> tuple[str, int]:
    """'host', 'host:port' or '[v6]:port' → (host, port)."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    host, sep, port = entry.rpartition(":")
    return (host, int(port)) if sep else (entry, default_port)


def _route_source(peer: str) -> str | None:
    """The local address the kernel would use to reach `peer` (no packet is sent)."""
    try:
        info = socket.getaddrinfo(peer, 9, type=socket.SOCK_DGRAM)[0]
        with socket.socket(info[0], socket.SOCK_DGRAM) as s:
            s.connect(info[4])
            return str(s.getsockname()[0])
    except OSError:
        return None


class Cluster:
    """Owns the Membership, its sockets, and the joins; the supervisor feeds it digests."""

    def __init__(self, cfg: GossipConfig, name: str) -> None:
        self.cfg = cfg
        self.name = name
        self.timing = TIMINGS[cfg.profile]
        self.keyring = Keyring.from_file(cfg.key_file, cfg.cluster)
        self._key_mtime = Path(cfg.key_file).stat().st_mtime_ns
        self.transport = SocketTransport(self.timing.tcp_timeout)
        self.member: Membership | None = None
        self._join_task: asyncio.Task[None] | None = None
        self._decoded: dict[str, tuple[int, digests.NodeDigest | None]] = {}
        self._woken: dict[str, float] = {}  # MAC -> when we last sent it a magic packet
        self.wol_sent = 0
        self.wol_to = WOL_BROADCAST

    def advertise(self) -> str:
        """The address peers reach us at; refuses to guess when it cannot know."""
        if self.cfg.advertise:
            return self.cfg.advertise
        if self.cfg.bind not in ("0.0.0.0", "::"):
            return self.cfg.bind
        for entry in self.cfg.join:
            src = _route_source(parse_join(entry, self.cfg.port)[0])
            if src:
                return src
        raise OSError(
            "gossip.advertise is needed: bind is a wildcard and no join peer is reachable"
        )

    async def start(self) -> None:
        """Bind, start the protocol, and keep joining in the background."""
        loop = asyncio.get_running_loop()
        member = self.member = Membership(
            self.name,
            (self.advertise(), self.cfg.port),
            self.timing,
            self.keyring,
            LoopClock(loop),
            self.transport,
            random.Random(),
            on_change=self._changed,
        )
        await self.transport.start(self.cfg.bind, self.cfg.port, member)
        member.start()
        log.info(
            "gossip on %s:%d as %s (advertised %s, profile %s)",
            self.cfg.bind,
            self.cfg.port,
            self.name,
            member.host,
            self.cfg.profile,
        )
        self._join_task = loop.create_task(self._keep_joined())

    async def stop(self) -> None:
        """Leave gracefully, then close the sockets."""
        if self._join_task is not None:
            self._join_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._join_task
        if self.member is not None and self.member.running:
            self.member.leave()
        await self.transport.close()

    async def _keep_joined(self) -> None:
        """Join the configured peers; again, with backoff, whenever we know no live member."""
        assert self.member is not None
        delay = JOIN_BACKOFF_S[0]
        while True:
            if not self.cfg.join:
                return
            if self.member.live_count() > 1:
                delay = JOIN_BACKOFF_S[0]
            else:
                answered = await self._join_once()
                if answered:
                    log.info(
                        "joined the cluster through %d of %d peers", answered, len(self.cfg.join)
                    )
                    delay = JOIN_BACKOFF_S[0]
                else:
                    log.warning("no join peer answered; retrying in %.0f s", delay)
                    delay = min(delay * 2, JOIN_BACKOFF_S[1])
            await asyncio.sleep(delay * (0.5 + random.random() / 2))

    async def _join_once(self) -> int:
        assert self.member is not None
        loop = asyncio.get_running_loop()
        addrs: list[Addr] = []
        for entry in self.cfg.join:
            host, port = parse_join(entry, self.cfg.port)
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as err:
                log.warning("cannot resolve join peer %s: %s", entry, err)
                continue
            addr = (str(infos[0][4][0]), int(infos[0][4][1]))
            if addr != (self.member.host, self.member.port):
                addrs.append(addr)
        done: asyncio.Future[int] = loop.create_future()
        self.member.join(addrs, done.set_result)
        return await done

    def _changed(self, m: Member, old: MemberState | None) -> None:
        if old is None:
            log.info("member %s joined (%s:%d)", m.name, m.host, m.port)
        else:
            log.info("member %s: %s -> %s (incarnation %d)", m.name, old, m.state, m.incarnation)

    def reload_keys(self) -> None:
        """Pick up a rotated key file; a broken one is refused and the old keys stay."""
        path = Path(self.cfg.key_file)
        try:
            mtime = path.stat().st_mtime_ns
            if mtime == self._key_mtime:
                return
            self._key_mtime = mtime
            ring = Keyring.from_file(path, self.cfg.cluster)
        except (OSError, CairnError) as err:  # a KeyringError names the line
            log.error("keeping the old gossip keys: %s", err)
            return
        self.keyring = ring
        if self.member is not None:
            self.member.keyring = ring
        log.info("gossip keyring reloaded: %d keys", len(ring.keys))

    def publish(self, body: bytes) -> None:
        """Hand our newest encoded digest to the protocol."""
        if self.member is not None:
            self.member.set_digest(body)

    def _digest_of(self, digest: Digest | None) -> digests.NodeDigest | None:
        """A member's digest, decoded once per version (the router reads it per request)."""
        if digest is None:
            return None
        cached = self._decoded.get(digest.node)
        if cached is None or cached[0] != digest.version:
            cached = self._decoded[digest.node] = (digest.version, digests.decode(digest.body))
        return cached[1]

    # --- views ----------------------------------------------------------------------------

    def peers_serving(self, model: str) -> list[Peer]:
        """Alive peers whose digest lists `model` with room, least loaded first."""
        out = []
        for m in self.member.members.values() if self.member else ():
            d = self._digest_of(m.digest) if m.state is MemberState.ALIVE else None
            md = d.models.get(model) if d else None
            if d is not None and md is not None and md.has_room():
                out.append(Peer(m.name, m.host, d.api_port, md))
        return sorted(out, key=lambda p: p.model.load())

    def is_alive(self, name: str) -> bool:
        """Whether member `name` is alive (not suspect, dead or gone) in this node's view."""
        m = self.member.members.get(name) if self.member else None
        return m is not None and m.state is MemberState.ALIVE

    def knows_model(self, model: str) -> bool:
        """Whether any member's last digest listed `model`, alive or not, with room or not."""
        for m in self.member.members.values() if self.member else ():
            d = self._digest_of(m.digest)
            if d is not None and model in d.models:
                return True
        return False

    def wake(self, model: str) -> list[str]:
        """Send a magic packet to each suspended member serving `model`; their names."""
        now = time.monotonic()
        names = []
        for name, mac in wake_targets(model, self.views()):
            names.append(name)
            if now - self._woken.get(mac, -WOL_EVERY_S) < WOL_EVERY_S:
                continue  # one packet per machine every few seconds is plenty
            try:
                send_magic_packet(mac, self.wol_to)
            except OSError as err:
                log.warning("wake-on-LAN to %s (%s) failed: %s", name, mac, err)
                continue
            self._woken[mac] = now
            self.wol_sent += 1
            log.info("sent wake-on-LAN to %s (%s) for model %s", name, mac, model)
        return names

    def views(self) -> list[PeerView]:
        """Every other member with its last digest, for the power policy."""
        return [
            PeerView(m.name, m.state, self._digest_of(m.digest))
            for m in (self.member.members.values() if self.member else ())
        ]

    def view(self) -> list[MemberView]:
        """Every member (ourselves first) for /status."""
        if self.member is None:
            return []
        me = self.member
        now = me.clock.now()
        rows = [
            MemberView(
                me.name,
                f"{me.host}:{me.port}",
                "left" if me.leaving else "alive",
                me.incarnation,
                True,
                None,
                0.0 if me.digest else None,
                _digest_doc(self._digest_of(me.digest)),
            )
        ]
        for m in sorted(me.members.values(), key=lambda m: m.name):
            rows.append(
                MemberView(
                    m.name,
                    f"{m.host}:{m.port}",
                    str(m.state),
                    m.incarnation,
                    False,
                    round(now - m.since, 3),
                    round(now - m.digest_at, 3) if m.digest_at is not None else None,
                    _digest_doc(self._digest_of(m.digest)),
                )
            )
        return rows


def _digest_doc(d: digests.NodeDigest | None) -> dict[str, Any] | None:
    if d is None:
        return None
    doc = {f: getattr(d, f) for f in d.__struct_fields__}
    doc["models"] = {
        n: {f: getattr(md, f) for f in md.__struct_fields__} for n, md in d.models.items()
    }
    return doc


class GossipCollector(Collector):
    """The membership's counters and the wake-on-LAN packets, at scrape time."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def collect(self) -> Iterator[Metric]:
        """Nothing before the membership runs."""
        member = self.cluster.member
        if member is None:
            return
        st = member.stats
        states = GaugeMetricFamily(
            "cairn_gossip_members",
            "Cluster members by state, this node included.",
            labels=["state"],
        )
        for state, n in member.counts().items():
            states.add_metric([str(state)], n)
        yield states
        aware = GaugeMetricFamily("cairn_gossip_awareness", "Lifeguard local health: 0 is healthy.")
        aware.add_metric([], member.awareness)
        yield aware
        for name, doc, value in (
            ("gossip_packets_received", "Gossip datagrams received.", st.packets_in),
            ("gossip_packets_sent", "Gossip datagrams sent.", st.packets_out),
            ("gossip_received_bytes", "Gossip bytes received, push-pull included.", st.bytes_in),
            ("gossip_sent_bytes", "Gossip bytes sent, push-pull included.", st.bytes_out),
            ("gossip_suspicions", "Members this node began to suspect.", st.suspicions),
            ("gossip_refutations", "Suspicions of this node it refuted.", st.refutations),
            ("gossip_deaths", "Members this node declared dead.", st.deaths),
            (
                "gossip_tcp_probe_acks",
                "Probes answered only over TCP: UDP to that peer is lossy or blocked.",
                st.tcp_acks,
            ),
            ("gossip_push_pulls", "Push-pull exchanges this node began.", st.push_pulls),
            (
                "gossip_push_pull_failures",
                "Push-pull exchanges that failed.",
                st.push_pull_failures,
            ),
        ):
            c = CounterMetricFamily(f"cairn_{name}", doc)
            c.add_metric([], value)
            yield c
        dropped = CounterMetricFamily(
            "cairn_gossip_dropped_packets", "Gossip input dropped, by reason.", labels=["reason"]
        )
        for reason, n in sorted(st.dropped.items()):
            dropped.add_metric([reason], n)
        yield dropped
        rtt = HistogramMetricFamily("cairn_gossip_probe_rtt_seconds", "Probe round-trip times.")
        rtt.add_metric([], st.rtt.cumulative(), st.rtt.total)
        yield rtt
        wol = CounterMetricFamily(
            "cairn_wake_on_lan_packets", "Magic packets sent to wake suspended peers."
        )
        wol.add_metric([], self.cluster.wol_sent)
        yield wol

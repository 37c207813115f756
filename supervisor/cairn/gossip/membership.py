"""SWIM with Lifeguard: probes, indirect probes, suspicion with confirmations, dissemination.

The protocol is pure: it reads time from a `Clock` and talks through a `Transport`, so the same
code runs on asyncio sockets and inside the deterministic simulator.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import msgspec

from cairn.buckets import Buckets
from cairn.gossip.broadcasts import BroadcastQueue
from cairn.gossip.clock import Addr, Clock, Timer, Transport
from cairn.gossip.keyring import OVERHEAD, Dropped, Keyring, ReplayGuard
from cairn.gossip.messages import (
    MAX_DIGEST_BYTES,
    MAX_MESSAGES,
    Ack,
    Alive,
    Dead,
    Delta,
    Digest,
    IndirectPing,
    MemberRecord,
    MemberState,
    Message,
    Nack,
    Packet,
    Ping,
    PushPull,
    Stream,
    StreamPing,
    Summary,
    Suspect,
    Update,
    decode_packet,
    decode_stream,
    encode,
)
from cairn.gossip.profiles import Timing, suspicion_remaining
from cairn.gossip.summary import bucket_count, differing, hashes, in_buckets, record_hash

log = logging.getLogger(__name__)

REAP_AFTER_S = 3600.0  # dead and left members stay visible this long, then are forgotten
MAX_STREAM_BYTES = 4 << 20
RTT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
GONE = (MemberState.DEAD, MemberState.LEFT)
R = TypeVar("R", PushPull, Delta)


@dataclass
class Suspicion:
    """A suspicion timer that shortens as independent members confirm it (Lifeguard)."""

    incarnation: int
    k: int
    lo: float
    hi: float
    start: float
    confirmed: set[str]
    timer: Timer | None = None

    def timeout(self) -> float:
        """The initial timeout: the maximum, unless no confirmation can be expected."""
        return self.hi if self.k >= 1 else self.lo

    def confirm(self, sender: str, now: float) -> float | None:
        """The new remaining time if `sender` is a new confirmation, else None."""
        n = len(self.confirmed) - 1
        if n >= self.k or sender in self.confirmed:
            return None
        self.confirmed.add(sender)
        return suspicion_remaining(n + 1, self.k, now - self.start, self.lo, self.hi)


@dataclass
class Member:
    """What this node knows of one peer."""

    name: str
    host: str
    port: int
    incarnation: int
    state: MemberState
    since: float
    digest: Digest | None = None
    digest_at: float | None = None
    suspicion: Suspicion | None = None

    @property
    def addr(self) -> Addr:
        """Where its datagrams go."""
        return (self.host, self.port)

    def record(self) -> MemberRecord:
        """Its push-pull form."""
        return MemberRecord(
            self.name, self.incarnation, self.state, self.host, self.port, self.digest
        )


@dataclass
class Stats:
    """Counters the metrics endpoint exposes; plain numbers so the simulator can read them."""

    packets_in: int = 0
    packets_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    suspicions: int = 0
    refutations: int = 0
    deaths: int = 0
    late_acks: int = 0
    tcp_acks: int = 0  # probes answered only over TCP: UDP to that peer is lossy or blocked
    push_pulls: int = 0
    push_pull_failures: int = 0
    rtt: Buckets = field(default_factory=lambda: Buckets(RTT_BUCKETS))  # probe round trips

    def drop(self, reason: str) -> None:
        """Count one dropped packet."""
        self.dropped[reason] = self.dropped.get(reason, 0) + 1


@dataclass
class _Pending:
    """An outstanding ping: what to do on its ack, nack, or silence."""

    on_ack: Callable[[], None]
    on_nack: Callable[[], None] | None = None
    timers: list[Timer] = field(default_factory=list)


ChangeHook = Callable[[Member, MemberState | None], None]


class Membership:
    """One node's view of the cluster and its side of the protocol."""

    def __init__(
        self,
        name: str,
        addr: Addr,
        timing: Timing,
        keyring: Keyring,
        clock: Clock,
        transport: Transport,
        rng: random.Random | None = None,
        on_change: ChangeHook | None = None,
    ) -> None:
        self.name = name
        self.host, self.port = addr
        self.timing = timing
        self.keyring = keyring
        self.clock = clock
        self.transport = transport
        self.rng = rng or random.Random()
        self.on_change = on_change
        self.incarnation = 0
        self.awareness = 0  # Lifeguard's local health: 0 is healthy
        self.members: dict[str, Member] = {}
        self._gone = 0  # members dead or left: live_count() runs on every send, keep it O(1)
        self.digest: Digest | None = None
        self.stats = Stats()
        self.leaving = False
        self.running = False
        self._queue = BroadcastQueue()
        self._replay = ReplayGuard()
        self._seq = 0
        self._pending: dict[int, _Pending] = {}
        self._timers: dict[str, Timer] = {}
        self._probe_order: list[str] = []

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Begin probing, gossiping and syncing; announce ourselves."""
        self.running = True
        self._queue.put(self._alive_msg())
        jitter = self.rng.random()
        self._every("probe", self.timing.probe_interval * jitter, self._probe_tick)
        self._every("gossip", self.timing.gossip_interval * jitter, self._gossip_tick)
        self._every("push_pull", self.timing.push_pull_interval * jitter, self._push_pull_tick)

    def stop(self) -> None:
        """Stop every timer; the node falls silent (a crash, as far as peers can tell)."""
        self.running = False
        for t in self._timers.values():
            t.cancel()
        for p in self._pending.values():
            for t in p.timers:
                t.cancel()
        for m in self.members.values():
            if m.suspicion and m.suspicion.timer:
                m.suspicion.timer.cancel()
        self._timers.clear()
        self._pending.clear()

    def leave(self) -> None:
        """Tell peers we are leaving (a dead message from ourselves), then go quiet."""
        self.leaving = True
        self.incarnation += 1
        msg = Dead(self.name, self.incarnation, self.name)
        self._queue.put(msg)
        live = [m for m in self.members.values() if m.state not in GONE]
        for m in live if len(live) <= 32 else self.rng.sample(live, 3 * self.timing.gossip_nodes):
            self._send(m.addr, [msg])
        self.stop()

    def resume(self) -> None:
        """Run again after leave() (a suspended machine woke): announce a newer incarnation."""
        self.leaving = False
        self.incarnation += 1
        self.start()

    def join(self, addrs: list[Addr], done: Callable[[int], None]) -> None:
        """Push-pull with each address; `done` gets how many answered."""
        results: list[bool] = []

        def one(reply: bytes | None) -> None:
            results.append(self._merge_reply(reply))
            if len(results) == len(addrs):
                done(sum(results))

        if not addrs:
            done(0)
        for addr in addrs:
            self.transport.exchange(addr, self._pushpull_blob(), one)

    def set_digest(self, body: bytes) -> None:
        """Publish a new health digest; small ones are piggybacked, any size goes by push-pull."""
        # Versions are wall-clock milliseconds: a restarted node's digest outranks its old one.
        last = self.digest.version if self.digest else -1
        version = max(int(self.clock.wall() * 1000), last + 1)
        self.digest = Digest(self.name, version, body)
        if len(body) <= MAX_DIGEST_BYTES:
            self._queue.put(self.digest)

    # --- views ----------------------------------------------------------------------------

    def live_count(self) -> int:
        """Members not dead or left, ourselves included."""
        return 1 + len(self.members) - self._gone

    def counts(self) -> dict[MemberState, int]:
        """Members by state, ourselves included."""
        out = dict.fromkeys(MemberState, 0)
        out[MemberState.LEFT if self.leaving else MemberState.ALIVE] += 1
        for m in self.members.values():
            out[m.state] += 1
        return out

    # --- timers ---------------------------------------------------------------------------

    def _every(self, name: str, first: float, fn: Callable[[], float]) -> None:
        def tick() -> None:
            if self.running:
                self._timers[name] = self.clock.call_later(fn(), tick)

        self._timers[name] = self.clock.call_later(first, tick)

    def _probe_tick(self) -> float:
        interval = self.timing.probe_interval * (self.awareness + 1)
        target = self._next_target()
        if target is not None:
            self._probe(target, interval)
        return interval

    def _next_target(self) -> Member | None:
        while True:
            if not self._probe_order:
                self._reap()
                self._probe_order = [n for n, m in self.members.items() if m.state not in GONE]
                self.rng.shuffle(self._probe_order)
                if not self._probe_order:
                    return None
            m = self.members.get(self._probe_order.pop())
            if m is not None and m.state not in GONE:
                return m

    def _reap(self) -> None:
        now = self.clock.now()
        for name in [n for n, m in self.members.items() if m.state in GONE]:
            if now - self.members[name].since > REAP_AFTER_S:
                del self.members[name]
                self._gone -= 1

    def _probe(self, m: Member, interval: float) -> None:
        seq = self._next_seq()
        sent = self.clock.now()
        nacks = [0]
        asked: list[Member] = []

        def on_ack() -> None:
            self._finish(seq)
            self.stats.rtt.observe(self.clock.now() - sent)
            if not asked:
                self._adjust_awareness(-1)

        def on_nack() -> None:
            nacks[0] += 1

        def indirect() -> None:
            peers = [
                p
                for p in self.members.values()
                if p.state is MemberState.ALIVE and p.name != m.name
            ]
            asked.extend(self.rng.sample(peers, min(self.timing.indirect_checks, len(peers))))
            for p in asked:
                self._send(p.addr, [IndirectPing(seq, m.name, m.host, m.port)])
            ping_again()  # and once more directly: loss is independent
            # memberlist's fallback: the same probe over TCP, due by the end of this probe.
            ping = self._seal(StreamPing(self.name, seq, m.name))
            self.transport.exchange(m.addr, ping, on_stream, sent + interval - self.clock.now())

        def ping_again() -> None:
            self._send(m.addr, [Ping(seq, m.name)])

        def on_stream(reply: bytes | None) -> None:
            if seq in self._pending and reply is not None and self._acked(reply, seq):
                self._finish(seq)
                self.stats.tcp_acks += 1

        def give_up() -> None:
            self._finish(seq)
            # Lifeguard: nacks from the helpers show our own links work; missing ones do not.
            self._adjust_awareness(len(asked) - nacks[0] if asked else 1)
            self._suspect(Suspect(m.name, m.incarnation, self.name))

        pending = self._pending[seq] = _Pending(on_ack, on_nack)
        pending.timers += [
            self.clock.call_later(self.timing.probe_timeout, indirect),
            # A third direct try halfway to the end: its ack still has half the slack to come.
            self.clock.call_later((self.timing.probe_timeout + interval) / 2, ping_again),
            self.clock.call_later(interval, give_up),
        ]
        msgs: list[Message] = [Ping(seq, m.name)]
        if m.state is MemberState.SUSPECT:  # give it the chance to refute at once
            msgs.append(Suspect(m.name, m.incarnation, self.name))
        self._send(m.addr, msgs)

    def _finish(self, seq: int) -> None:
        pending = self._pending.pop(seq, None)
        if pending is not None:
            for t in pending.timers:
                t.cancel()

    def _gossip_tick(self) -> float:
        if len(self._queue):
            now = self.clock.now()
            targets = [
                m
                for m in self.members.values()
                if m.state not in GONE or now - m.since < self.timing.gossip_to_dead
            ]
            for m in self.rng.sample(targets, min(self.timing.gossip_nodes, len(targets))):
                self._send(m.addr, [], require_piggyback=True)
        return self.timing.gossip_interval

    def _push_pull_tick(self) -> float:
        live = [m for m in self.members.values() if m.state is MemberState.ALIVE]
        dead = [m for m in self.members.values() if m.state is MemberState.DEAD]
        # One live peer for anti-entropy, and one dead one: after a partition both sides hold
        # the other dead, and only a direct exchange lets them learn it and refute.
        for group in (live, dead):
            if group:
                self._sync(self.rng.choice(group).addr)
        return self.timing.push_pull_every(self.live_count())

    def _sync(self, addr: Addr) -> None:
        """Anti-entropy: swap only the buckets of members where we and the peer differ.

        Summary → the peer's members of the differing buckets → ours of them back → the
        peer's where it still differs (it refuted what we sent, say). The same outcome as
        swapping full state, for 8 bytes a bucket of about 8 members when nothing changed.
        """
        records = self._records()
        b = bucket_count(len(records))

        def on_delta(reply: bytes | None) -> None:
            self.stats.push_pulls += 1
            remote = self._stream_reply(reply, Delta)
            if remote is None or any(i >= b for i in remote.buckets):
                self.stats.push_pull_failures += 1
                return
            self._merge(remote)
            if remote.buckets:
                mine = in_buckets(self._records(), remote.buckets, b)
                push = self._seal(Delta(self.name, mine, remote.buckets))
                self.transport.exchange(addr, push, on_pushed)

        def on_pushed(reply: bytes | None) -> None:
            remote = self._stream_reply(reply, Delta)
            if remote is None:
                self.stats.push_pull_failures += 1
            else:
                self._merge(remote)

        self.transport.exchange(addr, self._seal(Summary(self.name, hashes(records, b))), on_delta)

    # --- sending --------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _send(self, addr: Addr, msgs: list[Message], require_piggyback: bool = False) -> None:
        budget = self.timing.udp_max_bytes - OVERHEAD - len(encode(Packet(self.name, msgs))) - 3
        # A receiver refuses a packet of more than MAX_MESSAGES: never send one.
        extra = self._queue.take(
            budget, self.timing.retransmit_limit(self.live_count()), MAX_MESSAGES - len(msgs)
        )
        if require_piggyback and not extra:
            return
        data = self.keyring.seal(encode(Packet(self.name, [*msgs, *extra])), self.clock.wall())
        self.stats.packets_out += 1
        self.stats.bytes_out += len(data)
        self.transport.send(addr, data)

    def _alive_msg(self) -> Alive:
        return Alive(self.name, self.incarnation, self.host, self.port)

    def _broadcast(self, update: Update) -> None:
        self._queue.put(update)

    # --- receiving ------------------------------------------------------------------------

    def _open(self, data: bytes, limit: int) -> bytes | None:
        """The plaintext of a sealed blob, or None after counting why it was dropped."""
        if len(data) > limit:
            self.stats.drop("oversized")
            return None
        try:
            nonce, sent, payload = self.keyring.open(data)
            self._replay.check(nonce, sent, self.clock.wall())
        except Dropped as d:
            self.stats.drop(d.reason)
            return None
        return payload

    def handle_packet(self, data: bytes, src: Addr) -> None:
        """One datagram from the network; anything wrong with it is dropped and counted."""
        self.stats.packets_in += 1
        self.stats.bytes_in += len(data)
        packet = self._read_packet(data)
        if packet is None:
            return
        if packet.sender == self.name:
            self.stats.drop("from_self")
            return
        if not self.running:
            return
        for msg in packet.messages:
            self._dispatch(msg, packet.sender, src)

    def _dispatch(self, msg: Message, sender: str, src: Addr) -> None:
        match msg:
            case Ping(seq, target):
                if target != self.name:
                    self.stats.drop("wrong_target")
                    return
                self._send(src, [Ack(seq)])
            case IndirectPing(seq, target, host, port):
                self._relay_probe(seq, target, (host, port), src)
            case Ack(seq):
                pending = self._pending.get(seq)
                if pending is None:
                    self.stats.late_acks += 1
                else:
                    pending.on_ack()
            case Nack(seq):
                pending = self._pending.get(seq)
                if pending is not None and pending.on_nack is not None:
                    pending.on_nack()
            case Alive():
                self._alive(msg)
            case Suspect():
                self._suspect(msg)
            case Dead():
                self._dead(msg)
            case Digest():
                self._digest(msg)

    def _relay_probe(self, seq: int, target: str, addr: Addr, requester: Addr) -> None:
        mine = self._next_seq()

        def on_ack() -> None:
            self._finish(mine)
            self._send(requester, [Ack(seq)])

        def silence() -> None:
            self._finish(mine)
            self._send(requester, [Nack(seq)])

        pending = self._pending[mine] = _Pending(on_ack)
        pending.timers.append(self.clock.call_later(self.timing.probe_timeout, silence))
        self._send(addr, [Ping(mine, target)])

    def handle_stream(self, data: bytes) -> bytes | None:
        """A TCP request: merge a push-pull and answer with our state, or ack a ping.

        None: close the stream without an answer.
        """
        payload = self._open(data, MAX_STREAM_BYTES)
        if payload is None:
            return None
        try:
            request = decode_stream(payload)
        except msgspec.DecodeError:
            self.stats.drop("malformed")
            return None
        if not self.running:
            return None
        if isinstance(request, StreamPing):
            if request.target != self.name:
                self.stats.drop("wrong_target")
                return None
            return self._seal(Packet(self.name, [Ack(request.seq)]))
        if isinstance(request, Summary):
            records = self._records()
            diff = differing(records, request.hashes)
            if diff is None:
                self.stats.drop("malformed")
                return None
            b, buckets = diff
            return self._seal(Delta(self.name, in_buckets(records, buckets, b), buckets))
        self._merge(request)
        if isinstance(request, Delta):  # a delta exchange's last part: what we know better
            sent = {r.node: record_hash(r) for r in request.members}
            newer = [
                r for r in self._records() if r.node in sent and sent[r.node] != record_hash(r)
            ]
            return self._seal(Delta(self.name, newer, request.buckets))
        return self._pushpull_blob()

    def _acked(self, reply: bytes, seq: int) -> bool:
        """Whether a stream's reply is our Ack for `seq`."""
        packet = self._read_packet(reply)
        return packet is not None and any(
            isinstance(m, Ack) and m.seq == seq for m in packet.messages
        )

    def _read_packet(self, data: bytes) -> Packet | None:
        """A datagram's (or a TCP probe reply's) packet, or None after counting the drop."""
        payload = self._open(data, self.timing.udp_max_bytes)
        if payload is None:
            return None
        try:
            return decode_packet(payload)
        except msgspec.DecodeError:
            self.stats.drop("malformed")
            return None

    # --- state changes --------------------------------------------------------------------

    def _set_state(self, m: Member, state: MemberState) -> None:
        old = m.state
        if old is state:
            return
        m.state = state
        m.since = self.clock.now()
        self._gone += (state in GONE) - (old in GONE)
        if state is not MemberState.SUSPECT and m.suspicion is not None:
            if m.suspicion.timer is not None:
                m.suspicion.timer.cancel()
            m.suspicion = None
        if self.on_change:
            self.on_change(m, old)

    def _alive(self, a: Alive) -> None:
        if a.node == self.name:
            if a.incarnation > self.incarnation and not self.leaving:
                # A record of ours from an earlier life outranks what we say now: move past it.
                self.incarnation = a.incarnation + 1
                self._broadcast(self._alive_msg())
            return
        m = self.members.get(a.node)
        if m is None:
            m = self.members[a.node] = Member(
                a.node, a.host, a.port, a.incarnation, MemberState.ALIVE, self.clock.now()
            )
            self._probe_order.insert(self.rng.randrange(len(self._probe_order) + 1), a.node)
            if self.on_change:
                self.on_change(m, None)
            self._broadcast(a)
            return
        if a.incarnation <= m.incarnation:
            return
        m.incarnation, m.host, m.port = a.incarnation, a.host, a.port
        self._set_state(m, MemberState.ALIVE)
        self._broadcast(a)

    def _suspect(self, s: Suspect) -> None:
        if s.node == self.name:
            if not self.leaving and s.incarnation >= self.incarnation:  # older: already refuted
                self._refute(s.incarnation)
            return
        m = self.members.get(s.node)
        if m is None or s.incarnation < m.incarnation or m.state in GONE:
            return
        sus = m.suspicion
        if m.state is MemberState.SUSPECT and sus is not None and s.incarnation == sus.incarnation:
            remaining = sus.confirm(s.sender, self.clock.now())
            if remaining is not None:
                self._arm(m, remaining)
                self._broadcast(s)
            return
        m.incarnation = s.incarnation
        self._set_state(m, MemberState.SUSPECT)
        if m.suspicion is not None and m.suspicion.timer is not None:
            m.suspicion.timer.cancel()
        n = self.live_count()
        k = self.timing.suspicion_mult - 2
        if n - 2 < k:  # too few members to expect confirmations: use the minimum at once
            k = 0
        lo = self.timing.suspicion_min(n)
        m.suspicion = Suspicion(
            s.incarnation, k, lo, self.timing.suspicion_max_mult * lo, self.clock.now(), {s.sender}
        )
        self._arm(m, m.suspicion.timeout())
        self.stats.suspicions += 1
        self._broadcast(s)

    def _arm(self, m: Member, delay: float) -> None:
        sus = m.suspicion
        assert sus is not None
        if sus.timer is not None:
            sus.timer.cancel()

        def expire() -> None:
            if m.state is MemberState.SUSPECT and m.suspicion is sus:
                self._dead(Dead(m.name, sus.incarnation, self.name))

        sus.timer = self.clock.call_later(delay, expire)

    def _dead(self, d: Dead) -> None:
        if d.node == self.name:
            if not self.leaving and d.incarnation >= self.incarnation:
                self._refute(d.incarnation)
            return
        m = self.members.get(d.node)
        if m is None or d.incarnation < m.incarnation or m.state in GONE:
            return
        m.incarnation = d.incarnation
        left = d.sender == d.node
        self._set_state(m, MemberState.LEFT if left else MemberState.DEAD)
        if not left:
            self.stats.deaths += 1
        self._broadcast(d)

    def _refute(self, accused: int) -> None:
        self.incarnation = max(self.incarnation, accused) + 1
        self.stats.refutations += 1
        self._adjust_awareness(1)  # being suspected hints that our own links are slow
        self._broadcast(self._alive_msg())

    def _adjust_awareness(self, delta: int) -> None:
        self.awareness = min(max(self.awareness + delta, 0), self.timing.awareness_max - 1)

    def _digest(self, d: Digest) -> None:
        m = self.members.get(d.node)
        if m is None or (m.digest is not None and d.version <= m.digest.version):
            return
        m.digest, m.digest_at = d, self.clock.now()
        if len(d.body) <= MAX_DIGEST_BYTES:
            self._broadcast(d)

    # --- push-pull ------------------------------------------------------------------------

    def _records(self) -> list[MemberRecord]:
        """Every member we know, ourselves first."""
        me = MemberRecord(
            self.name,
            self.incarnation,
            MemberState.LEFT if self.leaving else MemberState.ALIVE,
            self.host,
            self.port,
            self.digest,
        )
        return [me, *(m.record() for m in self.members.values())]

    def _pushpull_blob(self) -> bytes:
        return self._seal(PushPull(self.name, self._records()))

    def _seal(self, obj: Packet | Stream) -> bytes:
        """Encrypt what goes out on a stream (counted as sent)."""
        blob = self.keyring.seal(encode(obj), self.clock.wall())
        self.stats.bytes_out += len(blob)
        return blob

    def _merge_reply(self, reply: bytes | None) -> bool:
        remote = self._stream_reply(reply, PushPull)
        if remote is not None:
            self._merge(remote)
        return remote is not None

    def _stream_reply(self, reply: bytes | None, kind: type[R]) -> R | None:
        """A peer's answer of the expected kind, or None (no answer, or dropped and counted)."""
        if reply is None:
            return None
        self.stats.bytes_in += len(reply)
        payload = self._open(reply, MAX_STREAM_BYTES)
        if payload is None:
            return None
        try:
            remote = decode_stream(payload)
        except msgspec.DecodeError:
            remote = None
        if not isinstance(remote, kind):
            self.stats.drop("malformed")
            return None
        return remote

    def _merge(self, remote: PushPull | Delta) -> None:
        for r in remote.members:
            if r.state is MemberState.ALIVE:
                self._alive(Alive(r.node, r.incarnation, r.host, r.port))
            elif r.state is MemberState.LEFT:
                self._dead(Dead(r.node, r.incarnation, r.node))
            else:
                # Hearsay of a death only makes us suspect: we may know better in time.
                self._suspect(Suspect(r.node, r.incarnation, remote.sender))
            if r.digest is not None and r.digest.node == r.node:
                self._digest(r.digest)

"""An in-process network of Membership nodes on a virtual clock.

Loss, latency, partitions, crashed and paused nodes; deterministic for a given seed.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from cairn.gossip.clock import Addr
from cairn.gossip.keyring import Keyring
from cairn.gossip.membership import Membership
from cairn.gossip.messages import MemberState
from cairn.gossip.profiles import LAN, Timing

EPOCH = 1_800_000_000.0  # the simulated wall clock starts here
SIM_KEY = bytes(range(32))
TCP_SYN_RTO = 1.0  # Linux: the first SYN retransmission after 1 s (RFC 6298's initial RTO)
TCP_MIN_RTO = 0.2  # Linux's TCP_RTO_MIN, what a lost data segment costs on a fast LAN


class _Event:
    __slots__ = ("cancelled", "fn")

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class SimClock:
    """Virtual time: events run in (time, insertion) order, never in parallel."""

    def __init__(self) -> None:
        self.t = 0.0
        self._heap: list[tuple[float, int, _Event]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self.t

    def wall(self) -> float:
        return EPOCH + self.t

    def call_later(self, delay: float, fn: Callable[[], None]) -> _Event:
        ev = _Event(fn)
        heapq.heappush(self._heap, (self.t + max(0.0, delay), next(self._order), ev))
        return ev

    def run_until(self, t_end: float, stop: Callable[[], bool] | None = None) -> bool:
        """Run events up to `t_end`; with `stop`, return True as soon as it holds."""
        while self._heap and self._heap[0][0] <= t_end:
            t, _, ev = heapq.heappop(self._heap)
            if ev.cancelled:
                continue
            self.t = t
            ev.fn()
            if stop is not None and stop():
                return True
        self.t = max(self.t, t_end)
        return stop is not None and stop()


class _NodeClock:
    """One node's view of the clock: while it is paused, its timers wait for the resume."""

    def __init__(self, sim: SimNode) -> None:
        self.sim = sim
        self.clock = sim.net.clock

    def now(self) -> float:
        return self.clock.t

    def wall(self) -> float:
        return self.clock.wall()

    def call_later(self, delay: float, fn: Callable[[], None]) -> _Event:
        def fire() -> None:
            if ev.cancelled:  # cancelled while it waited for a resume
                return
            if self.sim.paused:
                self.sim.deferred.append(fire)
            else:
                fn()

        ev = self.clock.call_later(delay, fire)
        return ev


class _NodeTransport:
    def __init__(self, sim: SimNode) -> None:
        self.sim = sim

    def send(self, addr: Addr, data: bytes) -> None:
        self.sim.net.deliver(self.sim, addr, data)

    def exchange(
        self,
        addr: Addr,
        data: bytes,
        done: Callable[[bytes | None], None],
        timeout: float | None = None,
    ) -> None:
        self.sim.net.stream(self.sim, addr, data, done, timeout)


@dataclass
class SimNode:
    """One simulated machine."""

    net: SimNetwork
    name: str
    addr: Addr
    member: Membership = field(init=False)
    crashed: bool = False
    paused: bool = False
    deferred: list[Callable[[], None]] = field(default_factory=list)
    recv_loss: float = 0.0


class SimNetwork:
    """N nodes on one virtual LAN."""

    def __init__(
        self,
        seed: int = 0,
        timing: Timing = LAN,
        loss: float = 0.0,
        latency: tuple[float, float] = (0.0005, 0.002),
        cluster: str = "sim",
    ) -> None:
        self.clock = SimClock()
        self.seed = seed
        self.rng = random.Random(seed)
        self.timing = timing
        self.loss = loss
        self.latency = latency
        self.cluster = cluster
        self.nodes: dict[str, SimNode] = {}
        self.by_addr: dict[Addr, SimNode] = {}
        self.blocked: set[frozenset[str]] = set()
        # Tests may drop chosen datagrams: (source, destination, sealed bytes) -> drop it?
        self.drop: Callable[[str, str, bytes], bool] | None = None
        self.packets = 0

    # --- building -------------------------------------------------------------------------

    def add(self, name: str, key: bytes = SIM_KEY, start: bool = True) -> SimNode:
        """A new node; started nodes join the first node."""
        i = len(self.nodes)
        node = SimNode(self, name, (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 8471))
        node.member = Membership(
            name,
            node.addr,
            self.timing,
            Keyring([key], self.cluster),
            _NodeClock(node),
            _NodeTransport(node),
            random.Random(f"{self.seed}:{name}"),
        )
        self.nodes[name] = node
        self.by_addr[node.addr] = node
        if start:
            self.start(node)
        return node

    def start(self, node: SimNode, join: list[str] | None = None) -> None:
        """Start a node and join it to the named nodes (default: the first one)."""
        node.member.start()
        seeds = join if join is not None else [n for n in self.nodes if n != node.name][:1]
        node.member.join([self.nodes[s].addr for s in seeds], lambda _n: None)

    def build(self, n: int, settle: float = 0.0) -> list[SimNode]:
        """N started nodes, named n0..n{n-1}; optionally run `settle` seconds."""
        nodes = [self.add(f"n{i}") for i in range(n)]
        if settle:
            self.run(settle)
        return nodes

    # --- faults ---------------------------------------------------------------------------

    def crash(self, name: str) -> None:
        """The node stops dead: no timers, no packets."""
        node = self.nodes[name]
        node.crashed = True
        node.member.stop()

    def pause(self, name: str) -> None:
        """SIGSTOP: packets to it wait in its socket buffer, its timers wait too."""
        self.nodes[name].paused = True

    def resume(self, name: str) -> None:
        """SIGCONT: everything that waited runs now, late."""
        node = self.nodes[name]
        node.paused = False
        waiting, node.deferred = node.deferred, []
        for fn in waiting:
            self.clock.call_later(0, fn)

    def block(self, a: str, b: str) -> None:
        """Cut the link between two nodes, both ways, UDP and TCP."""
        self.blocked.add(frozenset((a, b)))

    def isolate(self, name: str) -> None:
        """Partition one node from every other."""
        for other in self.nodes:
            if other != name:
                self.block(name, other)

    def heal(self) -> None:
        self.blocked.clear()

    # --- delivery -------------------------------------------------------------------------

    def _cut(self, src: SimNode, dst: SimNode | None) -> bool:
        return (
            dst is None
            or src.crashed
            or dst.crashed
            or frozenset((src.name, dst.name)) in self.blocked
        )

    def _delay(self) -> float:
        lo, hi = self.latency
        return lo + (hi - lo) * self.rng.random()

    def deliver(self, src: SimNode, addr: Addr, data: bytes) -> None:
        self.packets += 1
        dst = self.by_addr.get(addr)
        if self._cut(src, dst) or self.rng.random() < self.loss:
            return
        assert dst is not None
        if self.drop is not None and self.drop(src.name, dst.name, data):
            return
        if dst.recv_loss and self.rng.random() < dst.recv_loss:
            return

        def arrive() -> None:
            if dst.crashed:
                return
            if dst.paused:
                dst.deferred.append(arrive)
            else:
                dst.member.handle_packet(data, src.addr)

        self.clock.call_later(self._delay(), arrive)

    def stream(
        self,
        src: SimNode,
        addr: Addr,
        data: bytes,
        done: Callable[[bytes | None], None],
        timeout: float | None = None,
    ) -> None:
        """TCP: the same loss as datagrams, paid in retransmission time instead of drops."""
        limit = (
            self.timing.tcp_timeout if timeout is None else min(timeout, self.timing.tcp_timeout)
        )
        fail = lambda: done(None)  # noqa: E731
        dst = self.by_addr.get(addr)
        if self._cut(src, dst) or (dst is not None and dst.paused):
            self.clock.call_later(limit, fail)
            return
        assert dst is not None
        there = 1 - (1 - self.loss) * (1 - dst.recv_loss)
        back = 1 - (1 - self.loss) * (1 - src.recv_loss)
        # The handshake repeats while SYN or SYN-ACK is lost; then the request's segment.
        request = self._segment(1 - (1 - there) * (1 - back), TCP_SYN_RTO, limit) + self._delay()
        request += self._segment(there, TCP_MIN_RTO, limit)
        if request >= limit:
            self.clock.call_later(limit, fail)
            return

        def serve() -> None:
            reply = None if dst.crashed else dst.member.handle_stream(data)
            delay = limit - request if reply is None else self._segment(back, TCP_MIN_RTO, limit)
            if request + delay >= limit:
                self.clock.call_later(limit - request, fail)
            else:
                self.clock.call_later(delay, lambda: done(reply))

        self.clock.call_later(request, serve)

    def _segment(self, loss: float, rto: float, limit: float) -> float:
        """How long one segment takes to arrive: lost tries cost an RTO each, doubling."""
        spent = 0.0
        while self.rng.random() < loss and spent < limit:
            spent += rto
            rto *= 2
        return spent + self._delay()

    # --- running and reading --------------------------------------------------------------

    def run(self, seconds: float, until: Callable[[], bool] | None = None) -> bool:
        """Advance the clock; with `until`, stop early once it holds (returns whether it did)."""
        return self.clock.run_until(self.clock.t + seconds, until)

    def live(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if not n.crashed]

    def view(self, observer: str, subject: str) -> MemberState | None:
        """What `observer` thinks of `subject`."""
        m = self.nodes[observer].member.members.get(subject)
        return m.state if m else None

    def converged(self) -> bool:
        """Every live node sees every other live node alive."""
        live = self.live()
        return all(
            self.view(a.name, b.name) is MemberState.ALIVE for a in live for b in live if a is not b
        )

    def all_see(self, subject: str, *states: MemberState) -> bool:
        """Every live node other than `subject` sees it in one of `states`."""
        return all(self.view(n.name, subject) in states for n in self.live() if n.name != subject)

"""Node power: the suspend policy and whom to wake, on the gossip simulator."""

from __future__ import annotations

from cairn.gossip import digest as digests
from cairn.gossip.digest import SUSPENDED, ModelDigest, NodeDigest, PeerView, wake_targets
from cairn.gossip.messages import MemberState
from cairn.gossip.sim import SimNetwork, SimNode
from cairn.policy.power import may_suspend

IDLE_AFTER = 600.0


def node_digest(models: dict[str, str], mac: str, power: str = "on") -> NodeDigest:
    return NodeDigest(
        api_port=8470,
        version="0.1.0",
        generation=None,
        load1=0.0,
        memory_available=0,
        memory_total=0,
        gpu_celsius=None,
        gpu_util=None,
        models={m: ModelDigest(state, 4, 0, 0, 16) for m, state in models.items()},
        power=power,
        mac=mac,
    )


def views(net: SimNetwork, observer: str) -> list[PeerView]:
    out = []
    for m in net.nodes[observer].member.members.values():
        d = digests.decode(m.digest.body) if m.digest else None
        out.append(PeerView(m.name, m.state, d))
    return out


class Machine:
    """A simulated node with models and a MAC, which can suspend and be woken."""

    def __init__(self, net: SimNetwork, node: SimNode, models: dict[str, str], mac: str):
        self.net, self.node, self.models, self.mac = net, node, models, mac
        self.suspended = False
        self.publish()

    def publish(self, power: str = "on") -> None:
        self.node.member.set_digest(digests.encode(node_digest(self.models, self.mac, power)))

    def consider(self) -> bool:
        """One policy round while idle and asleep; suspend if it may."""
        ok, _why = may_suspend(
            self.node.name, list(self.models), 2 * IDLE_AFTER, IDLE_AFTER, True,
            views(self.net, self.node.name),
        )  # fmt: skip
        if ok:
            self.publish(SUSPENDED)
            self.node.member.leave()
            self.suspended = True
        return ok

    def wake(self) -> None:
        """The magic packet arrived: the machine resumes where it stopped."""
        self.suspended = False
        self.node.member.resume()
        self.publish()


def cluster(models: list[dict[str, str]]) -> tuple[SimNetwork, list[Machine]]:
    net = SimNetwork(seed=7)
    nodes = net.build(len(models))
    machines = [
        Machine(net, n, m, f"02:00:00:00:00:{i:02x}")
        for i, (n, m) in enumerate(zip(nodes, models, strict=True))
    ]
    assert net.run(30, net.converged)
    return net, machines


def test_the_lowest_named_server_of_each_model_stays_up() -> None:
    net, (n0, n1, n2) = cluster([{"a": "ready"}, {"a": "ready", "b": "asleep"}, {"a": "asleep"}])
    net.run(5)  # digests spread
    results = [m.consider() for m in (n0, n1, n2)]
    # n0 is the first server of a; n1 the only one of b; n2's a is served by n0.
    assert results == [False, False, True]
    assert net.run(10, lambda: net.all_see("n2", MemberState.LEFT))
    seen = {p.name: p for p in views(net, "n0")}
    d = seen["n2"].digest
    assert d is not None and d.power == SUSPENDED and d.mac == n2.mac


def test_a_needed_model_wakes_its_suspended_node_by_its_mac() -> None:
    net, (n0, n1) = cluster([{"a": "ready", "b": "ready"}, {"b": "asleep"}])
    net.run(5)
    assert [n0.consider(), n1.consider()] == [False, True]
    assert net.run(10, lambda: net.all_see("n1", MemberState.LEFT))

    # n0's own b fails: b is now only on the suspended n1; a request for it at n0 wakes n1.
    n0.models["b"] = "failed"
    n0.publish()
    targets = wake_targets("b", views(net, "n0"))
    assert targets == [("n1", n1.mac)]
    assert wake_targets("a", views(net, "n0")) == []
    n1.wake()
    assert net.run(10, lambda: net.all_see("n1", MemberState.ALIVE))
    net.run(5)
    assert not n1.consider()  # the only working server of b now: it stays up
    d = next(p.digest for p in views(net, "n0") if p.name == "n1")
    assert d is not None and d.power == "on"


def test_no_suspend_while_used_or_awake() -> None:
    peer = PeerView("a0", MemberState.ALIVE, node_digest({"m": "ready"}, "02:00:00:00:00:01"))
    assert may_suspend("b0", ["m"], IDLE_AFTER, IDLE_AFTER, True, [peer])[0]
    assert not may_suspend("b0", ["m"], IDLE_AFTER - 1, IDLE_AFTER, True, [peer])[0]
    assert not may_suspend("b0", ["m"], IDLE_AFTER, IDLE_AFTER, False, [peer])[0]
    gone = PeerView("a0", MemberState.DEAD, peer.digest)
    assert not may_suspend("b0", ["m"], IDLE_AFTER, IDLE_AFTER, True, [gone])[0]
    ok, why = may_suspend("a0", ["m"], IDLE_AFTER, IDLE_AFTER, True, [peer])
    assert not ok and "no live peer before 'a0'" in why

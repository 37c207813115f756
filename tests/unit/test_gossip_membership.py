"""The SWIM + Lifeguard state machine, driven through the deterministic simulator."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cairn.gossip.clock import Addr, Transport
from cairn.gossip.keyring import Keyring
from cairn.gossip.membership import Membership
from cairn.gossip.messages import Alive, Dead, MemberState, Ping, Suspect, decode_packet
from cairn.gossip.profiles import LAN, suspicion_remaining
from cairn.gossip.sim import SIM_KEY, SimNetwork

ALIVE, SUSPECT, DEAD, LEFT = MemberState


def cluster(n: int, seed: int = 1, loss: float = 0.0) -> SimNetwork:
    net = SimNetwork(seed=seed, loss=loss)
    net.build(n)
    assert net.run(30, net.converged), "cluster did not converge"
    return net


def test_nodes_that_join_one_seed_converge() -> None:
    net = SimNetwork(seed=3)
    net.build(8)
    assert net.run(10, net.converged)
    assert all(len(n.member.members) == 7 for n in net.live())


def test_a_crashed_node_is_declared_dead_by_every_other() -> None:
    net = cluster(6)
    net.crash("n2")
    crashed_at = net.clock.t
    bound = LAN.suspicion_max_mult * LAN.suspicion_min(6) + 2 * LAN.probe_interval
    assert net.run(bound, lambda: net.all_see("n2", DEAD))
    assert net.clock.t - crashed_at <= bound
    assert net.converged()  # nobody else was hurt


def test_same_seed_same_history() -> None:
    def history(seed: int) -> tuple[float, int]:
        net = cluster(7, seed=seed, loss=0.1)
        net.crash("n4")
        net.run(60, lambda: net.all_see("n4", DEAD))
        return net.clock.t, net.packets

    assert history(11) == history(11)
    assert history(11) != history(12)


def test_suspected_node_refutes_with_a_higher_incarnation() -> None:
    net = cluster(5)
    before = net.nodes["n1"].member.incarnation
    net.isolate("n1")
    assert net.run(10, lambda: net.all_see("n1", SUSPECT))
    net.heal()
    # The partition was shorter than the suspicion timeout: n1 hears it is suspected and refutes.
    assert net.run(10, lambda: net.all_see("n1", ALIVE))
    assert net.nodes["n1"].member.incarnation > before
    assert net.nodes["n1"].member.stats.refutations >= 1
    assert sum(n.member.stats.deaths for n in net.live()) == 0


def test_a_node_declared_dead_rejoins_after_the_partition_heals() -> None:
    net = cluster(5)
    net.isolate("n1")
    assert net.run(60, lambda: net.all_see("n1", DEAD))
    net.heal()
    # Push-pull with dead members tells each side the other holds it dead; both refute.
    assert net.run(2 * LAN.push_pull_interval, net.converged)


def test_confirmations_shorten_suspicion() -> None:
    # 10 nodes: suspicion starts at the maximum (6 * 4 s) and falls toward 4 s as the
    # suspicions of other members arrive; without confirmations it would take 24 s.
    net = cluster(10)
    net.crash("n5")
    hi = LAN.suspicion_max_mult * LAN.suspicion_min(10)
    assert net.run(hi, lambda: net.all_see("n5", DEAD))
    took = net.clock.t
    net2 = cluster(10)
    for n in net2.live():  # the same crash, but no suspicion can reach anyone else
        for m in net2.live():
            if n is not m:
                net2.block(n.name, m.name)
    net2.crash("n5")
    assert not net2.run(took - 0.5, lambda: net2.all_see("n5", DEAD))


def test_remaining_suspicion_time_falls_with_each_confirmation() -> None:
    lo, hi, k = 4.0, 24.0, 2
    times = [suspicion_remaining(n, k, 0.0, lo, hi) for n in range(k + 2)]
    assert times[0] == hi
    assert times[0] > times[1] > times[2] == lo
    assert times[3] == lo  # never below the minimum
    assert suspicion_remaining(1, k, 5.0, lo, hi) == pytest.approx(times[1] - 5.0)


def test_a_node_that_leaves_is_left_not_dead() -> None:
    net = cluster(5)
    net.nodes["n3"].member.leave()
    net.nodes["n3"].crashed = True
    assert net.run(5, lambda: net.all_see("n3", LEFT))
    assert sum(n.member.stats.deaths for n in net.live()) == 0


def test_paused_node_is_suspected_and_comes_back_alive() -> None:
    net = cluster(5)
    net.pause("n4")
    assert net.run(10, lambda: net.all_see("n4", SUSPECT))
    net.resume("n4")
    assert net.run(10, lambda: net.all_see("n4", ALIVE))


def test_wrong_key_never_joins() -> None:
    net = cluster(4)
    stranger = net.add("x", key=bytes(32))
    net.run(20)
    assert all(net.view(n.name, "x") is None for n in net.live() if n is not stranger)
    assert stranger.member.members == {}
    assert net.nodes["n0"].member.stats.dropped.get("decrypt", 0) >= 1


def test_lifeguard_awareness_rises_for_a_node_that_hears_nothing() -> None:
    net = cluster(6)
    deaf = net.nodes["n2"]
    deaf.recv_loss = 1.0  # its probes all fail, and so do the helpers' nacks
    net.run(20)
    # The others are accused by the deaf node and refute, which costs them some health too;
    # but only the deaf one has seen every probe fail without a nack.
    assert deaf.member.awareness == LAN.awareness_max - 1
    assert all(n.member.awareness < deaf.member.awareness for n in net.live() if n is not deaf)


def test_a_node_reachable_only_over_tcp_is_never_suspected() -> None:
    net = cluster(5)
    walled = net.nodes["n3"]
    # UDP dropped both ways, as by a misconfigured firewall; TCP still passes.
    net.drop = lambda src, dst, _data: "n3" in (src, dst)
    suspicions = sum(n.member.stats.suspicions for n in net.live())
    net.run(60)
    # Every probe of it fails over UDP and succeeds over TCP (memberlist's fallback ping).
    assert all(net.view(n.name, "n3") is ALIVE for n in net.live() if n is not walled)
    assert sum(n.member.stats.tcp_acks for n in net.live() if n is not walled) >= 30
    assert walled.member.incarnation == 0
    # Its own probes fail the same way; the others stay alive in its eyes too.
    assert all(net.view("n3", n.name) is ALIVE for n in net.live() if n is not walled)
    assert sum(n.member.stats.suspicions for n in net.live()) == suspicions


def test_a_lost_ping_is_sent_again_before_anyone_else_is_asked() -> None:
    net = cluster(2)  # no one to ask for an indirect probe
    n0 = net.nodes["n0"].member
    lost = [0]

    def drop_the_first_ping(src: str, dst: str, data: bytes) -> bool:
        if src != "n0" or dst != "n1" or lost[0]:
            return False
        packet = decode_packet(Keyring([SIM_KEY], "sim").open(data)[2])
        lost[0] = any(isinstance(m, Ping) for m in packet.messages)
        return bool(lost[0])

    net.drop = drop_the_first_ping
    net.run(LAN.probe_interval * 3)
    assert lost[0] == 1
    # The second direct ping got its ack over UDP: no TCP fallback, no suspicion.
    assert n0.stats.tcp_acks == 0 and n0.stats.suspicions == 0


class NoStreams:
    """A transport whose TCP never gets through."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner

    def send(self, addr: Addr, data: bytes) -> None:
        self.inner.send(addr, data)

    def exchange(
        self,
        addr: Addr,
        data: bytes,
        done: Callable[[bytes | None], None],
        timeout: float | None = None,
    ) -> None:
        done(None)


def test_a_probe_pings_three_times_before_it_suspects() -> None:
    net = cluster(2)  # no one to ask for an indirect probe
    n0 = net.nodes["n0"].member
    n0.transport = NoStreams(n0.transport)
    sent: dict[int, list[float]] = {}

    def drop_two_pings_a_probe(src: str, dst: str, data: bytes) -> bool:
        if src != "n0" or dst != "n1":
            return False
        packet = decode_packet(Keyring([SIM_KEY], "sim").open(data)[2])
        seqs = [m.seq for m in packet.messages if isinstance(m, Ping)]
        for seq in seqs:
            sent.setdefault(seq, []).append(net.clock.t)
        return any(len(sent[seq]) <= 2 for seq in seqs)

    net.drop = drop_two_pings_a_probe
    net.run(LAN.probe_interval * 4)
    probes = sorted(sent.values())[:-1]  # the last may still be under way
    assert len(probes) >= 2
    # At the start, at the probe timeout, and halfway from there to the end of the probe.
    third = (LAN.probe_timeout + LAN.probe_interval) / 2
    for times in probes:
        assert [round(t - times[0], 9) for t in times] == [0.0, LAN.probe_timeout, third]
    # Only the third got through, in time: no suspicion.
    assert n0.stats.suspicions == 0 and n0.stats.tcp_acks == 0


def test_a_stale_accusation_does_not_make_a_node_refute_again(node: Membership) -> None:
    node._suspect(Suspect("n0", 0, "n1"))
    assert node.incarnation == 1 and node.stats.refutations == 1
    # The same suspicion keeps arriving from other members' queues: it is already answered.
    node._suspect(Suspect("n0", 0, "n2"))
    node._dead(Dead("n0", 0, "n2"))
    assert node.incarnation == 1 and node.stats.refutations == 1
    node._suspect(Suspect("n0", 1, "n2"))
    assert node.incarnation == 2 and node.stats.refutations == 2


# --- incarnation ordering, message by message -----------------------------------------------


@pytest.fixture
def node() -> Membership:
    net = cluster(3)
    return net.nodes["n0"].member


def test_stale_suspicion_is_ignored(node: Membership) -> None:
    node._alive(Alive("n1", 5, *node.members["n1"].addr))
    node._suspect(Suspect("n1", 4, "n2"))
    assert node.members["n1"].state is ALIVE


def test_alive_at_the_same_incarnation_does_not_clear_suspicion(node: Membership) -> None:
    inc = node.members["n1"].incarnation
    node._suspect(Suspect("n1", inc, "n2"))
    node._alive(Alive("n1", inc, *node.members["n1"].addr))
    assert node.members["n1"].state is SUSPECT
    node._alive(Alive("n1", inc + 1, *node.members["n1"].addr))
    assert node.members["n1"].state is ALIVE


def test_dead_at_the_same_incarnation_beats_alive(node: Membership) -> None:
    inc = node.members["n1"].incarnation
    node._dead(Dead("n1", inc, "n2"))
    assert node.members["n1"].state is DEAD
    node._alive(Alive("n1", inc, *node.members["n1"].addr))
    assert node.members["n1"].state is DEAD
    node._alive(Alive("n1", inc + 1, *node.members["n1"].addr))
    assert node.members["n1"].state is ALIVE


def test_suspicion_of_ourselves_is_refuted_above_the_accused_incarnation(
    node: Membership,
) -> None:
    node._suspect(Suspect("n0", 41, "n1"))
    assert node.incarnation == 42
    node._dead(Dead("n0", 50, "n1"))
    assert node.incarnation == 51
    assert node.stats.refutations == 2


def test_a_long_queue_never_makes_a_packet_receivers_refuse() -> None:
    # 300 suspicions queued at once (a storm after a partition): each packet may carry only as
    # many updates as a receiver accepts, or every ping and ack would be dropped as malformed.
    net = cluster(3)
    sender, receiver = net.nodes["n0"].member, net.nodes["n1"].member
    for i in range(300):
        sender._queue.put(Suspect(f"x{i}", 0, "n0"))
    before = receiver.stats.dropped.get("malformed", 0)
    net.run(5)
    assert receiver.stats.dropped.get("malformed", 0) == before
    assert net.converged()


def test_live_count_follows_state_changes() -> None:
    net = cluster(5)
    m = net.nodes["n0"].member
    assert m.live_count() == 5
    net.crash("n4")
    assert net.run(60, lambda: net.all_see("n4", DEAD))
    assert m.live_count() == 4 == 1 + sum(x.state not in (DEAD, LEFT) for x in m.members.values())
    net.nodes["n4"].crashed = False
    net.start(net.nodes["n4"])
    assert net.run(60, net.converged)
    assert m.live_count() == 5

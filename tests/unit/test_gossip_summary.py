"""Delta anti-entropy: bucket hashes, and exchanges that swap only what differs (simulator)."""

from __future__ import annotations

import msgspec

from cairn.gossip import summary
from cairn.gossip.keyring import Keyring
from cairn.gossip.membership import Member, Membership
from cairn.gossip.messages import (
    HASH_BYTES,
    Delta,
    MemberRecord,
    MemberState,
    PushPull,
    Stream,
    Summary,
    decode_stream,
    encode,
)
from cairn.gossip.profiles import LAN
from cairn.gossip.sim import SIM_KEY, SimNetwork

ALIVE, SUSPECT, DEAD, LEFT = MemberState


def records(n: int) -> list[MemberRecord]:
    return [MemberRecord(f"n{i}", 0, ALIVE, f"10.0.{i // 250}.{i % 250}", 8471) for i in range(n)]


def cluster(n: int) -> SimNetwork:
    net = SimNetwork(seed=5)
    net.build(n)
    assert net.run(30, net.converged)
    return net


def test_about_eight_members_a_bucket() -> None:
    assert [summary.bucket_count(n) for n in (1, 8, 9, 100, 1000)] == [1, 1, 2, 16, 128]
    assert summary.bucket_count(10**6) == 512  # the most a receiver accepts


def test_one_changed_record_changes_exactly_its_bucket() -> None:
    rs = records(100)
    b = summary.bucket_count(len(rs))
    assert summary.differing(rs, summary.hashes(rs, b)) == (b, [])
    changed = [*rs[:7], msgspec.structs.replace(rs[7], incarnation=1), *rs[8:]]
    assert summary.differing(changed, summary.hashes(rs, b)) == (b, [summary.bucket_of("n7", b)])
    # A member one side lacks changes its bucket too.
    assert summary.differing(rs[:-1], summary.hashes(rs, b)) == (
        b,
        [summary.bucket_of("n99", b)],
    )


def test_hash_counts_that_are_no_power_of_two_are_refused() -> None:
    rs = records(5)
    for count in (3, 6, 1024):
        assert summary.differing(rs, bytes(HASH_BYTES * count)) is None
    assert summary.differing(rs, bytes(HASH_BYTES * 4 + 1)) is None


def summary_of(m: Membership) -> bytes:
    rs = m._records()
    return m._seal(Summary(m.name, summary.hashes(rs, summary.bucket_count(len(rs)))))


def answer(m: Membership, request: bytes) -> tuple[Stream, int]:
    reply = m.handle_stream(request)
    assert reply is not None
    return decode_stream(Keyring([SIM_KEY], "sim").open(reply)[2]), len(reply)


def test_gone_members_never_make_buckets_differ() -> None:
    rs = records(40)
    b = summary.bucket_count(len(rs))
    dead = [*rs[:-1], msgspec.structs.replace(rs[-1], state=DEAD)]
    left = [*rs[:-1], msgspec.structs.replace(rs[-1], state=LEFT, incarnation=1)]
    # One holds n39 dead, one left, one never heard of it (joined later): all agree.
    assert summary.differing(dead, summary.hashes(left, b)) == (b, [])
    assert summary.differing(rs[:-1], summary.hashes(dead, b)) == (b, [])
    # Whoever still holds it alive differs, and gets the bucket with the dead record in it.
    diff = summary.differing(rs, summary.hashes(dead, b))
    assert diff == (b, [summary.bucket_of("n39", b)])
    assert msgspec.structs.replace(rs[-1], state=DEAD) in summary.in_buckets(dead, diff[1], b)


def test_peers_that_agree_swap_hashes_and_no_member() -> None:
    net = cluster(40)
    a, b = net.nodes["n0"].member, net.nodes["n1"].member
    request = summary_of(a)
    state, size = answer(b, request)
    assert state == Delta(b.name, [], [])
    # Both ways: 8 hashes and an empty answer, where full state is two lists of 40 members.
    assert len(request) + size < len(encode(PushPull(a.name, a._records()))) / 4


def test_only_the_bucket_that_differs_travels() -> None:
    net = cluster(40)
    a, b = net.nodes["n0"].member, net.nodes["n1"].member
    b.members["n3"].incarnation = 7  # as if a had missed n3's refutation
    state, _ = answer(b, summary_of(a))
    nb = summary.bucket_count(40)
    assert isinstance(state, Delta) and state.buckets == [summary.bucket_of("n3", nb)]
    names = {r.node for r in state.members}
    assert "n3" in names and len(names) < 40 / 2
    assert all(summary.bucket_of(n, nb) == state.buckets[0] for n in names)


def test_each_side_learns_what_only_the_other_knew() -> None:
    net = cluster(40)
    a, b = net.nodes["n0"].member, net.nodes["n1"].member
    # As if each had missed one update: b heard n3 refute (incarnation 7), a met x9.
    b.members["n3"].incarnation = 7
    a.members["x9"] = Member("x9", "10.9.9.9", 8471, 2, ALIVE, net.clock.t)
    a._sync((b.host, b.port))
    net.run(0.1)
    assert a.members["n3"].incarnation == 7
    assert "x9" in b.members and b.members["x9"].incarnation == 2
    assert a.stats.push_pulls == 1 and a.stats.push_pull_failures == 0


def test_the_opener_hears_a_refutation_in_the_same_exchange() -> None:
    net = cluster(5)
    a, b = net.nodes["n0"].member, net.nodes["n1"].member
    a._set_state(a.members["n1"], DEAD)  # never said so: no gossip carries it
    net.drop = lambda src, dst, _data: {src, dst} == {"n0", "n1"}  # nor n1's refutation
    a._sync((b.host, b.port))
    # n1 learns it is held dead from what n0 sends, refutes, and says so in its last answer.
    assert net.run(0.05, lambda: net.view("n0", "n1") is ALIVE)
    assert b.incarnation == 1 and a.members["n1"].incarnation == 1


def test_a_node_held_dead_by_one_peer_only_hears_it_and_refutes() -> None:
    # n0 alone holds n1 dead and never said so (no gossip): only anti-entropy can carry it
    # to n1, which refutes; then n0 sees it alive again.
    net = cluster(5)
    a = net.nodes["n0"].member
    a._set_state(a.members["n1"], DEAD)
    assert net.run(2 * LAN.push_pull_interval, lambda: net.view("n0", "n1") is ALIVE)
    assert net.nodes["n1"].member.stats.refutations == 1

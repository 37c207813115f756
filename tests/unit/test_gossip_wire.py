"""Gossip packets on the wire: sealing, key rotation, replay, and fuzzed input that must only
ever be dropped and counted."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cairn.gossip import keyring, summary
from cairn.gossip import messages as wire
from cairn.gossip.keyring import Dropped, Keyring, KeyringError, ReplayGuard
from cairn.gossip.membership import Membership
from cairn.gossip.sim import SIM_KEY, SimNetwork

OLD, NEW = bytes(range(32)), bytes(range(100, 132))
FIXTURE_OK = [HealthCheck.function_scoped_fixture]  # the receiver is module-scoped on purpose


def test_sealed_packet_opens_with_the_same_key_and_cluster() -> None:
    ring = Keyring([OLD], "prod")
    nonce, sent, payload = ring.open(ring.seal(b"hello", 123.0))
    assert (sent, payload) == (123.0, b"hello")
    assert len(nonce) == 12
    with pytest.raises(Dropped, match="decrypt"):
        Keyring([OLD], "test").open(ring.seal(b"hello", 0.0))  # another cluster's label
    with pytest.raises(Dropped, match="decrypt"):
        Keyring([NEW], "prod").open(ring.seal(b"hello", 0.0))


def test_rotation_every_installed_key_opens_only_the_primary_seals() -> None:
    old_only, both, new_primary = (
        Keyring([OLD], "c"),
        Keyring([OLD, NEW], "c"),
        Keyring([NEW, OLD], "c"),
    )
    # Step 1: install NEW everywhere as secondary; step 2: make it primary; old nodes still read.
    assert both.open(new_primary.seal(b"x", 0))[2] == b"x"
    assert old_only.open(both.seal(b"x", 0))[2] == b"x"
    assert new_primary.open(old_only.seal(b"x", 0))[2] == b"x"
    with pytest.raises(Dropped):
        old_only.open(new_primary.seal(b"x", 0))  # why NEW must be installed before it leads


CHAT = "/v1/chat/completions"


def _check(
    ring: Keyring,
    header: str,
    seen: ReplayGuard,
    path: str = CHAT,
    at: float = 100.0,
    to: str = "b",
) -> None:
    ring.check_request(header.partition(" ")[2], "POST", path, "a", to, at, seen)


def test_a_signed_hop_is_good_once_for_its_request_within_the_window() -> None:
    ring, seen = Keyring([OLD], "c"), ReplayGuard()
    header = ring.sign_request("POST", CHAT, "a", "b", 100.0)
    assert header.startswith("Cairn-Peer t=100.000,n=")
    _check(ring, header, seen)
    with pytest.raises(Dropped, match="replayed"):
        _check(ring, header, seen)
    fresh = ring.sign_request("POST", CHAT, "a", "b", 100.0)
    with pytest.raises(Dropped, match="bad signature"):
        _check(ring, fresh, seen, path="/v1/embeddings")
    with pytest.raises(Dropped, match="bad signature"):
        ring.check_request(fresh.partition(" ")[2], "POST", CHAT, "mallory", "b", 100.0, seen)
    with pytest.raises(Dropped, match="replay_window"):
        _check(ring, fresh, seen, at=131.0)
    for junk in ("", "t=x,n=1,s=2", "t=nan,n=1,s=2", "t=1,n=,s=2", "t=1,n=1,s=\u00e9"):
        with pytest.raises(Dropped, match="malformed"):
            ring.check_request(junk, "POST", CHAT, "a", "b", 1.0, seen)


def test_a_hop_signed_for_one_node_opens_no_other() -> None:
    ring, seen = Keyring([OLD], "c"), ReplayGuard()
    header = ring.sign_request("POST", CHAT, "a", "b", 100.0)
    with pytest.raises(Dropped, match="bad signature"):
        _check(ring, header, ReplayGuard(), to="c")  # sniffed on its way to b, replayed to c
    _check(ring, header, seen, to="b")


def _sign_with(ring: Keyring, nonce: str) -> str:
    """A valid signature over a hand-made nonce (what a key holder's own client could send)."""
    return keyring._sign(ring._request_keys[0], "POST", CHAT, "a", "b", "1.000", nonce)


def test_a_peer_nonce_is_exactly_as_long_as_the_signer_makes_it() -> None:
    ring, seen = Keyring([OLD], "c"), ReplayGuard()
    fields = dict(
        f.split("=", 1)
        for f in ring.sign_request("POST", CHAT, "a", "b", 1.0).split(" ")[1].split(",")
    )
    assert len(fields["n"]) == 24
    for nonce in ("A" * 23, "A" * 25, "A" * 4000, "\u00e9" * 24):
        # Signed with the right key: the length alone refuses it, before it takes cache room.
        sig = _sign_with(ring, nonce)
        with pytest.raises(Dropped, match="malformed"):
            ring.check_request(f"t=1.000,n={nonce},s={sig}", "POST", CHAT, "a", "b", 1.0, seen)
    assert not seen._seen


def test_a_hop_signed_with_any_installed_key_is_accepted() -> None:
    seen = ReplayGuard()
    _check(
        Keyring([NEW, OLD], "c"),
        Keyring([OLD], "c").sign_request("POST", CHAT, "a", "b", 100),
        seen,
    )
    with pytest.raises(Dropped, match="bad signature"):
        _check(
            Keyring([NEW], "c"), Keyring([OLD], "c").sign_request("POST", CHAT, "a", "b", 100), seen
        )


def test_key_file_primary_first_comments_skipped(tmp_path: Path) -> None:
    f = tmp_path / "keys"
    f.write_text(
        f"# rotated 2026-11\n{base64.b64encode(NEW).decode()}\n\n{base64.b64encode(OLD).decode()}\n"
    )
    assert Keyring.from_file(f, "c").keys == [NEW, OLD]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "no key"),
        ("not base64!\n", ":1: not base64"),
        ("# c\n" + base64.b64encode(b"short").decode(), ":2: key is 5 bytes"),
    ],
)
def test_bad_key_file_names_the_line(tmp_path: Path, text: str, problem: str) -> None:
    f = tmp_path / "keys"
    f.write_text(text)
    with pytest.raises(KeyringError, match=problem):
        Keyring.from_file(f, "c")


def test_missing_key_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match="cannot read the key file"):
        Keyring.from_file(tmp_path / "absent", "c")


def test_replay_guard_refuses_repeats_and_old_packets() -> None:
    guard = ReplayGuard(window=30)
    guard.check(b"a" * 12, 100.0, 101.0)
    with pytest.raises(Dropped, match="replayed"):
        guard.check(b"a" * 12, 100.0, 102.0)
    with pytest.raises(Dropped, match="replay_window"):
        guard.check(b"b" * 12, 50.0, 102.0)
    with pytest.raises(Dropped, match="replay_window"):
        guard.check(b"c" * 12, float("nan"), 102.0)
    guard.check(b"a" * 12, 140.0, 140.0)  # forgotten once outside the window: harmless now


def test_a_nonce_sent_ahead_of_our_clock_is_kept_until_it_leaves_the_window() -> None:
    guard = ReplayGuard(window=30)
    guard.check(b"a" * 12, 125.0, 100.0)  # the sender's clock runs 25 s ahead
    guard.check(b"b" * 12, 130.0, 131.0)  # another packet, later: eviction runs
    with pytest.raises(Dropped, match="replayed"):
        guard.check(b"a" * 12, 125.0, 131.0)  # still inside the window of its send time
    with pytest.raises(Dropped, match="replay_window"):
        guard.check(b"a" * 12, 125.0, 155.5)  # outside it: the window refuses it now


# --- the node's receive path ----------------------------------------------------------------


@pytest.fixture(scope="module")
def receiver() -> Membership:
    net = SimNetwork(seed=5)
    net.build(3)
    assert net.run(10, net.converged)
    return net.nodes["n0"].member


def _dropped(m: Membership) -> int:
    return sum(m.stats.dropped.values())


def test_a_replayed_packet_is_dropped_and_counted(receiver: Membership) -> None:
    ring = Keyring([SIM_KEY], "sim")
    data = ring.seal(wire.encode(wire.Packet("n1", [wire.Ack(999_999)])), receiver.clock.wall())
    receiver.handle_packet(data, ("10.0.0.1", 8471))
    before = receiver.stats.dropped.get("replayed", 0)
    receiver.handle_packet(data, ("10.0.0.1", 8471))
    assert receiver.stats.dropped["replayed"] == before + 1


def test_names_with_a_trailing_newline_are_malformed() -> None:
    with pytest.raises(msgspec.DecodeError):
        wire.decode_packet(wire.encode(wire.Packet("n1\n", [wire.Ack(1)])))


def test_oversized_datagram_is_dropped_before_decryption(receiver: Membership) -> None:
    before = receiver.stats.dropped.get("oversized", 0)
    receiver.handle_packet(b"\x01" * 2000, ("10.0.0.1", 8471))
    assert receiver.stats.dropped["oversized"] == before + 1


VALID = [
    wire.Packet("n1", [wire.Ping(7, "n0"), wire.Alive("n9", 3, "10.0.0.9", 8471)]),
    wire.Packet("n2", [wire.Suspect("n1", 0, "n2"), wire.Digest("n1", 5, b"{}")]),
    wire.Packet("n1", [wire.IndirectPing(8, "n2", "10.0.0.2", 8471), wire.Nack(3)]),
    wire.Packet("n2", [wire.Dead("n7", 1, "n7"), wire.Ack(1)]),
]


@st.composite
def plaintexts(draw: st.DrawFn, valid: Sequence[wire.Packet | wire.Stream] = VALID) -> bytes:
    """Random bytes, or a valid message with some of its bytes changed, cut or extended."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=300))
    data = bytearray(wire.encode(draw(st.sampled_from(valid))))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data) + draw(st.binary(max_size=8))


def _expected_drops(plain: bytes, receiver: str) -> int:
    """Drops the receiver must count: the packet, or each ping in it meant for someone else."""
    try:
        packet = wire.decode_packet(plain)
    except msgspec.DecodeError:
        return 1
    if packet.sender == receiver:
        return 1
    return sum(isinstance(m, wire.Ping) and m.target != receiver for m in packet.messages)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(plain=plaintexts())
def test_fuzzed_sealed_packets_are_handled_or_counted(receiver: Membership, plain: bytes) -> None:
    # Sealed with the right key, so the decoder and the handlers see the damage.
    data = Keyring([SIM_KEY], "sim").seal(plain, receiver.clock.wall())
    before = _dropped(receiver)
    receiver.handle_packet(data, ("10.0.0.1", 8471))
    assert _dropped(receiver) - before == _expected_drops(plain, receiver.name)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=1600))
def test_random_datagrams_are_dropped_and_counted(receiver: Membership, data: bytes) -> None:
    before = _dropped(receiver)
    receiver.handle_packet(data, ("10.0.0.1", 8471))
    assert _dropped(receiver) == before + 1


STREAMS: list[wire.Stream] = [
    wire.PushPull("n1", [wire.MemberRecord("n9", 2, wire.MemberState.ALIVE, "10.0.0.9", 8471)]),
    wire.PushPull("n2", [wire.MemberRecord("n1", 0, wire.MemberState.DEAD, "10.0.0.1", 8471)]),
    wire.Delta("n3", [wire.MemberRecord("n3", 1, wire.MemberState.ALIVE, "10.0.0.3", 8471)], [1]),
    wire.StreamPing("n1", 11, "n0"),
    wire.StreamPing("n2", 12, "n1"),
    wire.Summary("n1", bytes(16)),
    wire.Summary("n2", bytes(range(24))),  # three hashes: no power of two, dropped
]


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(plain=plaintexts(STREAMS) | plaintexts())
def test_fuzzed_streams_are_answered_or_counted(receiver: Membership, plain: bytes) -> None:
    data = Keyring([SIM_KEY], "sim").seal(plain, receiver.clock.wall())
    before = _dropped(receiver)
    reply = receiver.handle_stream(data)
    try:
        request = wire.decode_stream(plain)
    except msgspec.DecodeError:
        request = None
    if isinstance(request, wire.StreamPing) and request.target == receiver.name:
        assert reply is not None and receiver._acked(reply, request.seq)
    elif isinstance(request, wire.PushPull | wire.Delta) or (
        isinstance(request, wire.Summary) and summary.differing([], request.hashes) is not None
    ):
        assert reply is not None
        state = wire.decode_stream(Keyring([SIM_KEY], "sim").open(reply)[2])
        # A join gets full state; a delta exchange's parts get a delta.
        kind = wire.PushPull if isinstance(request, wire.PushPull) else wire.Delta
        assert isinstance(state, kind) and state.sender == receiver.name
    else:  # damaged, or a ping for someone else
        assert reply is None
        assert _dropped(receiver) == before + 1

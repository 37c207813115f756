"""The gossip wire format: msgpack arrays of tagged structs, bounded and validated on decode."""

from __future__ import annotations

import enum
from typing import Annotated, TypeVar

import msgspec

# \Z, not $: msgspec matches with re.search, where $ also accepts a trailing newline.
NodeName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")]
# Peers are addressed by IP literal: a hostname would mean a blocking lookup per datagram.
Host = Annotated[str, msgspec.Meta(pattern=r"^[0-9A-Fa-f:.]{2,45}\Z")]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Seq = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]
Incarnation = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]

T = TypeVar("T")

MAX_DIGEST_BYTES = 512  # a digest above this travels by push-pull only, never piggybacked
MAX_MESSAGES = 64  # per packet
MAX_MEMBERS = 4096  # per push-pull
MAX_BUCKETS = 512  # per summary: members are hashed into buckets of about 8
HASH_BYTES = 8
Bucket = Annotated[int, msgspec.Meta(ge=0, lt=MAX_BUCKETS)]


class MemberState(enum.StrEnum):
    """SWIM states; a member only moves forward unless a higher incarnation says otherwise."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


class _Msg(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """Base of every message: encoded as a compact array with a small integer tag."""


class Ping(_Msg, frozen=True, tag=1):
    """Direct probe; `target` guards against a ping reaching a new owner of the address."""

    seq: Seq
    target: NodeName


class IndirectPing(_Msg, frozen=True, tag=2):
    """Ask a peer to probe `target` for us and relay the ack (or a nack when it gets none)."""

    seq: Seq
    target: NodeName
    host: Host
    port: Port


class Ack(_Msg, frozen=True, tag=3):
    """Answer to a ping with the prober's sequence number."""

    seq: Seq


class Nack(_Msg, frozen=True, tag=4):
    """An indirect prober heard nothing from the target: our own link is fine, theirs may not be."""

    seq: Seq


class Alive(_Msg, frozen=True, tag=5):
    """`node` is alive at `incarnation`, reachable at host:port."""

    node: NodeName
    incarnation: Incarnation
    host: Host
    port: Port


class Suspect(_Msg, frozen=True, tag=6):
    """`sender` suspects `node` at `incarnation`."""

    node: NodeName
    incarnation: Incarnation
    sender: NodeName


class Dead(_Msg, frozen=True, tag=7):
    """`sender` declares `node` dead; `sender == node` means a graceful leave."""

    node: NodeName
    incarnation: Incarnation
    sender: NodeName


class Digest(_Msg, frozen=True, tag=8):
    """`node`'s health digest, opaque here; a higher `version` replaces a lower one."""

    node: NodeName
    version: Annotated[int, msgspec.Meta(ge=0)]
    body: Annotated[bytes, msgspec.Meta(max_length=64 * 1024)]


Message = Ping | IndirectPing | Ack | Nack | Alive | Suspect | Dead | Digest
Update = Alive | Suspect | Dead | Digest  # what is disseminated (piggybacked or gossiped)


class Packet(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """One UDP datagram's plaintext: who sent it and what it carries."""

    sender: NodeName
    messages: Annotated[list[Message], msgspec.Meta(max_length=MAX_MESSAGES)]


class MemberRecord(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """One member in a push-pull exchange."""

    node: NodeName
    incarnation: Incarnation
    state: MemberState
    host: Host
    port: Port
    digest: Digest | None = None


class PushPull(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True, tag=16):
    """Full state, sent both ways over TCP when a node joins."""

    sender: NodeName
    members: Annotated[list[MemberRecord], msgspec.Meta(max_length=MAX_MEMBERS)]


class Summary(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True, tag=18):
    """Opens a delta exchange: a hash of each bucket of our member records (8 bytes each).

    The peer answers with a Delta of its members in the buckets whose hashes differ, naming
    them; we merge it and send ours of those buckets back in a Delta, answered by a Delta of
    what the peer still knows better (`cairn.gossip.summary`).
    """

    sender: NodeName
    hashes: Annotated[
        bytes, msgspec.Meta(min_length=HASH_BYTES, max_length=HASH_BYTES * MAX_BUCKETS)
    ]


class Delta(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True, tag=19):
    """A delta exchange's members: those of the named buckets (see Summary)."""

    sender: NodeName
    members: Annotated[list[MemberRecord], msgspec.Meta(max_length=MAX_MEMBERS)]
    buckets: Annotated[list[Bucket], msgspec.Meta(max_length=MAX_BUCKETS)]


class StreamPing(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True, tag=17):
    """A probe over TCP, sent beside the indirect probes; answered with a Packet holding an Ack."""

    sender: NodeName
    seq: Seq
    target: NodeName


Stream = PushPull | StreamPing | Summary | Delta  # what a TCP connection may open with


_packet_encoder = msgspec.msgpack.Encoder()
_packet_decoder = msgspec.msgpack.Decoder(Packet)
_stream_decoder: msgspec.msgpack.Decoder[Stream] = msgspec.msgpack.Decoder(Stream)


def encode(obj: Packet | Stream | Message) -> bytes:
    """The msgpack bytes of a packet, a push-pull state or a single message (for sizing)."""
    return _packet_encoder.encode(obj)


def decode_packet(data: bytes) -> Packet:
    """Decode and validate; any damage raises msgspec.DecodeError."""
    return _decode(_packet_decoder, data)


def decode_stream(data: bytes) -> Stream:
    """Decode and validate a stream's request or a push-pull reply; damage raises DecodeError."""
    return _decode(_stream_decoder, data)


def _decode(decoder: msgspec.msgpack.Decoder[T], data: bytes) -> T:
    try:
        return decoder.decode(data)
    except UnicodeDecodeError as err:  # msgspec lets invalid UTF-8 in a string through as this
        raise msgspec.DecodeError(f"invalid UTF-8: {err}") from None

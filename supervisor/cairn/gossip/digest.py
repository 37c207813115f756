"""A node's health digest: what peers need to route to it and to show it, in a few hundred bytes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import msgspec

from cairn.gossip.messages import MemberState

Small = Annotated[int, msgspec.Meta(ge=0, le=1 << 20)]
SUSPENDED = "suspended"  # `NodeDigest.power` of a node that left the cluster to suspend


class ModelDigest(msgspec.Struct, frozen=True, array_like=True):
    """One model's routing facts."""

    state: str
    slots: Small
    active: Small
    queued: Small
    queue: Small  # how many may wait

    def load(self) -> float:
        """Work per slot: the router picks the peer with the least."""
        return (self.active + self.queued) / max(1, self.slots)

    def has_room(self) -> bool:
        """Whether a request sent now would be taken (or queued) rather than refused."""
        return self.state in ("ready", "socket", "asleep") and self.queued < self.queue + (
            self.slots - self.active
        )


class NodeDigest(msgspec.Struct, frozen=True, array_like=True):
    """Everything a peer needs about this node; versioned by the gossip layer."""

    api_port: Annotated[int, msgspec.Meta(ge=1, le=65535)]
    version: str
    generation: int | None
    load1: float
    memory_available: int
    memory_total: int
    gpu_celsius: float | None
    gpu_util: float | None
    models: dict[str, ModelDigest]
    sleeping: list[str] = []
    incidents: int = 0
    power: str = "on"  # "suspended": it left to suspend; a magic packet to `mac` wakes it
    mac: str | None = None


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(NodeDigest)


def encode(d: NodeDigest) -> bytes:
    """The digest's wire form."""
    return _encoder.encode(d)


def decode(body: bytes) -> NodeDigest | None:
    """The digest, or None if a peer sent something this version cannot read."""
    try:
        return _decoder.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None


@dataclass(frozen=True)
class PeerView:
    """One member as the cluster sees it: its name, state and last digest."""

    name: str
    state: MemberState
    digest: NodeDigest | None


def wake_targets(model: str, peers: list[PeerView]) -> list[tuple[str, str]]:
    """(name, MAC) of suspended members that serve `model`, to send a magic packet to."""
    return [
        (p.name, p.digest.mac)
        for p in peers
        if p.state is MemberState.LEFT
        and p.digest is not None
        and p.digest.power == SUSPENDED
        and p.digest.mac is not None
        and model in p.digest.models
    ]

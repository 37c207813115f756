"""Node power: suspend a node the cluster does not need, and wake it with Wake-on-LAN.

Off by default (`[power] enable`). A node may suspend when it has served no request for
`idle_after` seconds, every sleepable unit on it is asleep, and each of its models is served by
a live peer whose name sorts before its own: the lowest-named server of every model stays up,
so two nodes never leave a model unserved by suspending at once on stale views. Before it
suspends it publishes `power = "suspended"` and its MAC in its digest and leaves the cluster;
a peer that gets a request for a model only suspended members serve sends their MACs a magic
packet and answers 503 with Retry-After. The digest fields and who is suspended are the
gossip layer's (`cairn.gossip.digest`); the packet is `cairn.system.wol`'s.
"""

from __future__ import annotations

from cairn.gossip.digest import SUSPENDED, PeerView
from cairn.gossip.messages import MemberState


def may_suspend(
    me: str,
    models: list[str],
    idle_for: float,
    idle_after: float,
    all_asleep: bool,
    peers: list[PeerView],
) -> tuple[bool, str]:
    """Whether this node may suspend now, and why (not)."""
    if idle_for < idle_after:
        return False, f"used {idle_for:.0f} s ago (suspends after {idle_after:g} s idle)"
    if not all_asleep:
        return False, "a sleepable unit is awake"
    for model in models:
        keepers = [
            p.name
            for p in peers
            if p.state is MemberState.ALIVE
            and p.name < me
            and p.digest is not None
            and p.digest.power != SUSPENDED
            and model in p.digest.models
            and p.digest.models[model].state != "failed"
        ]
        if not keepers:
            return False, f"no live peer before '{me}' serves '{model}'"
    return True, "idle, and every model is served by a peer that stays up"

"""Named timing profiles (memberlist's LAN, WAN and local defaults) and the SWIM formulas."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from cairn.config import Profile


@dataclass(frozen=True)
class Timing:
    """Every protocol knob; pick one with `Profile`, not one by one."""

    probe_interval: float
    probe_timeout: float
    indirect_checks: int
    suspicion_mult: int
    suspicion_max_mult: int
    retransmit_mult: int
    gossip_interval: float
    gossip_nodes: int
    gossip_to_dead: float
    push_pull_interval: float
    tcp_timeout: float
    awareness_max: int = 8
    udp_max_bytes: int = 1400  # one Ethernet frame, less IP/UDP headers and some slack

    def suspicion_min(self, n: int) -> float:
        """The memberlist bound: mult * max(1, log10 n) * probe_interval."""
        return self.suspicion_mult * max(1.0, math.log10(max(1, n))) * self.probe_interval

    def retransmit_limit(self, n: int) -> int:
        """How many times each update is sent: mult * ceil(log10(n + 1))."""
        return self.retransmit_mult * math.ceil(math.log10(n + 1))

    def push_pull_every(self, n: int) -> float:
        """Push-pull slows down past 32 members so total TCP load stays flat."""
        if n <= 32:
            return self.push_pull_interval
        return self.push_pull_interval * (math.ceil(math.log2(n) - math.log2(32)) + 1)


# memberlist's DefaultLANConfig; the other profiles are its differences.
LAN = Timing(
    probe_interval=1.0,
    probe_timeout=0.5,
    indirect_checks=3,
    suspicion_mult=4,
    suspicion_max_mult=6,
    retransmit_mult=4,
    gossip_interval=0.2,
    gossip_nodes=3,
    gossip_to_dead=30.0,
    push_pull_interval=30.0,
    tcp_timeout=10.0,
)
WAN = replace(  # DefaultWANConfig
    LAN,
    probe_interval=5.0,
    probe_timeout=3.0,
    suspicion_mult=6,
    gossip_interval=0.5,
    gossip_nodes=4,
    gossip_to_dead=60.0,
    push_pull_interval=60.0,
    tcp_timeout=30.0,
)
LOCAL = replace(  # DefaultLocalConfig
    LAN,
    probe_timeout=0.2,
    indirect_checks=1,
    suspicion_mult=3,
    retransmit_mult=2,
    gossip_interval=0.1,
    gossip_to_dead=15.0,
    push_pull_interval=15.0,
    tcp_timeout=1.0,
)
TIMINGS = {Profile.LAN: LAN, Profile.WAN: WAN, Profile.LOCAL: LOCAL}


def suspicion_remaining(n: int, k: int, elapsed: float, lo: float, hi: float) -> float:
    """Lifeguard: the timeout falls from `hi` toward `lo` as log(n + 1) / log(k + 1)."""
    frac = math.log(n + 1) / math.log(k + 1) if k > 0 else 1.0
    timeout = max(lo, hi - frac * (hi - lo))
    return timeout - elapsed

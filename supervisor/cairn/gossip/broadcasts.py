"""Updates waiting to be piggybacked: each sent a bounded number of times, newest per subject."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from cairn.gossip.messages import Digest, Update, encode


@dataclass
class _Queued:
    update: Update
    size: int
    order: int
    transmits: int = 0


@dataclass
class BroadcastQueue:
    """memberlist's TransmitLimitedQueue: fewest transmits first, newer before older."""

    _items: dict[tuple[str, str], _Queued] = field(default_factory=dict)
    _order: itertools.count[int] = field(default_factory=itertools.count)

    def __len__(self) -> int:
        return len(self._items)

    def put(self, update: Update) -> None:
        """Queue an update; it replaces any queued one about the same subject."""
        kind = "digest" if isinstance(update, Digest) else "member"
        self._items[(kind, update.node)] = _Queued(update, len(encode(update)), next(self._order))

    def take(self, budget: int, limit: int, max_items: int) -> list[Update]:
        """Up to `max_items` updates fitting in `budget` bytes; each retires after `limit` sends."""
        out: list[Update] = []
        if budget <= 0 or max_items <= 0 or not self._items:
            return out
        for key, q in sorted(self._items.items(), key=lambda kv: (kv[1].transmits, -kv[1].order)):
            if len(out) == max_items:
                break
            if q.size > budget:
                continue
            budget -= q.size
            out.append(q.update)
            q.transmits += 1
            if q.transmits >= limit:
                del self._items[key]
        return out

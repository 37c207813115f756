"""Delta anti-entropy: member records hashed into buckets, so peers swap only what differs.

Both sides of an exchange put each member in bucket `hash(name) mod b` (b a power of two the
opener picks, about 8 members a bucket) and hash each bucket as the XOR of its live records'
64-bit hashes. Two nodes that agree send one hash per bucket and nothing else; after a change
only the buckets it touched travel, instead of the whole member list every push-pull.

Dead and left members are left out of the hashes (but travel with their bucket): they are
news only to a node that still holds them live, whose hash differs anyway. Hashed, they would
differ for ever between a node that joined after a death (a join ignores dead strangers) and
one that saw it, or between "dead" and "left", until both reaped them an hour later.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable

from cairn.gossip.messages import HASH_BYTES, MAX_BUCKETS, MAX_MEMBERS, MemberRecord, MemberState

PER_BUCKET = 8
LIVE = (MemberState.ALIVE, MemberState.SUSPECT)


def bucket_count(members: int) -> int:
    """The power of two that puts about PER_BUCKET members in each bucket."""
    b = 1
    while b * PER_BUCKET < members and b < MAX_BUCKETS:
        b *= 2
    return b


def bucket_of(name: str, b: int) -> int:
    """Which of `b` buckets a member belongs to; the same on every node."""
    return _name_hash(name) & (b - 1)


@functools.lru_cache(maxsize=2 * MAX_MEMBERS)
def _name_hash(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "big")


def record_hash(r: MemberRecord) -> int:
    """A record's 64-bit hash: name, incarnation, state, address, digest version."""
    version = r.digest.version if r.digest is not None else -1
    key = f"{r.node}\0{r.incarnation}\0{r.state}\0{r.host}\0{r.port}\0{version}"
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=HASH_BYTES).digest(), "big")


def hashes(records: Iterable[MemberRecord], b: int) -> bytes:
    """One hash per bucket, packed: what a Summary carries."""
    acc = [0] * b
    for r in records:
        if r.state in LIVE:
            acc[bucket_of(r.node, b)] ^= record_hash(r)
    return b"".join(h.to_bytes(HASH_BYTES, "big") for h in acc)


def differing(records: list[MemberRecord], theirs: bytes) -> tuple[int, list[int]] | None:
    """The bucket count and the buckets where `records` differ from a peer's `theirs`.

    None when `theirs` is not a whole power-of-two number of hashes.
    """
    b, rest = divmod(len(theirs), HASH_BYTES)
    if rest or b == 0 or b & (b - 1) or b > MAX_BUCKETS:
        return None
    mine = hashes(records, b)
    step = HASH_BYTES
    return b, [
        i for i in range(b) if mine[i * step : (i + 1) * step] != theirs[i * step : (i + 1) * step]
    ]


def in_buckets(
    records: Iterable[MemberRecord], buckets: Iterable[int], b: int
) -> list[MemberRecord]:
    """The records that fall in `buckets`."""
    wanted = set(buckets)
    return [r for r in records if bucket_of(r.node, b) in wanted]

"""A bare gossip member (the real Membership on real sockets) that joins when told to.

Usage: python -m tests.harness.gossip_member NAME HOST PORT KEY_FILE CLUSTER JOIN_HOST JOIN_PORT

Starts a member at HOST:PORT and, for each line read on stdin, pushes-pulls with JOIN_HOST:
JOIN_PORT, printing `{"answered": n}` (1: the exchange went through, 0: it did not).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys

from cairn.config import Profile
from cairn.gossip.clock import LoopClock
from cairn.gossip.keyring import Keyring
from cairn.gossip.membership import Membership
from cairn.gossip.profiles import TIMINGS
from cairn.gossip.transport import SocketTransport


async def main() -> None:
    name, host, port, key, cluster, join_host, join_port = sys.argv[1:8]
    loop = asyncio.get_running_loop()
    timing = TIMINGS[Profile.LAN]
    transport = SocketTransport(timing.tcp_timeout)
    member = Membership(
        name,
        (host, int(port)),
        timing,
        Keyring.from_file(key, cluster),
        LoopClock(loop),
        transport,
        random.Random(),
    )
    await transport.start(host, int(port), member)
    member.start()
    while await loop.run_in_executor(None, sys.stdin.readline):
        done: asyncio.Future[int] = loop.create_future()
        member.join([(join_host, int(join_port))], done.set_result)
        print(json.dumps({"answered": await done}), flush=True)
    member.stop()
    await transport.close()


if __name__ == "__main__":
    asyncio.run(main())

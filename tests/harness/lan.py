"""A cluster's network without nodes: the host on a bridge, and bare client network namespaces."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any, Self

from . import cleanup, names, netns
from .cluster import _claim_id
from .errors import HarnessError, HarnessUnavailable


class Lan:
    """`with Lan(2) as lan:` the host at `lan.host_ip`, clients at `lan.clients[i]` (netns, ip).

    Nothing boots: a client is a network namespace with an address on the bridge, where a test
    runs plain processes (`lan.popen(i, argv)`) that reach the host over a real veth, from an
    address that is not this machine's. Torn down like a cluster, swept like one if orphaned.
    """

    def __init__(self, clients: int = 1) -> None:
        self.size = clients
        self.id: int | None = None
        self.host_ip = ""
        self.clients: list[tuple[str, str]] = []

    @staticmethod
    def require() -> None:
        """Raise HarnessUnavailable unless this host can make namespaces (root, `ip`)."""
        if os.geteuid() != 0 or shutil.which("ip") is None:
            raise HarnessUnavailable("a test network needs root and `ip` (iproute2)")

    def __enter__(self) -> Self:
        """Claim an id, make the bridge, the host's veth and each client's namespace."""
        self.require()
        with cleanup.global_lock():
            cleanup.sweep_locked()
            self.id = _claim_id()
            workdir = names.STATE_ROOT / names.cluster_name(self.id)
            workdir.mkdir()
            (workdir / "owner").write_text(cleanup.owner_token())
        try:
            self.host_ip = netns.setup_lan(self.id)
            self.clients = [netns.add_node(self.id, i) for i in range(self.size)]
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Delete everything the network had."""
        self.close()

    def close(self) -> None:
        """Delete the namespaces (their veths go with them), the host link and the state dir."""
        if self.id is None:
            return
        cid, self.id = self.id, None
        cleanup.destroy(cid, [])
        if left := cleanup.leftovers(cid):
            raise HarnessError(f"test network {cid} left behind: {left}")

    def popen(self, client: int, argv: list[str], **kwargs: Any) -> subprocess.Popen[str]:
        """Start a process inside client `client`'s namespace (text mode)."""
        ns = self.clients[client][0]
        return subprocess.Popen(["ip", "netns", "exec", ns, *argv], text=True, **kwargs)

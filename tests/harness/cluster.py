"""A cluster of N nodes on one bridge, torn down on exit, error, SIGINT or SIGTERM."""

from __future__ import annotations

import atexit
import logging
import os
import subprocess
import sys
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from . import cleanup, names, netns, rootfs
from .errors import HarnessError
from .node import Node

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
FileMap = Mapping[str, str | bytes]
_LIVE: weakref.WeakSet[Cluster] = weakref.WeakSet()


class Cluster:
    """N booted nodes, a bridge joining them, and a host veth onto the same subnet."""

    def __init__(
        self,
        n: int = 1,
        *,
        files: FileMap | None = None,
        node_files: Sequence[FileMap] | None = None,
        repo: Path | None = REPO,
        venv: Path | None = None,
        rootfs_dir: Path | None = None,
        ready_timeout: float = 60.0,
        stop_timeout: float = 10.0,
        nspawn_args: Sequence[str] = (),
    ) -> None:
        """Describe a cluster; start() (or `with`) boots it.

        files go to every node, node_files[i] to node i only (both read-only binds).
        repo and venv are bound read-only at their own paths; venv defaults to the
        running interpreter's venv, and its base interpreter is bound too unless /usr.
        """
        if n < 1:
            raise ValueError("a cluster needs at least one node")
        if node_files is not None and len(node_files) != n:
            raise ValueError(f"node_files has {len(node_files)} entries for {n} nodes")
        self.size = n
        self.files = dict(files or {})
        self.node_files = [dict(f) for f in node_files] if node_files else [{} for _ in range(n)]
        self.repo = repo
        self.venv = venv if venv is not None else _running_venv()
        self.rootfs_dir = rootfs_dir
        self.ready_timeout, self.stop_timeout = ready_timeout, stop_timeout
        self.nspawn_args = tuple(nspawn_args)
        self.id: int | None = None
        self.host_ip: str | None = None
        self.workdir: Path | None = None
        self.nodes: list[Node] = []
        self._guarded = False

    def __repr__(self) -> str:
        """Show the cluster's id and nodes."""
        return f"<Cluster {self.id} {self.nodes}>"

    @property
    def subnet(self) -> str:
        """Return the cluster's subnet in CIDR form."""
        if self.id is None:
            raise HarnessError("cluster not started")
        return f"{names.subnet_prefix(self.id)}.0/24"

    def __enter__(self) -> Self:
        """Boot the cluster."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Tear the cluster down; never mask an exception already propagating."""
        try:
            self.close()
        except HarnessError:
            if exc is None:
                raise
            log.exception("teardown of %r failed", self)

    def start(self) -> None:
        """Build/reuse the rootfs, create the network, boot every node and wait for it."""
        root = self.rootfs_dir or rootfs.ensure_rootfs()
        binds = self._binds()
        cleanup.SIGTERM_GUARD.acquire()
        self._guarded = True
        _LIVE.add(self)
        try:
            self._allocate()
            self._create_nodes(root, binds)
            for node in self.nodes:
                node.start()
            for node in self.nodes:
                node.wait_ready(self.ready_timeout)
        except BaseException:
            try:
                self.close()
            except HarnessError:  # keep the boot error; the teardown one is only logged
                log.exception("teardown after failed start of %r", self)
            raise

    def _allocate(self) -> None:
        """Sweep stale runs, then claim a free cluster id and record ourselves as owner."""
        with cleanup.global_lock():
            cleanup.sweep_locked()
            self.id = _claim_id()
            self.workdir = names.STATE_ROOT / names.cluster_name(self.id)
            self.workdir.mkdir()
            (self.workdir / "owner").write_text(cleanup.owner_token())
        self.host_ip = netns.setup_lan(self.id)
        log.info("cluster %s: subnet %s, workdir %s", self.id, self.subnet, self.workdir)

    def _create_nodes(self, root: Path, binds: list[Path]) -> None:
        """Create each node's netns and Node object."""
        assert self.id is not None and self.workdir is not None
        for index in range(self.size):
            ns, ip = netns.add_node(self.id, index)
            name = names.node_name(self.id, index)
            self.nodes.append(
                Node(
                    name=name,
                    ip=ip,
                    netns=ns,
                    rootfs=root,
                    workdir=self.workdir / name,
                    binds=binds,
                    files={**self.files, **self.node_files[index]},
                    nspawn_args=self.nspawn_args,
                )
            )

    def _binds(self) -> list[Path]:
        """Return host paths bound read-only at the same path: repo, venv, interpreter."""
        wanted = [p for p in (self.repo, self.venv) if p is not None]
        if self.venv is not None:
            base = _base_prefix(self.venv)
            if base != Path("/usr"):
                wanted.append(base)
        binds: list[Path] = []
        for path in sorted({p.resolve() for p in wanted}, key=lambda p: len(p.parts)):
            if not any(path.is_relative_to(b) for b in binds):
                binds.append(path)
        return binds

    def close(self) -> None:
        """Stop every node and delete the cluster's netns, links, cgroups and files."""
        with cleanup.signals_deferred():
            try:
                self._teardown()
            finally:
                _LIVE.discard(self)
                if self._guarded:
                    self._guarded = False
                    cleanup.SIGTERM_GUARD.release()

    def _teardown(self) -> None:
        """Stop nodes in parallel, then remove everything else; raise if anything is left."""
        if self.id is None:
            return
        cid, started = self.id, time.monotonic()
        errors: list[str] = []
        for node in self.nodes:
            cleanup.best_effort(errors, node.signal_stop)
        deadline = started + self.stop_timeout
        for node in self.nodes:
            cleanup.best_effort(errors, node.finish_stop, max(0.1, deadline - time.monotonic()))
        stray = list(cleanup.nspawn_processes_of(cid))
        cleanup.best_effort(errors, cleanup.destroy, cid, stray, self.stop_timeout)
        left = cleanup.leftovers(cid)
        log.info("cluster %s torn down in %.2f s", cid, time.monotonic() - started)
        self.id, self.nodes = None, []
        if errors or left:
            raise HarnessError(f"teardown of cluster {cid} failed: {errors}; left behind: {left}")


def _claim_id() -> int:
    """Claim the first free cluster id, starting from one derived from our pid."""
    start = os.getpid() % 254
    for offset in range(254):
        cid = (start + offset) % 254 + 1
        if netns.claim(names.lan_netns(cid)):
            return cid
    raise HarnessError("no free cluster id (254 clusters live?)")


def _running_venv() -> Path | None:
    """Return the venv of the running interpreter, or None outside a venv."""
    return Path(sys.prefix) if sys.prefix != sys.base_prefix else None


def _base_prefix(venv: Path) -> Path:
    """Return the base interpreter prefix that venv's python was created from."""
    if venv.resolve() == Path(sys.prefix).resolve():
        return Path(sys.base_prefix)
    out = subprocess.run(
        [str(venv / "bin/python"), "-c", "import sys; print(sys.base_prefix)"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip())


@atexit.register
def _close_live_clusters() -> None:
    """Last resort for clusters that were started without `with` and never closed."""
    for cluster in list(_LIVE):
        log.warning("closing %r at interpreter exit", cluster)
        try:
            cluster.close()
        except Exception:  # keep closing the others
            log.exception("closing %r failed", cluster)

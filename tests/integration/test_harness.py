"""The nspawn node harness boots real systemd nodes, networks them and always cleans up."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.harness import Cluster, HarnessError, leftovers, sweep, wait_until
from tests.harness.cleanup import nspawn_processes_of
from tests.harness.cluster import REPO
from tests.harness.fixtures import ClusterFactory, cluster_factory, require_or_skip  # noqa: F401

WHOAMI_PORT = 7000
UNITS = {
    "/etc/systemd/system/whoami.socket": f"""\
[Socket]
ListenStream={WHOAMI_PORT}
Accept=yes
""",
    "/etc/systemd/system/whoami@.service": """\
[Service]
ExecStart=/bin/cat /proc/sys/kernel/hostname
StandardInput=socket
StandardOutput=socket
""",
    "/etc/systemd/system/oneshot.service": """\
[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo oneshot-ran; echo done > /run/oneshot.out'
""",
    "/etc/systemd/system/sleeper.service": """\
[Service]
ExecStart=/bin/sleep infinity
""",
}
# A child Python that boots one node, reports its cluster id, then waits to be signalled.
# SIGINT gets Python's handler back: shells start background jobs with SIGINT ignored.
CHILD = """\
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.path.insert(0, sys.argv[1])
from tests.harness import Cluster
with Cluster(1) as cluster:
    print(cluster.id, flush=True)
    signal.pause()
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Two booted nodes with the test units, shared by the read-only checks."""
    require_or_skip()
    venv = Path(sys.prefix) if sys.prefix != sys.base_prefix else None
    files = dict(UNITS)
    if venv is not None:
        command = f"{venv}/bin/python -c 'import cairn, pydbus, systemd.daemon'"
        files["/etc/systemd/system/venv-import.service"] = (
            f"[Service]\nType=oneshot\nExecStart={command}\n"
        )
    with Cluster(2, files=files, venv=venv) as booted:
        yield booted


def test_nodes_boot_to_running(cluster: Cluster) -> None:
    """Every node's systemd reaches running with no failed units."""
    for node in cluster.nodes:
        assert node.system_state == "running", (node.failed_units(), node.journal())


def test_hostnames_are_distinct_node_names(cluster: Cluster) -> None:
    """Each node's hostname is its machine name."""
    hostnames = [node.exec(["hostname"]).stdout.strip() for node in cluster.nodes]
    assert hostnames == [node.name for node in cluster.nodes]
    assert len(set(hostnames)) == len(hostnames)


def test_files_are_bound_read_only(cluster: Cluster) -> None:
    """files= appear inside the node and cannot be changed from there."""
    node = cluster.nodes[0]
    assert (
        node.exec(["cat", "/etc/systemd/system/sleeper.service"]).stdout
        == UNITS["/etc/systemd/system/sleeper.service"]
    )
    write = node.exec(["sh", "-c", "echo x >> /etc/systemd/system/sleeper.service"], check=False)
    assert write.returncode != 0


def test_node_reaches_peer_over_bridge(cluster: Cluster) -> None:
    """Node 0 opens a TCP connection to a socket unit on node 1 and gets its hostname."""
    first, second = cluster.nodes
    second.start_unit("whoami.socket")
    probe = (
        "import socket; "
        f"print(socket.create_connection(('{second.ip}', {WHOAMI_PORT}), 5).recv(100).decode())"
    )
    answer = first.exec(["python3", "-c", probe]).stdout.strip()
    assert answer == second.name


def test_host_reaches_every_node(cluster: Cluster) -> None:
    """The test process connects to each node's IP directly."""
    for node in cluster.nodes:
        node.start_unit("whoami.socket")
        with socket.create_connection((node.ip, WHOAMI_PORT), timeout=5) as conn:
            assert conn.recv(100).decode().strip() == node.name


def test_oneshot_started_over_dbus_runs_and_goes_inactive(cluster: Cluster) -> None:
    """StartUnit on a oneshot runs it to completion; it ends inactive with result success."""
    node = cluster.nodes[0]
    node.start_unit("oneshot.service")
    unit = node.unit("oneshot.service")
    assert (unit.ActiveState, unit.Result) == ("inactive", "success")
    assert node.exec(["cat", "/run/oneshot.out"]).stdout == "done\n"
    assert "oneshot-ran" in node.journal("oneshot.service")


def test_service_goes_active_then_inactive(cluster: Cluster) -> None:
    """A long-running service is active with a MainPID after start, inactive after stop."""
    node = cluster.nodes[1]
    node.start_unit("sleeper.service")
    unit = node.wait_unit("sleeper.service", "active", timeout=10)
    assert unit.SubState == "running" and unit.MainPID > 0
    node.stop_unit("sleeper.service")
    assert node.wait_unit("sleeper.service", "inactive", timeout=10).MainPID == 0


def test_failed_command_raises_with_output(cluster: Cluster) -> None:
    """Node.exec raises HarnessError on a non-zero exit unless check=False."""
    node = cluster.nodes[0]
    with pytest.raises(HarnessError, match="exited 3"):
        node.exec(["sh", "-c", "echo oops >&2; exit 3"])
    assert node.exec(["false"], check=False).returncode == 1


def test_venv_interpreter_runs_inside_node(cluster: Cluster) -> None:
    """The host venv's python imports cairn, pydbus and systemd.daemon inside a node."""
    if cluster.venv is None:
        pytest.skip("tests are not running from a venv")
    imports = [str(cluster.venv / "bin/python"), "-c", "import cairn, pydbus, systemd.daemon"]
    if subprocess.run(imports, capture_output=True, check=False).returncode != 0:
        pytest.skip("the venv is not fully installed yet")
    node = cluster.nodes[0]
    node.start_unit("venv-import.service")
    unit = node.unit("venv-import.service")
    assert unit.Result == "success", node.journal("venv-import.service")


def test_restart_boots_the_node_again_with_a_fresh_overlay(cluster: Cluster) -> None:
    """restart() powers off and boots again: same name and IP, writes from before gone."""
    node = cluster.nodes[1]
    node.exec(["touch", "/var/tmp/before-restart"])
    node.restart()
    assert node.system_state == "running"
    assert node.exec(["hostname"]).stdout.strip() == node.name
    assert node.exec(["test", "-e", "/var/tmp/before-restart"], check=False).returncode == 1
    node.start_unit("whoami.socket")
    with socket.create_connection((node.ip, WHOAMI_PORT), timeout=5) as conn:
        assert conn.recv(100).decode().strip() == node.name


def test_kill_crashes_the_node_and_its_processes(cluster_factory: ClusterFactory) -> None:  # noqa: F811
    """kill() takes the node down at once: init is killed and reaped, nspawn has exited."""
    node = cluster_factory(1).nodes[0]
    leader = node.leader_pid
    node.kill()
    assert node.process is not None and node.process.returncode != 0
    assert not Path(f"/proc/{leader}").exists()


def test_context_exit_leaves_nothing_behind() -> None:
    """After the with block: no netns, veth, nspawn, cgroup or state dir of the cluster."""
    require_or_skip()
    with Cluster(2) as booted:
        cid, pids = booted.id, [n.process.pid for n in booted.nodes if n.process]
        assert cid is not None and leftovers(cid)
    assert leftovers(cid) == []
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)


def test_exception_inside_with_still_tears_down() -> None:
    """An exception raised in the with block propagates and the cluster is gone."""
    require_or_skip()
    cid = None
    with pytest.raises(RuntimeError, match="boom"), Cluster(1) as booted:
        cid = booted.id
        raise RuntimeError("boom")
    assert cid is not None and leftovers(cid) == []


def test_cluster_factory_fixture_tears_down(cluster_factory: ClusterFactory) -> None:  # noqa: F811
    """The fixture boots clusters on demand (teardown is checked by the tests above)."""
    booted = cluster_factory(1)
    assert booted.nodes[0].system_state == "running"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_test_process_tears_down(signum: signal.Signals) -> None:
    """SIGTERM or SIGINT to a process holding a cluster still removes everything."""
    require_or_skip()
    with _child_cluster() as (child, cid):
        child.send_signal(signum)
        child.wait(timeout=30)
    assert leftovers(cid) == []


def test_sweep_removes_leftovers_of_a_killed_run() -> None:
    """SIGKILL leaves netns behind (nspawn dies with its parent); the next sweep removes them."""
    require_or_skip()
    with _child_cluster() as (child, cid):
        child.kill()
        child.wait(timeout=10)
    wait_until(lambda: not nspawn_processes_of(cid), 15, what="orphaned nspawn to exit")
    assert leftovers(cid)
    sweep()
    assert leftovers(cid) == []


@contextmanager
def _child_cluster() -> Iterator[tuple[subprocess.Popen[str], int]]:
    """Run a Python that holds a one-node cluster; yield it and the cluster id."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(REPO)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line.strip():
            raise AssertionError(f"child cluster did not boot: {child.communicate()[1]}")
        yield child, int(line)
    finally:
        if child.poll() is None:
            child.terminate()  # its own teardown runs; a later sweep covers the rest
            child.wait(timeout=30)

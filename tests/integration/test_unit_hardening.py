"""The units' sandboxes as the modules read them: the daemon runs under its own, scores hold."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CAIRN_BIN, REPO
from tests.nix import need

MODULES = REPO / "modules"
# The files modules/supervisor.nix and modules/inference.nix read into serviceConfig.
CAIRN_HARDENING = (MODULES / "cairn-unit-hardening.conf").read_text()
MODEL_HARDENING = (MODULES / "model-unit-hardening.conf").read_text()
MODEL_GPU = (MODULES / "model-unit-gpu.conf").read_text()
ROLLBACK_HARDENING = (MODULES / "cairn-rollback-hardening.conf").read_text()

# The rest of each unit as the modules render it (NixOS cannot be evaluated here); none of
# these keys moves the exposure score but User=.
CAIRN_UNIT = f"""\
[Unit]
Description=Cairn supervisor

[Service]
Type=notify
NotifyAccess=main
ExecStart={CAIRN_BIN} run --config /etc/cairn/cairn.json
WatchdogSec=30s
Restart=no
TimeoutStopSec=10s
User=cairn
Group=cairn
StateDirectory=cairn
StateDirectoryMode=0750
WorkingDirectory=/var/lib/cairn
LoadCredential=gossip-key:/etc/cairn/gossip.key
"""
MODEL_UNIT = """\
[Unit]
Description=Cairn model worker %i

[Service]
Environment=HOME=/tmp
Type=notify
NotifyAccess=main
ExecStart=/run/current-system/sw/bin/cairn worker --config /etc/cairn/cairn.json --model %i
Restart=on-abnormal
TimeoutStopSec=10s
"""
ROLLBACK_UNIT = """\
[Unit]
Description=Cairn rollback to the last confirmed NixOS generation

[Service]
Type=oneshot
ExecStart=/run/current-system/sw/bin/cairn rollback-helper --config /etc/cairn/cairn.json
TimeoutStartSec=15min
"""
SYSUSERS = 'u cairn - "Cairn supervisor" /var/lib/cairn\n'
NETLINK_LINE = "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK\n"


# --- systemd-analyze security, offline, on the units as the modules write them ------------


def analyze(tmp_path: Path, name: str, *parts: str) -> tuple[float, list[str]]:
    """Overall exposure of the unit made of parts, and the names of its exposed settings."""
    tool = need("systemd-analyze", "systemd")
    unit = tmp_path / name
    unit.write_text("\n".join(parts))
    out = subprocess.run(
        [tool, "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    lines = out.stdout.strip().splitlines()
    assert lines and "Overall exposure level" in lines[-1], out.stdout + out.stderr
    # "→ Overall exposure level for cairn.service: 1.6 OK 🙂"
    score = float(lines[-1].split(":")[1].split()[0])
    exposed = [line[2:].split()[0] for line in lines if line.startswith("✗")]
    return score, exposed


def test_supervisor_exposure_is_at_most_2(tmp_path: Path) -> None:
    score, exposed = analyze(tmp_path, "cairn.service", CAIRN_UNIT, CAIRN_HARDENING)
    assert score <= 2.0, exposed


@pytest.mark.parametrize("gpu", [False, True], ids=["cpu", "gpu"])
def test_model_worker_exposure_is_at_most_1(tmp_path: Path, gpu: bool) -> None:
    parts = (MODEL_UNIT, MODEL_HARDENING, *((MODEL_GPU,) if gpu else ()))
    score, exposed = analyze(tmp_path, "cairn-model@demo.service", *parts)
    assert score <= 1.0, exposed


def test_every_exposure_of_the_rollback_helper_has_its_reason(tmp_path: Path) -> None:
    _, exposed = analyze(tmp_path, "cairn-rollback.service", ROLLBACK_UNIT, ROLLBACK_HARDENING)
    comments = "\n".join(line for line in ROLLBACK_HARDENING.splitlines() if line.startswith("#"))
    assert exposed, "systemd-analyze listed nothing: the parse is broken"
    unexplained = [name for name in exposed if name not in comments]
    assert unexplained == [], "name these in cairn-rollback-hardening.conf, with the reason"


# --- the daemon under cairn.service's sandbox in a real systemd node ----------------------


def home_binds() -> str:
    """A drop-in that lets the sandboxed daemon reach this machine's interpreter, if needed.

    Only for this test machine: ProtectHome=yes hides /root and /home, where a venv or a
    pyenv interpreter may live here, and PrivateTmp=yes hides a checkout under /tmp (a CI
    clone, say); on NixOS all of it is in the store. ProtectHome=tmpfs still hides every home,
    and binds back just these paths.
    """
    here = (sys.prefix, sys.base_prefix, REPO)
    paths = sorted({str(Path(p).resolve()) for p in here})
    hidden = [p for p in paths if p.startswith(("/root/", "/home/", "/tmp/", "/var/tmp/"))]
    if not hidden:
        return ""
    homes = "ProtectHome=tmpfs\n" if any(p.startswith(("/root/", "/home/")) for p in hidden) else ""
    return f"[Service]\n{homes}BindReadOnlyPaths={' '.join(hidden)}\n"


def boot_daemon(cluster_factory: Any, hardening: str) -> Any:
    """Boot a node, write the config with its address, start cairn.service; return the node."""
    key = base64.b64encode(os.urandom(32)).decode() + "\n"
    files: dict[str, str | bytes] = {
        "/etc/systemd/system/cairn.service": CAIRN_UNIT,
        "/etc/systemd/system/cairn.service.d/hardening.conf": hardening,
        "/etc/sysusers.d/cairn.conf": SYSUSERS,
        "/etc/cairn/gossip.key": key,
    }
    if extra := home_binds():
        files["/etc/systemd/system/cairn.service.d/test-paths.conf"] = extra
    node = cluster_factory(1, files=files).nodes[0]
    config = {
        "version": 1,
        "node": {"name": "hardened"},
        "probe": {"interval": 1.0},
        # power needs gossip; bound to the node's address, whose interface's MAC power reads.
        "gossip": {
            "key_file": "/run/credentials/cairn.service/gossip-key",
            "bind": node.ip,
            "profile": "local",
        },
        "power": {"enable": True},
    }
    node.exec(["tee", "/etc/cairn/cairn.json"], input=json.dumps(config))
    node.systemd.Reload()
    node.start_unit("cairn.service", timeout=60)
    return node


def test_the_daemon_runs_with_power_under_its_sandbox(cluster_factory) -> None:
    node = boot_daemon(cluster_factory, CAIRN_HARDENING)
    unit = node.wait_unit("cairn.service", "active", timeout=60)
    status = json.loads(node.exec(["curl", "-sS", "http://127.0.0.1:8470/status"]).stdout)
    assert status["node"]["name"] == "hardened"
    # power found the MAC of the gossip address's interface: through netlink, in the sandbox.
    mac = node.exec(["cat", "/sys/class/net/eth0/address"]).stdout.strip()
    assert f"power: no MAC for {node.ip}" not in node.journal("cairn.service")
    assert mac in json.dumps(status), status
    # LimitNOFILE=65536, soft and hard; systemd grants the closest it may (setrlimit_closest),
    # and where the node's init has a lower hard limit (20000 on the test VM), that one.
    most = min(65536, open_files(node, 1)[1])
    assert open_files(node, unit.MainPID) == (most, most)


def open_files(node: Any, pid: int) -> tuple[int, int]:
    """The soft and hard RLIMIT_NOFILE of a process in the node."""
    for line in node.exec(["cat", f"/proc/{pid}/limits"]).stdout.splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError(f"no open-files limit for pid {pid}")


def test_without_af_netlink_power_kills_the_daemon_at_start(cluster_factory) -> None:
    # Why the line is there: the sandbox as it was before issue 13.
    assert NETLINK_LINE in CAIRN_HARDENING
    without = "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX\n"
    old = CAIRN_HARDENING.replace(NETLINK_LINE, without)
    node = boot_daemon(cluster_factory, old)
    node.wait_unit("cairn.service", "failed", timeout=60)
    assert "Address family not supported" in node.journal("cairn.service")

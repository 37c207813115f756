"""A model worker under real systemd: socket activation starts it, stopping it frees it."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from cairn.inference import demo_gguf
from tests.conftest import CAIRN_BIN, REPO
from tests.harness import wait_until

# The sandbox NixOS puts on every worker (modules/inference.nix reads the same file).
HARDENING = (REPO / "modules" / "model-unit-hardening.conf").read_text()
# Only for this test machine: its interpreter and checkout may live under /root, which
# ProtectHome= hides; on NixOS both are in the store. ProtectHome=tmpfs still hides homes.
TEST_PATHS = f"""\
[Service]
ProtectHome=tmpfs
BindReadOnlyPaths={sys.base_prefix} {REPO}
"""
MAX_EXPOSURE = 2.0

SOCKET_UNIT = """\
[Unit]
Description=Cairn model worker socket %i

[Socket]
ListenStream=/run/cairn/models/%i.sock
SocketMode=0660
RemoveOnStop=yes
"""
SERVICE_UNIT = f"""\
[Unit]
Description=Cairn model worker %i

[Service]
Type=notify
NotifyAccess=main
ExecStart={CAIRN_BIN} worker --config /etc/cairn/cairn.json --model %i
"""
SUPERVISOR_UNIT = f"""\
[Unit]
Description=Cairn supervisor

[Service]
Type=notify
NotifyAccess=main
ExecStart={CAIRN_BIN} run --config /etc/cairn/cairn.json
StateDirectory=cairn
"""
CONFIG = {
    "version": 1,
    "inference": {"workers": "systemd", "socket_dir": "/run/cairn/models"},
    "models": [{"name": "demo", "path": "/etc/cairn/demo.gguf", "kind": "gguf", "slots": 2}],
}
CHAT = json.dumps(
    {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
)


def files() -> dict[str, str | bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        model = demo_gguf.write_tiny_llama(Path(tmp) / "demo.gguf").read_bytes()
    return {
        "/etc/systemd/system/cairn-model@.socket": SOCKET_UNIT,
        "/etc/systemd/system/cairn-model@.service": SERVICE_UNIT,
        "/etc/systemd/system/cairn-model@.service.d/hardening.conf": HARDENING,
        "/etc/systemd/system/cairn-model@.service.d/test-paths.conf": TEST_PATHS,
        "/etc/systemd/system/cairn.service": SUPERVISOR_UNIT,
        "/etc/cairn/cairn.json": json.dumps(CONFIG),
        "/etc/cairn/demo.gguf": model,
    }


def chat(node: Any) -> dict[str, Any]:
    out = node.exec(
        [
            "curl",
            "-sS",
            "--max-time",
            "60",
            "-H",
            "Content-Type: application/json",
            "-d",
            CHAT,
            "http://127.0.0.1:8470/v1/chat/completions",
        ]
    ).stdout
    doc: dict[str, Any] = json.loads(out)
    return doc


def test_first_request_activates_the_worker_and_stop_frees_it(cluster_factory) -> None:
    node = cluster_factory(1, files=files()).nodes[0]
    node.exec(["chmod", "755", "/root"])  # the interpreter bind below /root must be reachable
    node.start_unit("cairn-model@demo.socket")
    node.start_unit("cairn.service")
    node.wait_unit("cairn.service", "active", timeout=60)
    worker = node.unit("cairn-model@demo.service")
    assert worker.ActiveState == "inactive"  # nothing started it yet

    answer = chat(node)
    assert answer["object"] == "chat.completion", answer
    assert answer["usage"]["completion_tokens"] > 0
    assert worker.ActiveState == "active" and worker.SubState == "running"
    pid = worker.MainPID
    assert node.exec(["cat", f"/proc/{pid}/comm"]).stdout.strip().startswith("cairn")
    uid = node.exec(["stat", "-c", "%u", f"/proc/{pid}"]).stdout.strip()
    assert int(uid) >= 61184, f"worker runs as uid {uid}, not a DynamicUser"

    node.stop_unit("cairn-model@demo.service")
    assert worker.ActiveState == "inactive"
    gone = node.exec(["test", "-e", f"/proc/{pid}"], check=False)
    assert gone.returncode != 0, f"worker {pid} still exists after stop"
    # The socket kept listening: the next request wakes the worker again.
    assert node.unit("cairn-model@demo.socket").ActiveState == "active"
    assert chat(node)["object"] == "chat.completion"
    wait_until(lambda: worker.ActiveState == "active", 10, what="the worker to run again")


def test_worker_sandbox_exposure_is_at_most_2(cluster_factory) -> None:
    node = cluster_factory(1, files=files()).nodes[0]
    node.systemd.Reload()
    out = node.exec(["systemd-analyze", "security", "--no-pager", "cairn-model@demo.service"])
    last = out.stdout.strip().splitlines()[-1]
    # "→ Overall exposure level for cairn-model@demo.service: 0.3 SAFE 😀"
    exposure = float(last.split(":")[1].split()[0])
    assert exposure <= MAX_EXPOSURE, out.stdout


def test_only_root_and_the_supervisors_group_reach_a_worker_socket(cluster_factory) -> None:
    # As modules/inference.nix sets it: root's socket, the supervisor's group, mode 0660.
    owned = SOCKET_UNIT.replace(
        "SocketMode=0660", "SocketUser=root\nSocketGroup=cairn\nSocketMode=0660"
    )
    node = cluster_factory(1, files={**files(), "/etc/systemd/system/cairn-model@.socket": owned})
    node = node.nodes[0]
    node.exec(["groupadd", "--system", "cairn"])
    node.exec(["useradd", "--system", "--gid", "cairn", "cairn"])
    node.start_unit("cairn-model@demo.socket")
    connect = "import socket; socket.socket(socket.AF_UNIX).connect('/run/cairn/models/demo.sock')"

    def as_user(user: str, group: str) -> subprocess.CompletedProcess[str]:
        argv = ["setpriv", f"--reuid={user}", f"--regid={group}", "--init-groups"]
        done: subprocess.CompletedProcess[str] = node.exec(
            [*argv, "python3", "-c", connect], check=False
        )
        return done

    refused = as_user("nobody", "nogroup")
    assert refused.returncode != 0 and "Permission denied" in refused.stderr, refused
    assert node.unit("cairn-model@demo.service").ActiveState == "inactive"  # nobody woke it
    allowed = as_user("cairn", "cairn")
    assert allowed.returncode == 0, allowed.stderr

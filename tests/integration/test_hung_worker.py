"""A worker that hangs (SIGSTOP) is cut off by the deadline and restarted by the ladder.

Both ways a worker runs: a standalone child, and a socket-activated systemd unit.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from cairn.inference import demo_gguf
from tests.conftest import Node
from tests.harness import wait_until
from tests.integration import test_systemd_worker as worker

# The request's deadline comes first; then the healer's probe gives up and the ladder restarts.
REQUEST_TIMEOUT = 3.0
PROBE_TIMEOUT = 8.0


@pytest.fixture
def short_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="ch-", dir="/tmp"))  # unix socket paths must stay short
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _model(n: Node) -> dict[str, Any]:
    doc: dict[str, Any] = n.get("/status").json()["models"]["demo"]
    return doc


def test_a_stopped_worker_times_out_and_is_restarted(
    start_node: Callable[..., Node], short_dir: Path
) -> None:
    path = demo_gguf.write_tiny_llama(short_dir / "demo.gguf")
    node = start_node(
        probe_interval=1.0,
        inference={"socket_dir": str(short_dir)},
        heal={"interval": 1.0, "probe_timeout": PROBE_TIMEOUT, "restart_backoff_max": 2.0},
        models=[
            {
                "name": "demo",
                "path": str(path),
                "kind": "gguf",
                "threads": 1,
                "request_timeout": REQUEST_TIMEOUT,
            }
        ],
    )
    wait_until(lambda: _model(node)["state"] == "ready", 60, what="the worker to load")
    hung = _model(node)["pid"]
    client = openai.OpenAI(base_url=node.url + "/v1", api_key="x", max_retries=0, timeout=60)
    os.kill(hung, signal.SIGSTOP)
    try:
        started = time.monotonic()
        # The call does not hang with the worker: the deadline answers for it.
        with pytest.raises(openai.APIStatusError) as err:
            client.completions.create(model="demo", prompt="hello", max_tokens=4)
        assert err.value.status_code == 504, err.value
        assert time.monotonic() - started < PROBE_TIMEOUT  # the deadline, not the restart
        # The healer's probe finds it hung and the ladder replaces the process.
        wait_until(lambda: _model(node)["pid"] not in (None, hung), 60, what="a new worker process")
        wait_until(lambda: _model(node)["state"] == "ready", 60, what="the new worker to be ready")
        done = client.completions.create(model="demo", prompt="hello", max_tokens=4)
        assert done.choices[0].text is not None
    finally:
        with contextlib.suppress(ProcessLookupError):  # the ladder killed it, as it should
            os.kill(hung, signal.SIGCONT)
    incidents = node.get("/status").json()["incidents"]
    probe = [i for i in incidents if i["check"] == "model-probe"]
    assert probe and any("restart" in f for i in probe for f in i["fixes"]), incidents
    with pytest.raises(ProcessLookupError):
        os.kill(hung, 0)


def test_a_stopped_systemd_worker_times_out_and_is_restarted(cluster_factory: Any) -> None:
    files = worker.files()
    cfg = json.loads(files["/etc/cairn/cairn.json"])
    cfg["models"][0]["request_timeout"] = REQUEST_TIMEOUT
    cfg["heal"] = {"interval": 1.0, "probe_timeout": PROBE_TIMEOUT, "restart_backoff_max": 2.0}
    files["/etc/cairn/cairn.json"] = json.dumps(cfg)
    node = cluster_factory(1, files=files).nodes[0]
    node.exec(["chmod", "755", "/root"])  # the venv's interpreter below /root must be reachable
    node.start_unit("cairn-model@demo.socket")
    node.start_unit("cairn.service")
    node.wait_unit("cairn.service", "active", timeout=60)
    assert worker.chat(node)["object"] == "chat.completion"  # wakes the worker
    unit = node.unit("cairn-model@demo.service")
    hung = int(unit.MainPID)
    node.exec(["python3", "-c", f"import os; os.kill({hung}, {int(signal.SIGSTOP)})"])
    status = node.exec(["grep", "^State:", f"/proc/{hung}/status"]).stdout
    assert "stopped" in status, status
    started = time.monotonic()
    code = node.exec(
        [
            *("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "60"),
            *("-H", "Content-Type: application/json", "-d", worker.CHAT),
            "http://127.0.0.1:8470/v1/chat/completions",
        ],
        check=False,
    ).stdout
    assert code == "504", code
    assert time.monotonic() - started < PROBE_TIMEOUT  # the deadline, not the restart
    wait_until(lambda: int(unit.MainPID) not in (0, hung), 60, what="a new worker process")
    wait_until(lambda: unit.ActiveState == "active", 60, what="the new worker")
    assert worker.chat(node)["object"] == "chat.completion"


# Loaded by every Python process of the test's daemon (PYTHONPATH): once a worker imports
# llama_cpp, its llama_decode blocks while the file HANG exists, as a wedged decode would.
HANG_HOOK = """\
import importlib.abc, importlib.machinery, os, sys, time

class _Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "llama_cpp":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            real = module.llama_decode

            def llama_decode(ctx, batch):
                while os.path.exists(os.environ["CAIRN_TEST_HANG"]):
                    time.sleep(0.05)
                return real(ctx, batch)

            module.llama_decode = llama_decode

        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, _Hook())
"""


def test_a_worker_whose_decoding_hangs_is_restarted(
    start_node: Callable[..., Node], short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its event loop still answers /health, and it is busy: only the stalled decode tells.
    (short_dir / "hook").mkdir()
    (short_dir / "hook" / "sitecustomize.py").write_text(HANG_HOOK)
    hang = short_dir / "HANG"
    monkeypatch.setenv("PYTHONPATH", str(short_dir / "hook"))
    monkeypatch.setenv("CAIRN_TEST_HANG", str(hang))
    path = demo_gguf.write_tiny_llama(short_dir / "demo.gguf")
    node = start_node(
        probe_interval=1.0,
        inference={"socket_dir": str(short_dir)},
        heal={"interval": 1.0, "probe_timeout": 2.0, "stall_timeout": 4.0},
        models=[{"name": "demo", "path": str(path), "kind": "gguf", "threads": 1}],
    )
    wait_until(lambda: _model(node)["state"] == "ready", 60, what="the worker to load")
    hung = _model(node)["pid"]
    client = openai.OpenAI(base_url=node.url + "/v1", api_key="x", max_retries=0, timeout=60)
    hang.touch()
    with pytest.raises(openai.APIError):  # cut off when the ladder replaces the worker
        client.completions.create(model="demo", prompt="hello", max_tokens=4)
    wait_until(lambda: _model(node)["pid"] not in (None, hung), 60, what="a new worker process")
    hang.unlink()
    wait_until(lambda: _model(node)["state"] == "ready", 60, what="the new worker to be ready")
    assert client.completions.create(model="demo", prompt="hi", max_tokens=4).choices

"""The dashboard as a person sees it: headless Chromium renders /status into tables."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

from cairn.inference import demo_gguf
from tests.conftest import REPO, Node, free_port
from tests.harness import wait_until

ARTIFACTS = REPO / "build" / "test-artifacts"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1100,1500",
    # Virtual time lets the page's fetch and render finish before the DOM is dumped.
    "--virtual-time-budget=5000",
]


class Tables(HTMLParser):
    """Collects each table's body rows (by table id) as lists of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._in_body = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._table = dict(attrs).get("id") or ""
            self.tables[self._table] = []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body and self._table is not None:
            self.tables[self._table].append([])
        elif tag == "td" and self._in_body:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tbody":
            self._in_body = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def chromium(*args: str, tmp: Path) -> str:
    exe = shutil.which("chromium")
    assert exe, "chromium is not installed (make test installs it)"
    res = subprocess.run(
        [exe, *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'chromium'}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return res.stdout


def test_dashboard_renders_status_tables(start_node: Callable[..., Node], tmp_path: Path) -> None:
    node = start_node(probe_interval=0.5)
    wait_until(lambda: node.get("/readyz").status == 200, 15, what="readiness")

    parser = Tables()
    parser.feed(chromium("--dump-dom", node.url + "/", tmp=tmp_path))
    tables = parser.tables

    (row,) = tables["node"]
    assert row[:2] == ["test-node", socket.gethostname()]
    assert row[4] == "ready"
    assert {r[0]: r[1] for r in tables["components"]} == {"api": "ready", "probe": "ready"}
    assert len(tables["cpu"]) == len(node.get("/status").json()["probe"]["cpu"]["usage_ratio"])
    assert [r[0] for r in tables["memory"]][:2] == ["Memory", "Swap"]
    gpus = node.get("/status").json()["probe"]["gpus"]
    if gpus:
        assert [r[1] for r in tables["gpus"]] == [g["name"] for g in gpus]
    else:
        assert tables["gpus"][0][0].startswith("no GPU: NVML")
    assert tables["generations"][0][0].startswith("unavailable: ")
    assert tables["cluster"] == [["standalone: gossip is off"]]
    assert tables["sleep"] == [["nothing sleeps here"]]
    assert tables["incidents"] == [["no incidents"]]

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    shot.unlink(missing_ok=True)
    chromium(f"--screenshot={shot}", node.url + "/", tmp=tmp_path)
    assert shot.stat().st_size > 10_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dashboard_shows_the_cluster(start_node: Callable[..., Node], tmp_path: Path) -> None:
    key = tmp_path / "gossip.key"
    key.write_text(base64.b64encode(os.urandom(32)).decode())
    gossip = {"key_file": str(key), "bind": "127.0.0.1", "profile": "local"}
    ports = free_port(), free_port()
    for name, port in zip(("one", "two"), ports, strict=True):
        start_node(
            node={"name": name, "state_dir": str(tmp_path / name)},
            gossip={**gossip, "port": port, "join": [f"127.0.0.1:{ports[0]}"]},
        )
    node = start_node(
        probe_interval=0.5,
        node={"name": "three", "state_dir": str(tmp_path / "three")},
        gossip={**gossip, "port": free_port(), "join": [f"127.0.0.1:{ports[0]}"]},
    )
    wait_until(
        lambda: [m["state"] for m in node.get("/status").json()["cluster"]] == ["alive"] * 3,
        20,
        what="three alive members",
    )
    parser = Tables()
    parser.feed(chromium("--dump-dom", node.url + "/", tmp=tmp_path))
    rows = parser.tables["cluster"]
    assert [r[0] for r in rows] == ["three (this node)", "one", "two"]
    assert [r[2] for r in rows] == ["alive"] * 3
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    chromium(f"--screenshot={ARTIFACTS / 'dashboard-cluster.png'}", node.url + "/", tmp=tmp_path)


def test_dashboard_shows_a_sleeping_worker_and_an_incident(
    start_node: Callable[..., Node], tmp_path: Path
) -> None:
    model = demo_gguf.write_tiny_llama(tmp_path / "tiny.gguf")
    sockets = tempfile.mkdtemp(prefix="cs-", dir="/tmp")  # unix socket paths must stay short
    node = start_node(
        probe_interval=0.5,
        inference={"socket_dir": sockets},
        models=[{"name": "tiny", "path": str(model), "kind": "gguf", "idle_ttl": 1}],
        # More than any machine has: the memory check opens an incident at once.
        heal={"interval": 0.5, "memory_min_mb": 1 << 30},
    )
    wait_until(
        lambda: node.get("/status").json()["sleep"][0]["sleeps"] == {"idle": 1},
        30,
        what="the idle worker to sleep",
    )
    parser = Tables()
    parser.feed(chromium("--dump-dom", node.url + "/", tmp=tmp_path))
    (row,) = parser.tables["sleep"]
    assert row[:3] == ["cairn-model@tiny.service", "model", "asleep"]
    assert row[5] == "0m 1s" and row[6] == "1 idle"
    assert parser.tables["models"][0][2].startswith("asleep")
    (incident,) = parser.tables["incidents"]
    assert incident[:2] == ["memory-low-1", "open"] and incident[3] == "memory"
    assert incident[4].endswith("MiB available, below 1073741824")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    chromium(f"--screenshot={ARTIFACTS / 'dashboard-sleep.png'}", node.url + "/", tmp=tmp_path)
    shutil.rmtree(sockets, ignore_errors=True)

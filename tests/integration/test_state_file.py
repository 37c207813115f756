"""The daemon and its state file: a full disk makes it not ready, a newer file stops the start."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import CAIRN_BIN, Node, free_port
from tests.harness import wait_until
from tests.unit.test_state import fill, tmpfs


def test_a_full_state_disk_makes_the_node_not_ready_until_it_has_room(
    start_node: Callable[..., Node], tmp_path: Path
) -> None:
    with tmpfs(tmp_path / "state") as state:
        filler = fill(state)
        node = start_node(probe_interval=0.5, heal={"interval": 0.5})

        def not_ready() -> dict[str, dict[str, str]]:
            found: dict[str, dict[str, str]] = node.get("/readyz").json()["not_ready"]
            return found

        wait_until(lambda: "state" in not_ready(), 20, what="the state component to degrade")
        path = state / "state.json"
        assert not_ready()["state"] == {
            "state": "degraded",
            "detail": f"cannot write {path}: No space left on device",
        }
        assert node.get("/readyz").status == 503

        def unsaved() -> list[dict[str, Any]]:
            found = node.get("/status").json()["incidents"]
            return [i for i in found if i["check"] == "state-unsaved"]

        wait_until(lambda: bool(unsaved()), 10, what="the state-unsaved incident")
        (incident,) = unsaved()
        assert incident["subject"] == str(path) and "in memory only" in incident["detail"]
        filler.unlink()
        wait_until(lambda: node.get("/readyz").status == 200, 20, what="the node to be ready again")
        wait_until(
            lambda: any(
                i["check"] == "state-unsaved" and i["closed"]
                for i in json.loads(path.read_text())["incidents"]
            ),
            20,
            what="the closed incident on disk",
        )


def test_a_state_file_from_a_newer_cairn_stops_the_start_with_exit_2(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    newer = '{"version": 2, "confirmed": [1], "pinned": [4]}'
    (state / "state.json").write_text(newer)
    port = free_port()
    cfg = tmp_path / "cairn.json"
    cfg.write_text(
        json.dumps({"version": 1, "node": {"state_dir": str(state)}, "api": {"port": port}})
    )
    run = subprocess.run(
        [CAIRN_BIN, "run", "--config", str(cfg)], capture_output=True, text=True, timeout=30
    )
    assert run.returncode == 2
    assert f"the state file {state / 'state.json'} is of version 2, newer than" in run.stderr
    assert (state / "state.json").read_text() == newer

"""The state file: damage set aside, a newer one refused, a full disk changes nothing."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cairn.errors import StateError
from cairn.policy.heal import Healer, Incidents
from cairn.state import Incident, State, StateFile, Store


@contextlib.contextmanager
def tmpfs(path: Path) -> Iterator[Path]:
    """A real file system of 64 KiB mounted at `path` for the block."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=False)


def fill(path: Path) -> Path:
    """Fill the file system of `path` to the last block; the filler file (delete it to free)."""
    filler = path / "filler"
    with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while f.write(b"\0" * 4096):
            pass
    return filler


@pytest.mark.parametrize(
    "data",
    [
        b'{"incidents": [{"id": "\xff", "check": "c", "subject": "s", "since": 1, "detail": ""}]}',
        b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # past the decoder's recursion
        b"{not json",
        b'{"confirmed": "1"}',
        b'{"version": 1, "confirmed": [1], "rolback": null}',  # a field no version has
    ],
    ids=["utf-8", "nesting", "syntax", "type", "unknown field"],
)
def test_a_damaged_file_is_set_aside(
    tmp_path: Path, data: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "state.json").write_bytes(data)
    assert StateFile(tmp_path / "state.json").load() == State()
    assert (tmp_path / "state.damaged").read_bytes() == data
    assert not (tmp_path / "state.json").exists()
    assert f"{tmp_path / 'state.json'} is damaged" in caplog.text


def test_a_state_file_of_a_newer_version_is_refused_and_left_alone(tmp_path: Path) -> None:
    newer = b'{"version": 2, "confirmed": [1], "pinned": [1]}'
    (tmp_path / "state.json").write_bytes(newer)
    with pytest.raises(StateError, match=r"state\.json is of version 2, newer than this Cairn's 1"):
        Store(StateFile(tmp_path / "state.json"))
    assert (tmp_path / "state.json").read_bytes() == newer  # not stripped, not moved


def test_a_save_cut_short_by_a_crash_leaves_no_temporary_behind(tmp_path: Path) -> None:
    # A process (with its own pid) dies between writing the temporary file and renaming it.
    crash = (
        "import os, sys; from pathlib import Path\n"
        "from cairn.state import State, StateFile\n"
        "os.replace = lambda *a: os._exit(9)\n"
        "StateFile(Path(sys.argv[1])).save(State(confirmed=[1]))\n"
    )
    done = subprocess.run([sys.executable, "-c", crash, str(tmp_path / "state.json")], check=False)
    assert done.returncode == 9 and list(tmp_path.iterdir())  # it left its temporary file
    f = StateFile(tmp_path / "state.json")
    f.save(State(confirmed=[2]))  # the next supervisor saves
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
    assert f.load() == State(confirmed=[2])


def test_a_refused_save_keeps_the_saved_state_and_says_why(tmp_path: Path) -> None:
    told: list[str] = []
    with tmpfs(tmp_path / "state") as state:
        store = Store(StateFile(state / "state.json"), told.append)
        filler = fill(state)
        assert not store.save(State(confirmed=[3]))
        assert store.state == State() and not store.file.path.exists()
        assert store.error == f"cannot write {store.file.path}: No space left on device"
        assert told == [store.error]
        assert [p.name for p in state.iterdir()] == ["filler"]  # no temporary file
        filler.unlink()
        assert store.save(State(confirmed=[3]))
        assert store.state == State(confirmed=[3]) and store.error == "" and told[-1] == ""
        assert store.file.load() == State(confirmed=[3])


async def test_an_unsaved_state_is_an_incident_kept_in_memory(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "state") as state:
        store = Store(StateFile(state / "state.json"))
        filler = fill(state)
        assert not store.save(State(confirmed=[1]))  # say, the gate's
        incidents = Incidents(store, clock=lambda: 50.0)
        healer = Healer(incidents, [])
        await healer.tick()
        (inc,) = incidents.open()
        path = str(store.file.path)
        assert (inc.check, inc.subject) == ("state-unsaved", path)
        assert "No space left on device" in inc.detail and "in memory only" in inc.detail
        assert not store.file.path.exists()
        filler.unlink()
        await healer.tick()  # saved again: the incident is on disk, and closes next round
        await healer.tick()
        assert incidents.open() == [] and store.error == ""
        saved = store.file.load().incidents
        assert [(i.id, i.subject, i.closed) for i in saved] == [("state-unsaved-1", path, 50.0)]
        assert isinstance(saved[0], Incident)

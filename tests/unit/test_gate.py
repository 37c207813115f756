"""The generation gate and the rollback helper on an emulated NixOS profile layout."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from cairn import rollback, state
from cairn.policy.gate import Gate, GateError
from cairn.state import Rollback, State, StateFile, Store
from cairn.system import generations
from tests.unit.test_state import fill, tmpfs

WINDOW = 100.0


class Layout:
    """/nix/var/nix/profiles and /run as NixOS lays them out, in a temporary directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.profiles = root / "profiles"
        self.run = root / "run"
        self.profiles.mkdir()
        self.run.mkdir()

    def add(self, n: int) -> None:
        system = self.root / "store" / f"system-{n}"
        (system / "bin").mkdir(parents=True)
        switch = system / "bin" / "switch-to-configuration"
        # What the helper's switch does here: make this generation the running one.
        switch.write_text(
            f"#!/bin/sh\nln -sfn {system} {self.run}/current-system\n"
            f"echo {n} >> {self.root}/switches\n"
        )
        switch.chmod(0o755)
        (self.profiles / f"system-{n}-link").symlink_to(system)

    def switch(self, n: int) -> None:
        """nixos-rebuild switch: select the profile, then run its switch."""
        tmp = self.profiles / "tmp"
        tmp.symlink_to(f"system-{n}-link")
        tmp.replace(self.profiles / "system")
        switch = self.profiles / "system" / "bin" / "switch-to-configuration"
        subprocess.run([str(switch), "switch"], check=True)

    def read(self) -> tuple[generations.Generations | None, str]:
        return generations.read(self.profiles, self.run)

    def switches(self) -> list[int]:
        f = self.root / "switches"
        return [int(x) for x in f.read_text().split()] if f.exists() else []


class World:
    """A gate over a layout, with the clock, the checks and the helper in the test's hands."""

    def __init__(self, tmp: Path) -> None:
        self.layout = Layout(tmp)
        self.file = StateFile(tmp / "state" / "state.json")
        self.now = 1000.0
        self.failing: list[str] = []
        self.helper_runs = 0
        self.boot = "boot-1"
        self.helper_works = True

    def gate(self) -> Gate:
        """A fresh gate from the state on disk: what a restarted supervisor builds."""

        async def failing() -> list[str]:
            return list(self.failing)

        async def helper() -> None:
            self.helper_runs += 1
            if self.helper_works:
                rollback.run(self.file, self.layout.profiles)

        store = Store(self.file)
        return Gate(store, WINDOW, self.boot, self.layout.read, failing, helper, lambda: self.now)


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path)
    for n in (1, 2, 3):
        w.layout.add(n)
    w.layout.switch(1)
    return w


async def test_a_healthy_generation_is_confirmed_and_stays(world: World) -> None:
    gate = world.gate()
    await gate.tick()
    assert gate.view().confirmed == [1] and gate.status == "confirmed"
    world.layout.switch(2)
    world.failing = ["worker.service is activating"]
    await gate.tick()
    assert gate.status == "confirming" and gate.state.window is not None
    world.now += WINDOW / 2
    world.failing = []
    await gate.tick()
    assert gate.view().confirmed == [1, 2] and world.helper_runs == 0
    world.failing = ["anything"]  # a confirmed generation is never rolled back
    world.now += 10 * WINDOW
    await gate.tick()
    assert world.helper_runs == 0 and gate.status == "confirmed"


async def test_a_failing_generation_is_rolled_back_once(world: World) -> None:
    gate = world.gate()
    await gate.tick()
    world.layout.switch(2)
    world.failing = ["worker.service is failed"]
    await gate.tick()
    world.now += WINDOW - 1
    await gate.tick()
    assert world.helper_runs == 0  # still inside the window
    world.now += 1
    await gate.tick()
    assert world.helper_runs == 1
    assert world.layout.switches() == [1, 2, 1]
    assert gate.view().bad == [2]
    await gate.tick()  # back on 1, which is confirmed: done
    assert gate.status == "confirmed" and gate.state.rollback is None
    world.layout.switch(2)  # someone switches to the bad one again: no second rollback
    world.now += 10 * WINDOW
    await gate.tick()
    assert world.helper_runs == 1 and gate.status == "bad"


async def test_a_restart_in_the_window_keeps_its_deadline(world: World) -> None:
    await world.gate().tick()
    world.layout.switch(2)
    world.failing = ["worker.service is failed"]
    await world.gate().tick()  # the window opens
    world.now += WINDOW / 2
    await world.gate().tick()  # a restarted supervisor: same window, nothing yet
    assert world.helper_runs == 0
    world.now += WINDOW / 2
    await world.gate().tick()
    await world.gate().tick()
    assert world.helper_runs == 1 and world.layout.switches() == [1, 2, 1]


async def test_a_restart_after_the_decision_asks_the_helper_again_not_twice(
    world: World,
) -> None:
    await world.gate().tick()
    world.layout.switch(2)
    # The supervisor saved its decision, then died before the helper ran.
    st = world.file.load()
    world.file.save(State(confirmed=st.confirmed, bad=[2], rollback=Rollback(2, 1, world.now)))
    gate = world.gate()
    await gate.tick()
    assert world.helper_runs == 0 and gate.status == "rolling back"  # asked only just now
    world.now += 61
    await gate.tick()
    assert world.helper_runs == 1 and world.layout.switches() == [1, 2, 1]
    await gate.tick()
    assert gate.status == "confirmed" and world.helper_runs == 1


async def test_nothing_confirmed_means_no_rollback(world: World) -> None:
    world.failing = ["no peer reachable"]
    gate = world.gate()
    await gate.tick()
    world.now += WINDOW
    await gate.tick()
    assert world.helper_runs == 0 and gate.status == "bad"
    assert "nothing" in gate.detail or "no confirmed" in gate.detail


async def test_manual_confirm_and_rollback(world: World) -> None:
    gate = world.gate()
    await gate.tick()
    world.layout.switch(3)
    world.failing = ["slow"]
    await gate.tick()
    assert await gate.confirm() == 3 and gate.view().confirmed == [1, 3]
    with pytest.raises(GateError, match="is the one running"):
        await gate.roll_back(3)
    with pytest.raises(GateError, match="does not exist"):
        await gate.roll_back(9)
    assert await gate.roll_back(None) == 1
    await asyncio.gather(*gate._helpers)  # the helper runs in the background
    assert world.layout.switches()[-1] == 1


async def test_confirming_by_hand_drops_a_pending_rollback(world: World) -> None:
    gate = world.gate()
    await gate.tick()
    world.layout.switch(2)
    world.failing = ["worker.service is failed"]
    world.helper_works = False  # the helper is slow, or broken
    await gate.tick()
    world.now += WINDOW
    await gate.tick()
    assert world.helper_runs == 1 and gate.state.rollback is not None
    assert await gate.confirm() == 2  # the operator knows better
    world.now += 10 * 60
    await gate.tick()
    assert world.helper_runs == 1 and gate.view().rollback is None and gate.status == "confirmed"


async def test_a_reboot_inside_the_window_gives_a_whole_window_again(world: World) -> None:
    await world.gate().tick()
    world.layout.switch(2)
    world.failing = ["no peer reachable"]  # as right after a boot
    await world.gate().tick()
    world.now += WINDOW + 5  # the machine was down past the deadline
    world.boot = "boot-2"
    gate = world.gate()
    await gate.tick()
    assert world.helper_runs == 0 and gate.status == "confirming"
    assert gate.state.window is not None and gate.state.window.deadline == world.now + WINDOW
    world.failing = []
    await gate.tick()
    assert gate.view().confirmed == [1, 2]


async def test_a_rollback_that_never_happens_is_abandoned_after_three_tries(world: World) -> None:
    gate = world.gate()
    await gate.tick()
    world.layout.switch(2)
    world.failing = ["worker.service is failed"]
    world.helper_works = False
    await gate.tick()
    world.now += WINDOW
    await gate.tick()
    for _ in range(10):
        world.now += 61
        await gate.tick()
    assert world.helper_runs == 3
    assert gate.status == "bad" and gate.view().rollback is None and gate.view().bad == [2]


async def test_a_confirm_while_the_checks_run_wins(world: World) -> None:
    gate = world.gate()
    await gate.tick()
    world.layout.switch(2)
    world.failing = ["slow"]
    await gate.tick()
    world.now += WINDOW  # the next look would roll back...
    started, release = asyncio.Event(), asyncio.Event()

    async def slow_checks() -> list[str]:
        started.set()
        await release.wait()
        return ["worker.service is failed"]

    gate.failing = slow_checks
    tick = asyncio.create_task(gate.tick())
    await started.wait()
    await gate.confirm()  # ...but the operator confirms while the checks run
    release.set()
    await tick
    assert world.helper_runs == 0 and gate.view().confirmed == [1, 2] and gate.view().bad == []


def test_the_helper_refuses_what_is_not_an_existing_good_generation(world: World) -> None:
    file, profiles = world.file, world.layout.profiles
    with pytest.raises(rollback.Refused, match="no rollback is requested"):
        rollback.target(file, profiles)
    file.save(State(confirmed=[7], rollback=Rollback(3, 7, 0.0)))
    with pytest.raises(rollback.Refused, match="not an existing system generation"):
        rollback.target(file, profiles)
    assert rollback.run(file, profiles) == 1
    file.save(State(confirmed=[2], bad=[2], rollback=Rollback(3, 2, 0.0)))
    with pytest.raises(rollback.Refused, match="marked bad"):
        rollback.target(file, profiles)
    assert rollback.run(file, profiles) == 1
    assert world.layout.switches() == [1]  # nothing was switched
    assert os.readlink(profiles / "system") == "system-1-link"


def test_the_state_file_is_replaced_whole_and_a_damaged_one_set_aside(tmp_path: Path) -> None:
    f = StateFile(tmp_path / "state.json")
    assert f.load() == State()
    f.save(State(confirmed=[4], bad=[5]))
    assert f.load() == State(confirmed=[4], bad=[5])
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary left behind
    (tmp_path / "state.json").write_text("{not json")
    assert f.load() == State()
    assert (tmp_path / "state.damaged").read_text() == "{not json"


def test_the_helper_refuses_a_generation_never_confirmed(world: World) -> None:
    world.file.save(State(confirmed=[1], rollback=Rollback(3, 2, 0.0)))
    with pytest.raises(rollback.Refused, match="generation 2 was never confirmed"):
        rollback.target(world.file, world.layout.profiles)
    assert rollback.run(world.file, world.layout.profiles) == 1
    assert world.layout.switches() == [1]


def test_the_helper_refuses_a_damaged_or_newer_state_file_and_leaves_it(world: World) -> None:
    for data in (b'{"rollback": {"source": 3, "target": "\xff"}}', b'{"version": 2}'):
        world.file.path.parent.mkdir(exist_ok=True)
        world.file.path.write_bytes(data)
        with pytest.raises(rollback.Refused, match=str(world.file.path)):
            rollback.target(world.file, world.layout.profiles)
        assert world.file.path.read_bytes() == data  # the root helper moves nothing


def test_the_helper_reads_only_a_plain_file_of_sane_size(world: World, tmp_path: Path) -> None:
    # The state dir is the cairn user's: what it puts there must not make root read elsewhere,
    # block, or fill memory.
    path = world.file.path
    path.parent.mkdir(exist_ok=True)
    secret = tmp_path / "root-only"
    secret.write_text('{"rollback": {"source": 3, "target": 1}}')
    path.symlink_to(secret)
    with pytest.raises(rollback.Refused, match="cannot read"):
        rollback.target(world.file, world.layout.profiles)
    path.unlink()
    os.mkfifo(path)  # a FIFO nobody writes to: opening or reading it would block for ever
    with pytest.raises(rollback.Refused, match="not a regular file"):
        rollback.target(world.file, world.layout.profiles)
    path.unlink()
    with open(path, "wb") as f:
        f.truncate(state.MAX_BYTES + 1)
    with pytest.raises(rollback.Refused, match="over"):
        rollback.target(world.file, world.layout.profiles)


async def test_a_manual_rollback_waits_for_a_helper_that_starts_late(world: World) -> None:
    gate = world.gate()
    await gate.tick()
    world.layout.switch(3)
    await gate.tick()
    assert gate.view().confirmed == [1, 3]
    world.helper_works = False  # systemd has not started the helper yet
    assert await gate.roll_back(1) == 1
    await asyncio.gather(*gate._helpers)
    world.now += 2
    await gate.tick()  # the gate's next look, long before the helper
    assert gate.status == "rolling back" and gate.view().rollback is not None
    assert rollback.run(world.file, world.layout.profiles) == 0  # the helper, late
    await gate.tick()
    assert world.layout.switches()[-1] == 1 and gate.status == "confirmed"
    assert gate.view().rollback is None and gate.view().bad == []


async def test_a_manual_rollback_never_carried_out_is_given_up_marking_nothing_bad(
    world: World,
) -> None:
    gate = world.gate()
    await gate.tick()
    world.layout.switch(3)
    await gate.tick()
    world.helper_works = False
    await gate.roll_back(1)
    for _ in range(3):  # asked again twice, then given up
        world.now += 61
        await gate.tick()
    await asyncio.gather(*gate._helpers)
    assert world.helper_runs == 3 and gate.view().rollback is None
    assert (gate.status, gate.view().confirmed, gate.view().bad) == ("confirmed", [1, 3], [])
    assert gate.detail == "rollback abandoned: the helper did not switch after 3 tries"


async def test_a_manual_rollback_to_a_generation_never_confirmed_is_refused(world: World) -> None:
    gate = world.gate()
    await gate.tick()
    world.layout.switch(3)
    await gate.tick()
    with pytest.raises(GateError, match="generation 2 was never confirmed"):
        await gate.roll_back(2)
    assert gate.view().rollback is None


async def window_of_2(world: World, failing: str) -> Gate:
    """Generation 1 confirmed, then 2 running with its confirm window open (and saved)."""
    gate = world.gate()
    await gate.tick()
    world.layout.switch(2)
    world.failing = [failing]
    await gate.tick()
    return gate


async def test_a_confirmation_the_disk_refuses_is_neither_taken_nor_shown(world: World) -> None:
    with tmpfs(world.file.path.parent) as state:
        gate = await window_of_2(world, "worker.service is activating")
        filler = fill(state)
        world.failing = []
        await gate.tick()
        assert gate.view().confirmed == [1] and gate.status == "unsaved"
        assert gate.detail.endswith("No space left on device")
        assert "the confirmation of generation 2" in gate.detail
        assert world.file.load().confirmed == [1]
        filler.unlink()
        await gate.tick()
        assert gate.status == "confirmed" and gate.view().confirmed == [1, 2]
        assert world.file.load().confirmed == [1, 2]


async def test_a_rollback_the_disk_refuses_is_neither_taken_nor_shown(world: World) -> None:
    with tmpfs(world.file.path.parent) as state:
        gate = await window_of_2(world, "worker.service is failed")
        filler = fill(state)
        world.now += WINDOW
        await gate.tick()
        assert world.helper_runs == 0 and gate.status == "unsaved"
        assert gate.view().bad == [] and gate.view().rollback is None
        assert world.file.load().window is not None  # a restart would decide again, the same
        filler.unlink()
        await gate.tick()
        assert world.helper_runs == 1 and world.layout.switches() == [1, 2, 1]
        assert world.file.load().bad == [2]

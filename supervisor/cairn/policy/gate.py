"""The generation gate: a new NixOS generation stays only if the node is healthy on it.

When the current system becomes a generation not yet confirmed, a confirm window opens. The
critical checks passing within it confirm the generation (remembered); the window running out
marks it bad and asks the privileged helper (`cairn-rollback.service`) to switch back to the
newest confirmed generation. Every decision is saved before it is acted on, so a supervisor
killed at any moment takes up the same decision after its restart: a confirmed generation is
never rolled back, a generation is rolled back at most once, and a rollback target is always
a confirmed generation, so the gate cannot loop. A decision the disk refuses is not taken:
the gate says so (status "unsaved") and decides again on its next look.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import msgspec
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cairn.background import run_in_daemon_thread
from cairn.errors import CairnError
from cairn.state import Rollback, State, Store, Window
from cairn.system.generations import Generations

log = logging.getLogger(__name__)

RETRY_ROLLBACK_S = 60.0  # a requested rollback that has not happened yet is asked again after
ROLLBACK_ATTEMPTS = 3  # then it is abandoned (the failed generation stays bad)


class GateError(CairnError):
    """A manual confirm or rollback that cannot be done; the message says why."""


class GateView(msgspec.Struct, frozen=True):
    """The gate in /status."""

    current: int | None  # the generation /run/current-system is, when it is one
    status: str  # confirmed, confirming, bad, rolling back, unsaved, unavailable
    detail: str
    confirmed: list[int]
    bad: list[int]
    window: Window | None
    rollback: Rollback | None


def selected_generation(gens: Generations | None) -> int | None:
    """The number of the generation the system profile selects, if any."""
    current = [g.number for g in gens.profiles if g.current] if gens else []
    return current[0] if current else None


def current_generation(gens: Generations) -> int | None:
    """The generation whose system is running: the selected one if it is, else the newest."""
    same = [g for g in gens.profiles if g.path == gens.current]
    selected = [g.number for g in same if g.current]
    return selected[0] if selected else max((g.number for g in same), default=None)


class Gate:
    """Confirms healthy generations and rolls back the others, once."""

    def __init__(
        self,
        store: Store,
        window_s: float,
        boot_id: str,
        read: Callable[[], tuple[Generations | None, str]],
        failing: Callable[[], Awaitable[list[str]]],
        rollback: Callable[[], Awaitable[None]],
        clock: Callable[[], float] = time.time,
        *,
        on_rollback: Callable[[int, str, str], None] | None = None,
    ) -> None:
        self.store = store
        self.window_s = window_s
        self.boot_id = boot_id  # a window opened in another boot gets a fresh deadline
        self.read = read
        self.failing = failing
        self.rollback = rollback
        self.clock = clock
        self.current: int | None = None
        self.generations: Generations | None = None  # the last read, shown in /status
        self.reason = "not read yet"  # why `generations` is None
        self.numbers: set[int] = set()
        self.status, self.detail = "unavailable", "not read yet"
        self._helpers: set[asyncio.Task[None]] = set()  # manual rollbacks under way
        # Told of every rollback asked (source generation, the gate's detail, what and why):
        # the incident record.
        self.on_rollback = on_rollback

    def view(self) -> GateView:
        """The gate as /status shows it."""
        st = self.state
        return GateView(
            self.current,
            self.status,
            self.detail,
            sorted(st.confirmed),
            sorted(st.bad),
            st.window,
            st.rollback,
        )

    @property
    def state(self) -> State:
        """The shared state (the healer keeps its incidents in it too)."""
        return self.store.state

    def _commit(self, what: str, **changes: Any) -> bool:
        """Save the state with `changes`, which only then hold; False (and say so) if refused."""
        if self.store.save(msgspec.structs.replace(self.state, **changes)):
            return True
        self.status, self.detail = "unsaved", f"cannot save {what}: {self.store.error}"
        return False

    async def _read(self) -> int | None:
        gens, why = await run_in_daemon_thread(self.read, "cairn-gate")
        self.generations, self.reason = gens, why
        if gens is None:
            self.status, self.detail, self.current = "unavailable", why, None
            return None
        self.numbers = {g.number for g in gens.profiles}
        self.current = current_generation(gens)
        if self.current is None:
            self.status, self.detail = "unavailable", "the running system is no profile generation"
        return self.current

    async def tick(self) -> None:
        """One look: confirm, keep waiting, or roll back."""
        cur = await self._read()
        if cur is None:
            return
        st, now = self.state, self.clock()
        if (req := st.rollback) is not None:
            # Not switched yet (a manual rollback may leave a confirmed generation): the request
            # stays until the target runs or the bounded tries run out, so a late helper finds it.
            if cur == req.source:
                self.status, self.detail = "rolling back", f"to generation {req.target}"
                if now - req.requested >= RETRY_ROLLBACK_S:  # not done: ask once more
                    await self._retry(req, now)
                return
            if cur == req.target:
                log.warning("rolled back from generation %d to %d", req.source, cur)
            # Done, or switched elsewhere meanwhile.
            if not self._commit(f"the end of the rollback to {req.target}", rollback=None):
                return
            st = self.state
        if cur in st.confirmed:
            if st.window is not None and not self._commit("the closed window", window=None):
                return
            self.status, self.detail = "confirmed", ""
            return
        if cur in st.bad:  # switched to by hand, or the rollback failed: never roll back twice
            self.status, self.detail = "bad", "this generation failed its confirm window before"
            return
        if st.window is None or st.window.generation != cur:
            opened = Window(cur, now, now + self.window_s, self.boot_id)
            if not self._commit(f"the confirm window of generation {cur}", window=opened):
                return
            log.info("generation %d is new: confirm window of %.0f s", cur, self.window_s)
        elif st.window.boot_id != self.boot_id:
            # The machine rebooted inside the window: the checks get a whole window again,
            # not the rest of one that ran while it was down (or a clock that jumped at boot).
            again = Window(cur, st.window.opened, now + self.window_s, self.boot_id)
            if not self._commit(f"the confirm window of generation {cur}", window=again):
                return
            log.info("generation %d: rebooted in its window; %.0f s from now", cur, self.window_s)
        window = self.state.window
        failing = await self.failing()
        st = self.state
        if self.current != cur or st.window is not window or st.rollback is not None:
            return  # confirmed or rolled back by hand, or switched, while the checks ran
        if not failing:
            what = f"the confirmation of generation {cur}"
            if not self._commit(what, confirmed=[*st.confirmed, cur], window=None):
                return
            self.status, self.detail = "confirmed", ""
            log.info("generation %d confirmed: every critical check passes", cur)
            return
        assert window is not None
        now = self.clock()
        left = window.deadline - now
        self.status, self.detail = "confirming", f"{left:.0f} s left; failing: {', '.join(failing)}"
        if left > 0:
            return
        target = self._target(cur)
        bad = [*st.bad, cur]
        if target is None:
            if not self._commit(f"generation {cur} as bad", bad=bad, window=None):
                return
            self.status = "bad"
            self.detail = "failed its confirm window; no confirmed generation to roll back to"
            log.error("generation %d failed (%s); nothing confirmed to roll back to", cur, failing)
            return
        req = Rollback(cur, target, now)
        if not self._commit(f"the rollback to {target}", bad=bad, window=None, rollback=req):
            return  # not asked: the helper must find the request it runs for
        self.status, self.detail = "rolling back", f"to generation {target}"
        log.error(
            "generation %d failed its confirm window (%s): rolling back to %d",
            cur,
            "; ".join(failing),
            target,
        )
        await self._ask_helper()

    async def _retry(self, req: Rollback, now: float) -> None:
        """The requested rollback has not happened: ask again, a bounded number of times."""
        if req.attempts >= ROLLBACK_ATTEMPTS or req.target not in self.numbers:
            why = (
                f"generation {req.target} is gone"
                if req.target not in self.numbers
                else f"the helper did not switch after {req.attempts} tries"
            )
            # A failed generation stays marked bad: never rolled back again.
            if not self._commit(f"the end of the rollback to {req.target}", rollback=None):
                return
            log.error("rollback from %d to %d abandoned: %s", req.source, req.target, why)
            st = self.state
            self.status = "bad" if req.source in st.bad else "confirming"
            if req.source in st.confirmed:  # a manual rollback from a confirmed generation
                self.status = "confirmed"
            self.detail = f"rollback abandoned: {why}"
            return
        again = msgspec.structs.replace(req, requested=now, attempts=req.attempts + 1)
        if self._commit(f"the rollback to {req.target}", rollback=again):
            await self._ask_helper()

    def _target(self, cur: int) -> int | None:
        """The newest confirmed generation that still exists, other than `cur`."""
        ok = [g for g in self.state.confirmed if g in self.numbers and g != cur]
        return max((g for g in ok if g not in self.state.bad), default=None)

    async def _ask_helper(self) -> None:
        if (req := self.state.rollback) is not None and self.on_rollback is not None:
            how = "by hand" if req.manual else "it failed its confirm window"
            done = f"rollback to generation {req.target} ({how})"
            self.on_rollback(req.source, self.detail, done)
        try:
            await self.rollback()
        except CairnError as err:  # the helper refused or failed: its journal says why
            log.error("rollback helper failed: %s", err)
            self.detail = f"rollback helper failed: {err}"

    # --- by hand ---------------------------------------------------------------------------

    async def confirm(self) -> int:
        """Confirm the running generation now (and drop a rollback asked for it)."""
        cur = await self._read()
        if cur is None:
            raise GateError(f"no generation to confirm: {self.detail}")
        st = self.state
        ok = self._commit(
            f"the confirmation of generation {cur}",
            confirmed=st.confirmed if cur in st.confirmed else [*st.confirmed, cur],
            bad=[g for g in st.bad if g != cur],
            rollback=None if st.rollback is not None and st.rollback.source == cur else st.rollback,
            window=None,
        )
        if not ok:
            raise GateError(self.detail)
        self.status, self.detail = "confirmed", "by hand"
        log.info("generation %d confirmed by hand", cur)
        return cur

    async def roll_back(self, target: int | None) -> int:
        """Ask the helper to switch to `target` (default: the newest confirmed); returns it.

        The helper runs in the background: this returns once the request is saved.
        """
        cur = await self._read()
        if cur is None:
            raise GateError(f"cannot roll back: {self.detail}")
        target = self._target(cur) if target is None else target
        if target is None:
            raise GateError("no confirmed generation to roll back to")
        if target == cur:
            raise GateError(f"generation {target} is the one running")
        if target not in self.numbers:
            raise GateError(f"generation {target} does not exist")
        if target in self.state.bad:
            raise GateError(f"generation {target} is marked bad")
        if target not in self.state.confirmed:
            raise GateError(f"generation {target} was never confirmed")
        req = Rollback(cur, target, self.clock(), manual=True)
        if not self._commit(f"the rollback to {target}", rollback=req, window=None):
            raise GateError(self.detail)
        log.warning("rollback from generation %d to %d asked by hand", cur, target)
        self.status, self.detail = "rolling back", f"to generation {target}"
        task = asyncio.create_task(self._ask_helper())
        self._helpers.add(task)
        task.add_done_callback(self._helpers.discard)
        return target


class GateCollector(Collector):
    """The generation the gate last read, at scrape time."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def collect(self) -> Iterator[Metric]:
        """The selected NixOS generation (no sample when there is none)."""
        gen = GaugeMetricFamily(
            "cairn_nixos_generation",
            "Number of the NixOS generation the system profile selects.",
        )
        if (number := selected_generation(self.gate.generations)) is not None:
            gen.add_metric([], number)
        yield gen

"""Component readiness: each part of the daemon reports whether it is ready and why not."""

from __future__ import annotations

import enum

import msgspec


class State(enum.StrEnum):
    """Lifecycle of a component."""

    STARTING = "starting"
    READY = "ready"
    DEGRADED = "degraded"


class Status(msgspec.Struct, frozen=True):
    """What a component says about itself."""

    state: State
    detail: str = ""


class Components:
    """The registry /readyz and /status read; components set their own state."""

    def __init__(self) -> None:
        self._states: dict[str, Status] = {}

    def set(self, name: str, state: State, detail: str = "") -> None:
        """Record a component's state."""
        self._states[name] = Status(state, detail)

    def snapshot(self) -> dict[str, Status]:
        """Every component's latest status."""
        return dict(self._states)

    def not_ready(self) -> dict[str, Status]:
        """Components that keep the node from being ready."""
        return {n: s for n, s in self._states.items() if s.state is not State.READY}

    def ready(self) -> bool:
        """True when every registered component is ready."""
        return bool(self._states) and not self.not_ready()

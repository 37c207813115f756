"""The /status document: one typed struct, so the JSON and the OpenAPI schema stay in step."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from cairn.components import Status
from cairn.gossip.service import MemberView
from cairn.identity import Identity
from cairn.inference.types import ModelView
from cairn.policy.gate import GateView
from cairn.policy.sleep import UnitView
from cairn.state import Incident
from cairn.system.generations import Generations
from cairn.system.probe import Snapshot

if TYPE_CHECKING:
    from cairn.daemon import Supervisor


class StatusDocument(msgspec.Struct, frozen=True):
    """Everything `GET /status` returns."""

    node: Identity
    version: str
    started_at: float
    uptime_seconds: float
    config_digest: str
    ready: bool
    components: dict[str, Status]
    probe: Snapshot | None
    generation: Generations | None
    generation_reason: str
    models: dict[str, ModelView]
    cluster: list[MemberView] | None
    sleep: list[UnitView]
    gate: GateView
    incidents: list[Incident]


RECENT_INCIDENTS = 20


def incidents(sup: Supervisor) -> list[Incident]:
    """The open incidents, then the most recently closed ones, newest first."""
    every = sup.store.state.incidents
    closed = sorted((i for i in every if i.closed is not None), key=lambda i: -(i.closed or 0))
    return sorted(sup.incidents.open(), key=lambda i: -i.since) + closed[:RECENT_INCIDENTS]


def build(sup: Supervisor) -> StatusDocument:
    """Assemble the status document from the supervisor's current state."""
    return StatusDocument(
        node=sup.identity,
        version=sup.version,
        started_at=sup.started_at,
        uptime_seconds=round(sup.uptime(), 3),
        config_digest=sup.config_digest,
        ready=sup.components.ready(),
        components=sup.components.snapshot(),
        probe=sup.snapshot,
        generation=sup.generation,
        generation_reason=sup.generation_reason,
        models=sup.inference.status(),
        cluster=sup.cluster.status() if sup.cluster else None,
        sleep=sup.sleeper.status(),
        gate=sup.gate.view(),
        incidents=incidents(sup),
    )

"""The /status document: the parts' views in one typed struct, so JSON and OpenAPI agree."""

from __future__ import annotations

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

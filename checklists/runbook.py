"""The runbook as data: load and validate checklists/runbook.toml."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from connectors.errors import ConfigError

from .toml_model import load_model, require_unique_ids

Owner = Literal["contractor", "customer", "customer-sales"]
Urgency = Literal["medium", "high", "low"]

OWNER_LABELS = {"contractor": "Contractor", "customer": "Customer", "customer-sales": "Customer's sales department"}


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^\d+\.\d+$")
    title: str
    owner: Owner
    planned_minutes: float = Field(gt=0)
    action: str = "manual"
    downtime: Literal["start", "end"] | None = None
    notice: Literal["announcement"] | None = None  # a notice the flow sends to users when the step starts
    instructions: str = ""
    verify: bool = False  # run the post-migration checks before asking, show their results
    sweep: bool = False  # straggler sweeps run while the step's pause is open
    presync: bool = False  # the pre-sync keeps the box in step from this step's start to the next step without it
    urgency: Urgency = "medium"  # filled from the phase when not given

    @property
    def phase(self) -> int:
        return int(self.id.split(".")[0])

    @property
    def is_manual(self) -> bool:
        return self.action == "manual"

    @property
    def planned_s(self) -> float:
        return self.planned_minutes * 60

    @property
    def slug(self) -> str:
        """A key-safe form of the id (Prefect keys allow [a-z0-9-])."""
        return self.id.replace(".", "-")


class Phase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    number: int
    title: str
    urgency: Urgency
    gate: str
    steps: list[Step]

    @model_validator(mode="before")
    @classmethod
    def _inherit_urgency(cls, data):
        if isinstance(data, dict):
            urgency = data.get("urgency")
            data["steps"] = [{"urgency": urgency, **s} if isinstance(s, dict) and "urgency" not in s else s
                             for s in data.get("steps", [])]
        return data

    @model_validator(mode="after")
    def _ids_match_phase(self) -> "Phase":
        bad = [s.id for s in self.steps if s.phase != self.number]
        if bad:
            raise ValueError(f"steps {bad} are listed under phase {self.number}")
        return self


class Runbook(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    phases: list[Phase]

    @model_validator(mode="after")
    def _consistent(self) -> "Runbook":
        ids = [s.id for s in self.steps]
        require_unique_ids(ids, "step")
        starts = [s.id for s in self.steps if s.downtime == "start"]
        ends = [s.id for s in self.steps if s.downtime == "end"]
        if len(starts) > 1 or len(ends) > 1 or len(starts) != len(ends):
            raise ValueError("the runbook must mark at most one downtime start and one downtime end, in pairs")
        if starts and ids.index(starts[0]) > ids.index(ends[0]):
            raise ValueError("the downtime end comes before its start")
        return self

    @property
    def steps(self) -> list[Step]:
        return [s for p in self.phases for s in p.steps]

    def phase(self, number: int) -> Phase:
        for p in self.phases:
            if p.number == number:
                return p
        raise KeyError(number)

    def seq(self, step_id: str) -> int:
        return [s.id for s in self.steps].index(step_id)

    def with_actions(self, actions: dict[str, str]) -> "Runbook":
        """A copy where the steps named in ``actions`` (step id → action) are automated."""
        phases = [
            p.model_copy(update={"steps": [s.model_copy(update={"action": actions.get(s.id, s.action)}) for s in p.steps]})
            for p in self.phases
        ]
        return self.model_copy(update={"phases": phases})


def load_runbook(path: str | Path, *, known_actions: set[str] | None = None) -> Runbook:
    """Load a runbook; raise ConfigError listing every problem (unknown actions included)."""
    source = str(path)
    runbook = load_model(path, Runbook, missing="runbook file not found; the shipped one is checklists/runbook.toml")
    if known_actions is not None:
        unknown = [f"[step {s.id}] unknown action {s.action!r}; known: manual, {', '.join(sorted(known_actions)) or '(none)'}"
                   for s in runbook.steps if not s.is_manual and s.action not in known_actions]
        if unknown:
            raise ConfigError(source, unknown)
    return runbook

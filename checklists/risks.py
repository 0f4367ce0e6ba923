"""The risk register (checklists/risks.toml): load it and tell which risks need the customer's acceptance."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from connectors.outputs import Markdown

from .runbook import Owner
from .toml_model import load_model, require_unique_ids

Level = Literal["low", "medium", "high"]

RISKS_PATH = Path(__file__).resolve().parent / "risks.toml"


class Risk(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    title: str
    owner: Owner
    likelihood: Level
    impact: Level
    mitigation: str = ""
    verified_by: str

    @property
    def needs_acceptance(self) -> bool:
        """High impact and nothing planned against it: the customer must accept it knowingly."""
        return self.impact == "high" and not self.mitigation.strip()


class RiskRegister(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    risks: list[Risk]

    @model_validator(mode="after")
    def _unique(self) -> "RiskRegister":
        require_unique_ids([r.id for r in self.risks], "risk")
        return self

    @property
    def needing_acceptance(self) -> list[Risk]:
        return [r for r in self.risks if r.needs_acceptance]

    def rows(self, statuses: dict[str, str] | None = None) -> list[dict]:
        """One row per risk for a table, with its status in the run (default ``open``); rendered
        by :func:`journal.risks.risk_register_markdown`."""
        statuses = statuses or {}
        return [{"id": r.id, "risk": r.title, "owner": r.owner, "likelihood": r.likelihood, "impact": r.impact,
                 "mitigation": r.mitigation or (Markdown("**NONE — needs the customer's acceptance**")
                                                if r.needs_acceptance else "none"),
                 "verified_by": r.verified_by, "status": statuses.get(r.id, "open")} for r in self.risks]

def load_risks(path: str | Path = RISKS_PATH) -> RiskRegister:
    return load_model(path, RiskRegister, missing="risk register not found; the shipped one is checklists/risks.toml")

"""Risk statuses per migration run, and the register as a table (the register itself is checklists/risks.toml)."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import select

from connectors.outputs import markdown_text
from connectors.secrets import redact

from .export import markdown_table
from .models import RiskStatus
from .store import Journal

_COLUMNS = {"id": "id", "risk": "risk", "owner": "owner", "likelihood": "likelihood", "impact": "impact",
            "mitigation": "mitigation", "verified_by": "verified by", "status": "status"}


def set_risk_status(journal: Journal, run_id: str, risk_id: str, status: str, *, decided_by: str | None = None,
                    note: str | None = None) -> None:
    with journal.session() as s:
        s.add(RiskStatus(run_id=run_id, risk_id=risk_id, status=status,
                         decided_by=redact(decided_by) if decided_by else None, note=redact(note) if note else None))


def risk_statuses(journal: Journal, run_id: str) -> dict[str, RiskStatus]:
    """The latest status of each risk in ``run_id``."""
    with journal.session() as s:
        rows = s.scalars(select(RiskStatus).where(RiskStatus.run_id == run_id).order_by(RiskStatus.id))
        return {r.risk_id: r for r in rows}


def risk_decisions(journal: Journal, run_id: str) -> list[RiskStatus]:
    """Every risk decision of ``run_id`` in the order it was journaled (the report's table)."""
    with journal.session() as s:
        return list(s.scalars(select(RiskStatus).where(RiskStatus.run_id == run_id).order_by(RiskStatus.id)))


def risk_register_markdown(register, statuses: dict[str, str] | None = None) -> str:
    """The register (a :class:`checklists.risks.RiskRegister`) as a Markdown table, each risk with
    its status in the run."""
    return markdown_table(register.rows(statuses), _COLUMNS).rstrip("\n")


def risk_register_brief(register, statuses: dict[str, str] | None = None) -> str:
    """The register for a prompt: counts by status and impact, no table (the resume modal is narrow;
    the full register, every column, is in the review)."""
    statuses = statuses or {}
    by_status = Counter(statuses.get(r.id, "open") for r in register.risks)
    high = sum(1 for r in register.risks if r.impact == "high")
    needing = register.needing_acceptance
    text = (f"**Risk register:** {len(register.risks)} risk(s), {high} of high impact; "
            + ", ".join(f"{n} {markdown_text(s)}" for s, n in sorted(by_status.items())) + ".")
    if needing:
        text += (" High impact with no mitigation (your acceptance needed): "
                 + ", ".join(f"**{markdown_text(r.id)}** {markdown_text(r.title)}" for r in needing) + ".")
    return text

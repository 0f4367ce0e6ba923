"""Risk statuses per migration run (the register itself is checklists/risks.toml)."""

from __future__ import annotations

from sqlalchemy import select

from connectors.secrets import redact

from .models import RiskStatus
from .store import Journal


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

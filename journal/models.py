"""SQLAlchemy models of the journal: the audit record of a migration.

The journal, not Prefect's database, is the record auditors read: Prefect keeps events for days,
the journal for as long as the customer wants. It is readable without Prefect.

Tables added by other parts of the product (download parts, CRM id map) derive from the same
:class:`Base` so that ``Base.metadata.create_all`` creates them all.
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite drops tzinfo otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the journal; use UTC-aware datetimes")
        return value.astimezone(dt.timezone.utc)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def new_id() -> str:
    return uuid.uuid4().hex[:12]


class Base(DeclarativeBase):
    type_annotation_map = {dict: JSON, dt.datetime: UTCDateTime}


class MigrationRun(Base):
    """One migration attempt of one portal in one mode (rehearsal or cutover)."""

    __tablename__ = "c2b_runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), index=True)
    portal: Mapped[str] = mapped_column(String(500))
    mode: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), default="running")  # running|failed|rejected|completed
    status_detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    cutoff: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    config_snapshot: Mapped[dict] = mapped_column(default=dict)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    last_flow_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)


class StepExecution(Base):
    """One execution of one runbook step (a failed step that is re-run gets a second row)."""

    __tablename__ = "c2b_step_executions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("c2b_runs.id"), index=True)
    step_id: Mapped[str] = mapped_column(String(16))
    phase: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(Integer)  # position in the runbook, for ordering
    title: Mapped[str] = mapped_column(String(300))
    owner: Mapped[str] = mapped_column(String(32))
    urgency: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64))
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    planned_start: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    planned_end: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    planned_duration_s: Mapped[float] = mapped_column(Float)
    actual_start: Mapped[dt.datetime] = mapped_column(default=utcnow)
    actual_end: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    duration_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    actor: Mapped[str | None] = mapped_column(String(200), nullable=True)
    outcome: Mapped[str] = mapped_column(String(16), default="running")  # running|done|failed|skipped
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    notes: Mapped[str | None] = mapped_column(Text, nullable=True)
    evidence: Mapped[dict] = mapped_column(default=dict)
    counters: Mapped[dict] = mapped_column(default=dict)
    downtime: Mapped[str | None] = mapped_column(String(8), nullable=True)  # start|end|None
    flow_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)


class SignOff(Base):
    """A customer's decision at a phase gate."""

    __tablename__ = "c2b_signoffs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("c2b_runs.id"), index=True)
    phase: Mapped[int] = mapped_column(Integer)
    signer: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(200))
    decision: Mapped[str] = mapped_column(String(16))  # approve|reject
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    signed_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    flow_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Event(Base):
    """A free-form, timestamped entry: warnings, ETA changes, notices, anything worth keeping."""

    __tablename__ = "c2b_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("c2b_runs.id"), index=True)
    step_id: Mapped[str | None] = mapped_column(String(16), nullable=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict] = mapped_column(default=dict)


class RiskStatus(Base):
    """The status of one risk of the register in one migration run, and who decided it."""

    __tablename__ = "c2b_risk_status"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("c2b_runs.id"), index=True)
    risk_id: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(24))  # open|mitigation-planned|accepted|verified
    decided_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)

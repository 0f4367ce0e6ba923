"""The journal store: every write is committed before the caller goes on.

SQLite by default, PostgreSQL by URL. Plain SQLAlchemy, no Prefect: an auditor can read a
journal with nothing but this package.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import threading
from pathlib import Path
from typing import Iterator, Mapping

from sqlalchemy import create_engine, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from connectors.errors import FatalError, RunNotFound, TransientError
from connectors.http_download.disk import make_private_dir, open_private
from connectors.secrets import redact, redact_obj

from . import chain, idmap, signers, triage  # noqa: F401  (their tables must be in Base.metadata before create_all)
from .counters import StepCounters
from .events import EventKind
from .models import Base, Event, MigrationRun, SignOff, StepExecution, utcnow


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets the report read while a flow writes; synchronous=FULL so a commit is on disk.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def _engine_for(url: str) -> Engine:
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            if url.startswith("sqlite"):
                path = url.split("///", 1)[-1]
                if path and path != ":memory:":
                    # the journal holds names, notes and evidence: 0600 (SQLite gives its -wal and -shm
                    # files the database file's mode), in a 0700 directory when it creates one
                    try:
                        make_private_dir(Path(path).parent)
                        os.close(open_private(path, os.O_RDWR))
                    except OSError as exc:
                        raise FatalError(f"the journal file {path} cannot be opened: {exc.strerror or exc}",
                                         fix="set [journal] url to sqlite:///PATH.db in a directory you can "
                                             "write") from None
                engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
                event.listen(engine, "connect", _sqlite_pragmas)
            else:
                engine = create_engine(url, pool_pre_ping=True, connect_args=_connect_timeout(url))
            _engines[url] = engine
        return engine


def _connect_timeout(url: str) -> dict:
    if url.startswith("postgresql"):
        return {"connect_timeout": 10}
    if url.startswith(("mysql", "mariadb")):
        return {"connect_timeout": 10, "read_timeout": 60, "write_timeout": 60}
    return {}


class Journal:
    """Access to one journal database. Thread-safe; each method is one committed transaction."""

    def __init__(self, url: str, *, engine: Engine | None = None, chain_key: bytes | None = None) -> None:
        """``chain_key`` keys the hash chain (HMAC) of every Journal of this URL in the process
        from now on: ``[journal] chain_key_secret``, resolved."""
        self.url = url
        self.engine = engine or _engine_for(url)
        # ChainedSession links every write into the run's hash chain (journal/chain.py).
        self._sessions = sessionmaker(self.engine, class_=chain.ChainedSession, expire_on_commit=False)
        try:
            Base.metadata.create_all(self.engine)
            chain.ensure_schema(self.engine)  # a journal made before the chain format 2
        except SQLAlchemyError as exc:
            raise _convert(exc, url) from None
        chain.use_key(self.engine, chain_key)

    # -- plumbing ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except SQLAlchemyError as exc:
            session.rollback()
            raise _convert(exc, self.url) from None
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    # -- runs -------------------------------------------------------------------------------
    def open_run(self, *, name: str, portal: str, mode: str, timezone: str, config_snapshot: dict,
                 flow_run_id: str | None = None, new: bool = False) -> tuple[MigrationRun, str | None]:
        """Resume the latest unfinished run of (name, mode), or start a new one.

        Returns ``(run, previous_flow_run_id)``; the second is None for a new run, else the flow
        run that worked on it last (the caller retires it). A completed run is never resumed;
        ``new=True`` always starts a fresh run (e.g. a second rehearsal). A flow run that works on a
        run already — one started again after it was suspended waiting for a person — gets that
        run back whatever ``new`` says, with itself as the previous flow run.
        """
        with self.session() as s:
            if flow_run_id:
                own = s.scalars(select(MigrationRun).where(MigrationRun.last_flow_run_id == flow_run_id)
                                .order_by(MigrationRun.created_at.desc()).limit(1)).first()
                if own is not None and own.status != "completed":
                    own.status, own.status_detail, own.ended_at = "running", None, None
                    return own, flow_run_id
            run = None
            if not new:
                run = s.scalars(
                    select(MigrationRun)
                    .where(MigrationRun.name == name, MigrationRun.mode == mode)
                    .order_by(MigrationRun.created_at.desc())
                    .limit(1)
                ).first()
                if run is not None and run.status == "completed":
                    run = None
            if run is not None:
                previous = run.last_flow_run_id or ""
                run.attempts += 1
                run.status, run.status_detail, run.ended_at = "running", None, None
                run.last_flow_run_id = flow_run_id
                return run, previous
            run = MigrationRun(name=name, portal=portal, mode=mode, timezone=timezone,
                               config_snapshot=redact_obj(config_snapshot), last_flow_run_id=flow_run_id)
            s.add(run)
            s.flush()
            return run, None

    def finish_run(self, run_id: str, status: str, detail: str | None = None) -> None:
        with self.session() as s:
            run = self._run(s, run_id)
            run.status = status
            run.status_detail = redact(detail) if detail else None
            run.ended_at = utcnow()

    def get_run(self, run_id: str) -> MigrationRun:
        """The run ``run_id``; :class:`RunNotFound` (listing the latest runs) when there is none."""
        with self.session() as s:
            return self._run(s, run_id)

    def _run(self, s: Session, run_id: str) -> MigrationRun:
        run = s.get(MigrationRun, run_id)
        if run is None:
            known = ", ".join(r.id for r in s.scalars(select(MigrationRun).order_by(MigrationRun.created_at.desc()).limit(5)))
            raise RunNotFound(f"no migration run {run_id!r} in the journal {redact(self.url)}",
                              fix=f"use one of the latest runs: {known or 'none yet'}")
        return run

    def runs(self) -> list[MigrationRun]:
        with self.session() as s:
            return list(s.scalars(select(MigrationRun).order_by(MigrationRun.created_at)))

    def set_cutoff(self, run_id: str, cutoff: dt.datetime) -> None:
        with self.session() as s:
            self._run(s, run_id).cutoff = cutoff

    # -- steps ------------------------------------------------------------------------------
    def completed_steps(self, run_id: str) -> dict[str, StepExecution]:
        """Steps of ``run_id`` whose latest execution is done (never redone on resume)."""
        with self.session() as s:
            rows = s.scalars(select(StepExecution).where(StepExecution.run_id == run_id, StepExecution.outcome == "done"))
            return {r.step_id: r for r in rows}

    def attempts_of(self, run_id: str, step_id: str) -> int:
        with self.session() as s:
            return len(list(s.scalars(select(StepExecution.id).where(
                StepExecution.run_id == run_id, StepExecution.step_id == step_id))))

    def start_step(self, run_id: str, *, step_id: str, phase: int, seq: int, title: str, owner: str,
                   urgency: str, action: str, planned_duration_s: float, planned_start: dt.datetime | None,
                   downtime: str | None = None, flow_run_id: str | None = None) -> int:
        """A new execution row of the step (its attempt numbered), or, when ``flow_run_id`` left the
        step's last row open — it waited for a person and was started again after its suspension —
        that row: the step goes on, it is not attempted again."""
        with self.session() as s:
            rows = list(s.scalars(select(StepExecution).where(
                StepExecution.run_id == run_id, StepExecution.step_id == step_id).order_by(StepExecution.attempt)))
            if flow_run_id and rows and rows[-1].outcome == "running" and rows[-1].flow_run_id == flow_run_id:
                return rows[-1].id
            attempt = 1 + len(rows)
            row = StepExecution(
                run_id=run_id, step_id=step_id, phase=phase, seq=seq, title=title, owner=owner, urgency=urgency,
                action=action, attempt=attempt, planned_duration_s=planned_duration_s, planned_start=planned_start,
                planned_end=planned_start + dt.timedelta(seconds=planned_duration_s) if planned_start else None,
                downtime=downtime, flow_run_id=flow_run_id,
            )
            s.add(row)
            s.flush()
            return row.id

    def finish_step(self, execution_id: int, *, outcome: str, actor: str | None = None, notes: str | None = None,
                    error: str | None = None, evidence: dict | None = None,
                    counters: StepCounters | Mapping | None = None,
                    ended_at: dt.datetime | None = None) -> StepExecution:
        with self.session() as s:
            row = s.get(StepExecution, execution_id)
            row.actual_end = ended_at or utcnow()
            row.duration_s = (row.actual_end - row.actual_start).total_seconds()
            row.outcome = outcome
            row.actor = redact(actor) if actor else None
            row.notes = redact(notes) if notes else None
            row.error = redact(error) if error else None
            row.evidence = redact_obj(evidence or {})
            row.counters = counters.as_dict() if isinstance(counters, StepCounters) else dict(counters or {})
            return row

    def close_stale_steps(self, run_id: str, reason: str) -> int:
        """Mark executions left 'running' by a killed process as failed; returns how many."""
        with self.session() as s:
            rows = list(s.scalars(select(StepExecution).where(
                StepExecution.run_id == run_id, StepExecution.outcome == "running")))
            for row in rows:
                row.outcome, row.error = "failed", reason
                row.actual_end = utcnow()
                row.duration_s = (row.actual_end - row.actual_start).total_seconds()
            return len(rows)

    def steps(self, run_id: str) -> list[StepExecution]:
        with self.session() as s:
            return list(s.scalars(select(StepExecution).where(StepExecution.run_id == run_id)
                                  .order_by(StepExecution.seq, StepExecution.attempt)))

    # -- sign-offs and events ---------------------------------------------------------------
    def record_signoff(self, run_id: str, *, phase: int, signer: str, role: str, decision: str,
                       comment: str | None, flow_run_id: str | None = None) -> SignOff:
        with self.session() as s:
            row = SignOff(run_id=run_id, phase=phase, signer=redact(signer), role=redact(role), decision=decision,
                          comment=redact(comment) if comment else None, flow_run_id=flow_run_id)
            s.add(row)
            return row

    def signoffs(self, run_id: str) -> list[SignOff]:
        with self.session() as s:
            return list(s.scalars(select(SignOff).where(SignOff.run_id == run_id).order_by(SignOff.id)))

    def approved_phases(self, run_id: str) -> set[int]:
        return {so.phase for so in self.signoffs(run_id) if so.decision == "approve"}

    def add_event(self, run_id: str, kind: EventKind, message: str, data: dict | None = None,
                  step_id: str | None = None) -> None:
        with self.session() as s:
            # plain text in the row: the enum's value is what journals store and hash
            s.add(Event(run_id=run_id, kind=str(kind), message=redact(message), data=redact_obj(data or {}),
                        step_id=step_id))

    def events(self, run_id: str, kind: EventKind | None = None) -> list[Event]:
        with self.session() as s:
            q = select(Event).where(Event.run_id == run_id)
            if kind:
                q = q.where(Event.kind == kind)
            return list(s.scalars(q.order_by(Event.id)))


def _convert(exc: SQLAlchemyError, url: str) -> Exception:
    from sqlalchemy.exc import DBAPIError, OperationalError

    where = redact(url)
    if isinstance(exc, OperationalError):
        return TransientError(f"journal database {where} is unavailable: {type(exc.orig).__name__}",
                              fix="check that the database is running and reachable, then re-run")
    if isinstance(exc, DBAPIError):
        return FatalError(f"journal database {where} refused a write: {type(exc.orig).__name__}: {redact(exc.orig)}",
                          fix="check the journal URL and the database user's rights")
    return FatalError(f"journal error on {where}: {redact(exc)}")

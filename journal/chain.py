"""The tamper-evident journal: a hash chain per migration run.

Every insert, update or delete of a journal row (runs, step executions, sign-offs, events,
issues, backup parts) appends one link to ``c2b_chain``::

    entry_hash = sha256(prev_hash | run_id | seq | table | row_id | op | content_hash | at)

where ``content_hash`` is the sha256 of the row's canonical JSON *as read back from the
database* in the same transaction, and ``prev_hash`` is the previous link's ``entry_hash``
(``GENESIS`` for the first link of a run). The links are written by a session ``after_flush``
hook of :class:`ChainedSession` (the session class of :class:`journal.store.Journal`), so every
write through the Journal is chained without the callers doing anything.

:func:`verify_run` recomputes everything and reports, in chain order:

- a link whose ``prev_hash``/``entry_hash``/``seq`` does not match (a link edited, deleted or
  reordered),
- a row whose current content differs from its latest link (a journal entry edited),
- a link whose row is gone without a ``delete`` link (a journal entry deleted),
- a row of the run with no link at all (an entry inserted behind the journal's back).

What it cannot prove: someone with write access who recomputes the whole chain. Keep the head
hash (shown in the report and the final notice) somewhere else; a rewritten chain then has a
different head.

Only tables named here are chained: writes that bypass the ORM (bulk Core updates, used e.g. for
download progress) would otherwise look like tampering.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field

from sqlalchemy import Integer, String, event, insert, select
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Mapped, Session, mapped_column

from .models import Base, MigrationRun, utcnow

GENESIS = "0" * 64

# The id map (c2b_crm_id_map) is not chained: thousands of rows per delta, and the
# reconciliation evidence of the delta step already vouches for it.
_CHAINED = frozenset({"c2b_runs", "c2b_step_executions", "c2b_signoffs", "c2b_events", "c2b_issues",
                      "c2b_backup_parts"})


class ChainEntry(Base):
    """One link of a run's hash chain (append-only)."""

    __tablename__ = "c2b_chain"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(32), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    table_name: Mapped[str] = mapped_column(String(64))
    row_id: Mapped[str] = mapped_column(String(200))
    op: Mapped[str] = mapped_column(String(8))  # insert|update|delete
    content_hash: Mapped[str] = mapped_column(String(64))
    prev_hash: Mapped[str] = mapped_column(String(64))
    entry_hash: Mapped[str] = mapped_column(String(64))
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)


# -- hashing ------------------------------------------------------------------------------------

def _jsonable(value):
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:  # SQLite hands back naive values through Core for plain DateTime
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc).isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, bytes):
        return value.hex()
    return value


def canonical(row: dict) -> str:
    """Canonical JSON of a row: sorted keys, UTC ISO datetimes, floats by repr."""
    return json.dumps({k: _jsonable(v) for k, v in row.items()}, sort_keys=True, ensure_ascii=False,
                      separators=(",", ":"), default=str)


def content_hash(row: dict | None) -> str:
    if row is None:
        return hashlib.sha256(b"<deleted>").hexdigest()
    return hashlib.sha256(canonical(row).encode("utf-8")).hexdigest()


def entry_hash(prev_hash: str, run_id: str, seq: int, table: str, row_id: str, op: str, chash: str,
               at: dt.datetime) -> str:
    text = "|".join([prev_hash, run_id, str(seq), table, row_id, op, chash, _jsonable(at)])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _row_id(table, values: dict) -> str:
    return json.dumps([_jsonable(values[c.name]) for c in table.primary_key.columns])


def _run_of(table_name: str, values: dict) -> str | None:
    return values.get("id") if table_name == "c2b_runs" else values.get("run_id")


# -- the hook -----------------------------------------------------------------------------------

def _after_flush(session: Session, _context) -> None:
    changes: list[tuple[object, str]] = []
    for obj in session.new:
        changes.append((obj, "insert"))
    for obj in session.dirty:
        if session.is_modified(obj, include_collections=False):
            changes.append((obj, "update"))
    for obj in session.deleted:
        changes.append((obj, "delete"))
    if not changes:
        return
    conn = session.connection()
    chain = ChainEntry.__table__
    heads: dict[str, tuple[int, str]] = {}
    for obj, op in changes:
        table = getattr(obj, "__table__", None)
        if table is None or table.name not in _CHAINED:
            continue
        if op == "delete":
            # The loaded state only: touching attributes of a deleted object may try to reload it.
            loaded = sa_inspect(obj).dict
            values = {c.name: loaded.get(_attr_name(obj, c.name)) for c in table.columns}
            row = None
        else:
            # The row as stored (after type processing), so verify() hashes exactly the same thing.
            pk = {c.name: getattr(obj, _attr_name(obj, c.name)) for c in table.primary_key.columns}
            where = [table.c[k] == v for k, v in pk.items()]
            found = conn.execute(select(table).where(*where)).mappings().first()
            if found is None:
                continue
            values = row = dict(found)
        run_id = _run_of(table.name, values)
        if not run_id:
            continue
        if run_id not in heads:
            # Serialise writers of the same run (no-op on SQLite, whose write lock is already held).
            conn.execute(select(MigrationRun.__table__.c.id).where(MigrationRun.__table__.c.id == run_id)
                         .with_for_update())
            last = conn.execute(select(chain.c.seq, chain.c.entry_hash).where(chain.c.run_id == run_id)
                                .order_by(chain.c.seq.desc()).limit(1)).first()
            heads[run_id] = (last.seq, last.entry_hash) if last else (0, GENESIS)
        seq, prev = heads[run_id]
        seq += 1
        at = utcnow().replace(microsecond=0)  # what every backend stores exactly (MySQL DATETIME has no fraction)
        rid = _row_id(table, values)
        chash = content_hash(row)
        ehash = entry_hash(prev, run_id, seq, table.name, rid, op, chash, at)
        conn.execute(insert(chain).values(run_id=run_id, seq=seq, table_name=table.name, row_id=rid, op=op,
                                          content_hash=chash, prev_hash=prev, entry_hash=ehash, at=at))
        heads[run_id] = (seq, ehash)


def _attr_name(obj, column_name: str) -> str:
    mapper = obj.__mapper__
    for prop in mapper.column_attrs:
        if any(c.name == column_name for c in prop.columns):
            return prop.key
    return column_name


class ChainedSession(Session):
    """A Session whose every flush is linked into the runs' hash chains (``sessionmaker(class_=…)``)."""


# Registered once on the class, not per sessionmaker: SQLAlchemy's listener registry is keyed by
# id(), and a Journal made per task would otherwise hit a recycled id and silently lose its hook.
event.listen(ChainedSession, "after_flush", _after_flush)


# -- verification -------------------------------------------------------------------------------

@dataclass
class Problem:
    """One finding of :func:`verify_run`; ``seq`` is the chain link it concerns (None: no link)."""

    kind: str  # link-broken|edited|deleted|unchained
    table: str
    row_id: str
    seq: int | None
    message: str


@dataclass
class VerifyResult:
    run_id: str
    entries: int
    head_hash: str
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def status(self) -> str:
        """intact | tampered | unchained (no link at all: written before the chain existed)."""
        if self.ok:
            return "intact"
        return "unchained" if self.entries == 0 else "tampered"

    @property
    def first_broken(self) -> Problem | None:
        """The earliest problem in chain order (rows with no link come last)."""
        if not self.problems:
            return None
        return min(self.problems, key=lambda p: (p.seq is None, p.seq or 0))

    def summary(self) -> str:
        if self.ok:
            return (f"run {self.run_id}: journal intact — {self.entries} chained entries, "
                    f"head hash {self.head_hash}")
        if self.status == "unchained":
            return (f"run {self.run_id}: NOT CHAINED — its {len(self.problems)} journal entries have no hash chain "
                    f"(written by a version of cloud2box without it); integrity cannot be proven")
        first = self.first_broken
        lines = [f"run {self.run_id}: journal TAMPERED — {len(self.problems)} problem(s); "
                 f"first broken entry: {first.message}"]
        lines += [f"  - {p.message}" for p in self.problems]
        return "\n".join(lines)


def _describe(table: str, row_id: str, row: dict | None) -> str:
    ident = json.loads(row_id)
    label = {"c2b_runs": "run", "c2b_step_executions": "step execution", "c2b_signoffs": "sign-off",
             "c2b_events": "event", "c2b_issues": "issue", "c2b_backup_parts": "backup part"}.get(table, table)
    extra = ""
    if row:
        if row.get("step_id"):
            extra = f", step {row['step_id']}"
        elif row.get("phase") is not None and table == "c2b_signoffs":
            extra = f", phase {row['phase']}"
        if table == "c2b_events":
            extra += f", kind {row.get('kind')}"
    return f"{label} {'/'.join(map(str, ident))}{extra} ({table})"


def verify(session: Session, run_id: str) -> VerifyResult:
    """Recompute the chain of ``run_id`` and compare it with the journal rows."""
    chain = ChainEntry.__table__
    links = list(session.execute(select(chain).where(chain.c.run_id == run_id).order_by(chain.c.seq, chain.c.id))
                 .mappings())
    problems: list[Problem] = []
    prev = GENESIS
    latest: dict[tuple[str, str], dict] = {}
    for expected_seq, link in enumerate(links, start=1):
        recomputed = entry_hash(link["prev_hash"], run_id, link["seq"], link["table_name"], link["row_id"],
                                link["op"], link["content_hash"], link["at"])
        where = f"chain entry {link['seq']} ({_describe(link['table_name'], link['row_id'], None)})"
        if link["seq"] != expected_seq or link["prev_hash"] != prev:
            problems.append(Problem("link-broken", link["table_name"], link["row_id"], link["seq"],
                                    f"{where}: does not follow entry {expected_seq - 1} — chain entries were "
                                    f"deleted, inserted or reordered"))
        elif recomputed != link["entry_hash"]:
            problems.append(Problem("link-broken", link["table_name"], link["row_id"], link["seq"],
                                    f"{where}: its hash does not match its content — the chain entry was edited"))
        prev = link["entry_hash"]
        latest[(link["table_name"], link["row_id"])] = dict(link)

    inspector = sa_inspect(session.connection())
    # A table another module defines may not exist in an older journal yet.
    tables = {t.name: t for t in Base.metadata.sorted_tables if t.name in _CHAINED and inspector.has_table(t.name)}
    seen: set[tuple[str, str]] = set()
    for name, table in tables.items():
        run_col = table.c.id if name == "c2b_runs" else table.c.get("run_id")
        if run_col is None:
            continue
        for row in session.execute(select(table).where(run_col == run_id)).mappings():
            row = dict(row)
            rid = _row_id(table, row)
            seen.add((name, rid))
            link = latest.get((name, rid))
            if link is None:
                problems.append(Problem("unchained", name, rid, None,
                                        f"{_describe(name, rid, row)} has no chain entry — inserted behind the "
                                        f"journal's back"))
            elif link["op"] == "delete" or link["content_hash"] != content_hash(row):
                problems.append(Problem("edited", name, rid, link["seq"],
                                        f"chain entry {link['seq']}: {_describe(name, rid, row)} was edited after "
                                        f"it was journaled"))
    for (name, rid), link in latest.items():
        if (name, rid) not in seen and link["op"] != "delete" and name in tables:
            problems.append(Problem("deleted", name, rid, link["seq"],
                                    f"chain entry {link['seq']}: {_describe(name, rid, None)} was deleted"))
    problems.sort(key=lambda p: (p.seq is None, p.seq or 0))
    return VerifyResult(run_id=run_id, entries=len(links), head_hash=prev, problems=problems)


def verify_run(journal, run_id: str) -> VerifyResult:
    """``cloud2box journal verify --run ID``: verify one run of ``journal`` (a :class:`Journal`).

    Reads the chain and the rows in one snapshot, so a run that is being written while it is
    verified does not show half-committed writes as tampering.
    """
    journal.get_run(run_id)  # a clear error for an unknown run id
    with journal.engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN")  # pysqlite runs each SELECT in its own snapshot otherwise
        else:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with Session(bind=conn) as s:
            result = verify(s, run_id)
        conn.rollback()
    return result


def head_hash(journal, run_id: str) -> str:
    """The latest entry hash of the run's chain (GENESIS when nothing is chained yet)."""
    chain = ChainEntry.__table__
    with journal.session() as s:
        last = s.execute(select(chain.c.entry_hash).where(chain.c.run_id == run_id)
                         .order_by(chain.c.seq.desc()).limit(1)).scalar()
    return last or GENESIS

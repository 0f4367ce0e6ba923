"""The tamper-evident journal: a hash chain per migration run, anchored outside the journal.

Every insert, update or delete of a journal row (runs, step executions, sign-offs, events,
issues, backup parts, risk decisions, the CRM id map) appends one link to ``c2b_chain``::

    entry_hash = H("v2" | alg | prev_hash | run_id | seq | table | row_id | op | content_hash | at)

where ``content_hash`` is the sha256 of the row's canonical JSON *as read back from the
database* in the same transaction, ``prev_hash`` is the previous link's ``entry_hash``, and H is
sha256 (``alg = "sha256"``) or, when the journal has a chain key (``[journal] chain_key_secret``),
HMAC-SHA256 with it (``alg = "hmac-sha256:<key id>"``). A run's first link follows
:func:`run_genesis` of the run before it, so a run deleted from the middle of the journal leaves
the next run pointing at nothing. The links are written by a session ``after_flush`` hook of
:class:`ChainedSession`, in one statement per flush, so every write through the Journal (and the
id map's batches) is chained without the callers doing anything.

:func:`verify` recomputes everything and reports, in chain order:

- a link whose ``prev_hash``/``entry_hash``/``seq`` does not match (a link edited, deleted or
  reordered), or a run whose first link follows a run that is gone (a whole run deleted),
- a row whose current content differs from its latest link (a journal entry edited),
- a link whose row is gone without a ``delete`` link (a journal entry deleted),
- a row of the run with no link at all (an entry inserted behind the journal's back).

What the chain alone cannot prove: a cut tail (the last links and rows removed together), a
deleted last run, or a rewrite recomputed with this code. The anchor (:mod:`journal.anchor`:
the run count and the head hash, sent away at every gate and at the end) shows the first two and
a rewrite; a chain key makes a rewrite need the key as well.

Journals written before this format (links without ``alg``, "format 1") still verify: their
links are checked as they were made, and rows of tables that format 1 did not chain (risk
decisions, the id map) are reported as *not covered*, never as intact.

Only tables named here are chained: writes that bypass the ORM (bulk Core updates, used e.g. for
download progress) would otherwise look like tampering.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import json
import threading
import weakref
from dataclasses import dataclass, field

from sqlalchemy import Index, Integer, String, event, insert, select, text
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Mapped, Session, mapped_column

from .models import Base, MigrationRun, utcnow

GENESIS = "0" * 64  # the first link of a format-1 run

_CHAINED = frozenset({"c2b_runs", "c2b_step_executions", "c2b_signoffs", "c2b_events", "c2b_issues",
                      "c2b_backup_parts", "c2b_risk_status", "c2b_crm_id_map", "c2b_sign_codes"})
# Chained since format 2 only: in a run whose chain began in format 1 their rows may have no link.
_CHAINED_SINCE_V2 = frozenset({"c2b_risk_status", "c2b_crm_id_map"})
_GONE_OPS = ("delete", "moved")  # after these the row is no longer in the run
_SELECT_CHUNK = 500  # primary keys per IN (...) when reading a flush's rows back


class ChainEntry(Base):
    """One link of a run's hash chain (append-only)."""

    __tablename__ = "c2b_chain"
    # every write reads its run's last link: without this an id map of 100 000 rows sorts its whole chain per batch
    __table_args__ = (Index("ix_c2b_chain_run_seq", "run_id", "seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(32), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    table_name: Mapped[str] = mapped_column(String(64))
    row_id: Mapped[str] = mapped_column(String(200))
    op: Mapped[str] = mapped_column(String(8))  # insert|update|delete|moved
    content_hash: Mapped[str] = mapped_column(String(64))
    prev_hash: Mapped[str] = mapped_column(String(64))
    entry_hash: Mapped[str] = mapped_column(String(64))
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # None: format 1 (plain sha256 without the algorithm in the text); else sha256 or hmac-sha256:<key id>
    alg: Mapped[str | None] = mapped_column(String(40), nullable=True)


# -- the chain key and the schema -----------------------------------------------------------------

_KEYS: weakref.WeakKeyDictionary[Engine, bytes] = weakref.WeakKeyDictionary()
_UPGRADED: weakref.WeakSet[Engine] = weakref.WeakSet()
_upgrade_lock = threading.Lock()


def key_id(key: bytes) -> str:
    """A short public name of a chain key (an HMAC of a constant): tells keys apart, reveals nothing."""
    return hmac.new(key, b"cloud2box chain key id", hashlib.sha256).hexdigest()[:16]


def use_key(engine: Engine, key: bytes | None) -> None:
    """Key every link written through ``engine`` from now on (every Journal of this URL in the process)."""
    if key:
        _KEYS[engine] = key


def key_for(engine: Engine) -> bytes | None:
    return _KEYS.get(engine)


def ensure_schema(engine: Engine) -> None:
    """Create ``c2b_chain`` if missing and add the ``alg`` column to a format-1 journal's chain."""
    if engine in _UPGRADED:
        return
    with _upgrade_lock:
        ChainEntry.__table__.create(engine, checkfirst=True)
        if "alg" not in {c["name"] for c in sa_inspect(engine).get_columns("c2b_chain")}:
            try:
                with engine.begin() as conn:
                    conn.execute(text("ALTER TABLE c2b_chain ADD COLUMN alg VARCHAR(40)"))
            except SQLAlchemyError:
                # another process may have added it in between; anything else is a real error
                if "alg" not in {c["name"] for c in sa_inspect(engine).get_columns("c2b_chain")}:
                    raise
        for index in ChainEntry.__table__.indexes:
            index.create(engine, checkfirst=True)
        _UPGRADED.add(engine)


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
               at: dt.datetime, alg: str | None = None, key: bytes | None = None) -> str:
    """The hash of one link. ``alg`` None is format 1 (kept for journals made before format 2);
    an ``hmac-sha256:…`` link needs ``key`` (ValueError without it)."""
    fields = [prev_hash, run_id, str(seq), table, row_id, op, chash, _jsonable(at)]
    if alg is None:
        return hashlib.sha256("|".join(fields).encode("utf-8")).hexdigest()
    data = "|".join(["v2", alg, *fields]).encode("utf-8")
    if alg.startswith("hmac-sha256:"):
        if not key:
            raise ValueError("a keyed chain link needs the chain key")
        return hmac.new(key, data, hashlib.sha256).hexdigest()
    return hashlib.sha256(data).hexdigest()


def run_genesis(previous_run_id: str | None) -> str:
    """What a run's first link follows: the run started before it ("" for the journal's first run)."""
    return hashlib.sha256(f"cloud2box-run-after|{previous_run_id or ''}".encode("utf-8")).hexdigest()


def alg_for(key: bytes | None) -> str:
    return f"hmac-sha256:{key_id(key)}" if key else "sha256"


def _row_id(table, values: dict) -> str:
    return json.dumps([_jsonable(values[c.name]) for c in table.primary_key.columns])


def _run_of(table_name: str, values: dict) -> str | None:
    return values.get("id") if table_name == "c2b_runs" else values.get("run_id")


# -- the hook -----------------------------------------------------------------------------------

@dataclass
class _Change:
    table: object
    obj: object
    op: str
    values: dict | None = None  # the row's columns (as stored; for a delete, as loaded)
    row: dict | None = None  # what is hashed: the row as stored, None for a delete
    moved_from: str | None = None  # the run the row belonged to before this update


def _changes(session: Session) -> list[_Change]:
    found = [(obj, "insert") for obj in session.new]
    found += [(obj, "update") for obj in session.dirty if session.is_modified(obj, include_collections=False)]
    found += [(obj, "delete") for obj in session.deleted]
    out = []
    for obj, op in found:
        table = getattr(obj, "__table__", None)
        if table is not None and table.name in _CHAINED:
            out.append(_Change(table, obj, op))
    return out


def _read_back(conn, changes: list[_Change]) -> None:
    """Fill in each change's row as stored (after type processing, so verify() hashes exactly the
    same thing): one SELECT per table and chunk, not one per row (the id map writes batches)."""
    wanted: dict[object, dict] = {}
    for ch in changes:
        if ch.op == "delete":
            # The loaded state only: touching attributes of a deleted object may try to reload it.
            loaded = sa_inspect(ch.obj).dict
            ch.values = {c.name: loaded.get(_attr_name(ch.obj, c.name)) for c in ch.table.columns}
            continue
        pk = tuple(getattr(ch.obj, _attr_name(ch.obj, c.name)) for c in ch.table.primary_key.columns)
        wanted.setdefault(ch.table, {})[pk] = ch
    for table, by_pk in wanted.items():
        pk_cols = list(table.primary_key.columns)
        keys = list(by_pk)
        for i in range(0, len(keys), _SELECT_CHUNK):
            chunk = keys[i:i + _SELECT_CHUNK]
            if len(pk_cols) == 1:
                where = pk_cols[0].in_([k[0] for k in chunk])
                rows = conn.execute(select(table).where(where)).mappings()
            else:  # no chained table has a composite key today; stay correct if one does
                rows = [r for k in chunk for r in conn.execute(select(table).where(
                    *[c == v for c, v in zip(pk_cols, k)])).mappings()]
            for found in rows:
                ch = by_pk.get(tuple(found[c.name] for c in pk_cols))
                if ch is not None:
                    ch.values = ch.row = dict(found)
        for ch in by_pk.values():
            if ch.op == "update" and ch.values is not None and "run_id" in table.c:
                ch.moved_from = _previous_run(ch.obj, ch.values.get("run_id"))


def _previous_run(obj, run_id: str | None) -> str | None:
    """The run a row was in before this flush moved it to ``run_id`` (the id map's repoint does)."""
    history = sa_inspect(obj).attrs[_attr_name(obj, "run_id")].history
    old = history.deleted[0] if history.deleted else None
    return old if old and old != run_id else None


def _head(conn, heads: dict, run_id: str) -> tuple[int, str]:
    if run_id not in heads:
        runs = MigrationRun.__table__
        chain = ChainEntry.__table__
        # Serialise writers of the same run (no-op on SQLite, whose write lock is already held).
        conn.execute(select(runs.c.id).where(runs.c.id == run_id).with_for_update())
        last = conn.execute(select(chain.c.seq, chain.c.entry_hash).where(chain.c.run_id == run_id)
                            .order_by(chain.c.seq.desc()).limit(1)).first()
        if last:
            heads[run_id] = (last.seq, last.entry_hash)
        else:
            before = conn.execute(select(runs.c.id).where(runs.c.id != run_id)
                                  .order_by(runs.c.created_at.desc(), runs.c.id.desc()).limit(1)).scalar()
            heads[run_id] = (0, run_genesis(before))
    return heads[run_id]


def _after_flush(session: Session, _context) -> None:
    changes = _changes(session)
    if not changes:
        return
    conn = session.connection()
    _read_back(conn, changes)
    key = key_for(conn.engine)
    alg = alg_for(key)
    heads: dict[str, tuple[int, str]] = {}
    links: list[dict] = []
    at = utcnow().replace(microsecond=0)  # what every backend stores exactly (MySQL DATETIME has no fraction)

    def link(run_id: str, ch: _Change, op: str, chash: str) -> None:
        seq, prev = _head(conn, heads, run_id)
        seq += 1
        rid = _row_id(ch.table, ch.values)
        ehash = entry_hash(prev, run_id, seq, ch.table.name, rid, op, chash, at, alg, key)
        links.append(dict(run_id=run_id, seq=seq, table_name=ch.table.name, row_id=rid, op=op, content_hash=chash,
                          prev_hash=prev, entry_hash=ehash, at=at, alg=alg))
        heads[run_id] = (seq, ehash)

    for ch in changes:
        if ch.values is None:
            continue  # deleted again in the same flush
        if ch.moved_from:  # the row leaves the old run's chain as visibly as it joins the new one
            link(ch.moved_from, ch, "moved", content_hash(ch.row))
        run_id = _run_of(ch.table.name, ch.values)
        if run_id:
            link(run_id, ch, ch.op, content_hash(ch.row))
    if links:
        conn.execute(insert(ChainEntry.__table__), links)


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

    kind: str  # link-broken|run-missing|edited|deleted|unchained|not-covered
    table: str
    row_id: str
    seq: int | None
    message: str


@dataclass
class VerifyResult:
    """What :func:`verify` found in one run. ``problems`` are evidence of tampering; ``uncovered``
    are rows the chain does not vouch for (written before it chained them); the key counters say
    how many links could be checked against the chain key."""

    run_id: str
    entries: int
    head_hash: str
    problems: list[Problem] = field(default_factory=list)
    uncovered: list[Problem] = field(default_factory=list)
    keyed: int = 0  # links keyed with the key we were given
    keyed_unchecked: int = 0  # keyed links we could not check (no key, or another key)
    unkeyed: int = 0  # plain sha256 links (format 1 or 2)
    key_given: bool = False

    @property
    def ok(self) -> bool:
        """Nothing wrong was found (which is less than "intact": see :attr:`status`)."""
        return not self.problems

    @property
    def status(self) -> str:
        """tampered | unchained (no link at all) | partially chained (rows not covered) | keys not
        checked (keyed links, no or another key) | not keyed (a key was given, links are plain) | intact."""
        if self.problems:
            return "tampered"
        if self.entries == 0 and self.uncovered:
            return "unchained"
        if self.uncovered:
            return "partially chained"
        if self.keyed_unchecked:
            return "keys not checked"
        if self.key_given and self.unkeyed:
            return "not keyed"
        return "intact"

    @property
    def proven(self) -> bool:
        return self.status == "intact"

    @property
    def mode(self) -> str:
        if self.keyed or self.keyed_unchecked:
            return "partly keyed" if self.unkeyed else "keyed"
        return "unkeyed"

    @property
    def first_broken(self) -> Problem | None:
        """The earliest problem in chain order (rows with no link come last)."""
        if not self.problems:
            return None
        return min(self.problems, key=lambda p: (p.seq is None, p.seq or 0))

    def summary(self) -> str:
        head = f"{self.entries} chained entries, head hash {self.head_hash}"
        status = self.status
        if status == "tampered":
            first = self.first_broken
            lines = [(f"run {self.run_id}: journal TAMPERED — {len(self.problems)} problem(s); "
                      f"first broken entry: {first.message}")]
            return "\n".join(lines + [f"  - {p.message}" for p in self.problems])
        if status == "unchained":
            return (f"run {self.run_id}: NOT CHAINED — its {len(self.uncovered)} journal entries have no hash chain "
                    f"(written by a version of cloud2box without it); integrity cannot be proven")
        if status == "partially chained":
            tables = sorted({p.table for p in self.uncovered})
            return (f"run {self.run_id}: PARTIALLY CHAINED — {head}; {len(self.uncovered)} entries of "
                    f"{', '.join(tables)} were written before this journal chained them: they cannot be proven")
        if status == "keys not checked":
            why = "no chain key was given" if not self.key_given else "they were keyed with another key"
            return (f"run {self.run_id}: chain consistent, KEYS NOT CHECKED — {head}; {self.keyed_unchecked} keyed "
                    f"entries cannot be checked ({why}): pass the key ([journal] chain_key_secret with --config) "
                    f"to rule out a rewrite")
        if status == "not keyed":
            return (f"run {self.run_id}: chain consistent, NOT KEYED — {head}; {self.unkeyed} entries carry no key "
                    f"(written before the key was set, or rewritten without it): only the anchor rules out a rewrite")
        return f"run {self.run_id}: journal intact ({self.mode}) — {head}"


_LABELS = {"c2b_runs": "run", "c2b_step_executions": "step execution", "c2b_signoffs": "sign-off",
           "c2b_events": "event", "c2b_issues": "issue", "c2b_backup_parts": "backup part",
           "c2b_risk_status": "risk decision", "c2b_crm_id_map": "id map entry", "c2b_sign_codes": "one-time code"}


def _describe(table: str, row_id: str, row: dict | None) -> str:
    ident = json.loads(row_id)
    extra = ""
    if row:
        if table == "c2b_risk_status":
            extra = f", risk {row.get('risk_id')} {row.get('status')}"
        elif table == "c2b_crm_id_map":
            extra = f", {row.get('entity')} {row.get('cloud_id')} → {row.get('box_id')}"
        elif row.get("step_id"):
            extra = f", step {row['step_id']}"
        elif row.get("phase") is not None and table == "c2b_signoffs":
            extra = f", phase {row['phase']}"
        if table == "c2b_events":
            extra += f", kind {row.get('kind')}"
    return f"{_LABELS.get(table, table)} {'/'.join(map(str, ident))}{extra} ({table})"


def _check_links(result: VerifyResult, links: list[dict], key: bytes | None, known_runs: set[str]) -> str:
    """Follow the run's links: order, predecessors, hashes. Returns the head hash."""
    run_id = result.run_id
    our_key = alg_for(key) if key else None
    prev = GENESIS
    for expected_seq, link in enumerate(links, start=1):
        alg = link.get("alg")
        where = f"chain entry {link['seq']} ({_describe(link['table_name'], link['row_id'], None)})"
        if link["seq"] != expected_seq:
            result.problems.append(Problem("link-broken", link["table_name"], link["row_id"], link["seq"],
                                           f"{where}: does not follow entry {expected_seq - 1} — chain entries "
                                           f"were deleted, inserted or reordered"))
        elif expected_seq == 1 and alg is not None:
            if link["prev_hash"] not in {run_genesis(r) for r in known_runs | {""}}:
                result.problems.append(Problem("run-missing", link["table_name"], link["row_id"], 1,
                                               f"{where}: the run was started after a run that is no longer in "
                                               f"the journal — a whole run was deleted"))
        elif link["prev_hash"] != prev:
            result.problems.append(Problem("link-broken", link["table_name"], link["row_id"], link["seq"],
                                           f"{where}: does not follow entry {expected_seq - 1} — chain entries "
                                           f"were deleted, inserted or reordered"))
        if alg and alg.startswith("hmac-sha256:") and alg != our_key:
            result.keyed_unchecked += 1  # the links still have to follow each other, checked above
        else:
            recomputed = entry_hash(link["prev_hash"], run_id, link["seq"], link["table_name"], link["row_id"],
                                    link["op"], link["content_hash"], link["at"], alg, key)
            if alg == our_key and our_key:
                result.keyed += 1
            else:
                result.unkeyed += 1
            if recomputed != link["entry_hash"]:
                how = "the chain key's MAC does not match: edited or rewritten without the key" if alg == our_key \
                    and our_key else "its hash does not match its content — the chain entry was edited"
                result.problems.append(Problem("link-broken", link["table_name"], link["row_id"], link["seq"],
                                               f"{where}: {how}"))
        prev = link["entry_hash"]
    return prev


def verify(session: Session, run_id: str, *, key: bytes | None = None,
           known_runs: set[str] | None = None) -> VerifyResult:
    """Recompute the chain of ``run_id`` and compare it with the journal rows.

    ``key`` checks keyed links (without it they are counted as not checked); ``known_runs`` are
    the run ids a run's first link may follow (default: the runs in the journal).
    """
    chain = ChainEntry.__table__
    has_alg = "alg" in {c["name"] for c in sa_inspect(session.connection()).get_columns("c2b_chain")}
    cols = [c for c in chain.columns if c.name != "alg" or has_alg]
    links = [dict(r) for r in session.execute(select(*cols).where(chain.c.run_id == run_id)
                                              .order_by(chain.c.seq, chain.c.id)).mappings()]
    if known_runs is None:
        known_runs = set(session.scalars(select(MigrationRun.__table__.c.id)))
    result = VerifyResult(run_id=run_id, entries=len(links), head_hash=GENESIS, key_given=bool(key))
    result.head_hash = _check_links(result, links, key, known_runs)
    latest = {(link["table_name"], link["row_id"]): link for link in links}
    # Rows of tables format 1 did not chain are covered only if the run's chain began in format 2.
    v2_from_start = bool(links) and links[0].get("alg") is not None
    _check_rows(session, result, latest, v2_from_start)
    result.problems.sort(key=lambda p: (p.seq is None, p.seq or 0))
    return result


def _check_rows(session: Session, result: VerifyResult, latest: dict, v2_from_start: bool) -> None:
    inspector = sa_inspect(session.connection())
    # A table another module defines may not exist in an older journal yet.
    tables = {t.name: t for t in Base.metadata.sorted_tables if t.name in _CHAINED and inspector.has_table(t.name)}
    seen: set[tuple[str, str]] = set()
    for name, table in tables.items():
        run_col = table.c.id if name == "c2b_runs" else table.c.get("run_id")
        if run_col is None:
            continue
        for row in session.execute(select(table).where(run_col == result.run_id)).mappings():
            row = dict(row)
            rid = _row_id(table, row)
            seen.add((name, rid))
            link = latest.get((name, rid))
            if link is None:
                if result.entries == 0 or (name in _CHAINED_SINCE_V2 and not v2_from_start):
                    result.uncovered.append(Problem("not-covered", name, rid, None,
                                                    f"{_describe(name, rid, row)} has no chain entry (written "
                                                    f"before the journal chained it)"))
                else:
                    result.problems.append(Problem("unchained", name, rid, None,
                                                   f"{_describe(name, rid, row)} has no chain entry — inserted "
                                                   f"behind the journal's back"))
            elif link["op"] in _GONE_OPS or link["content_hash"] != content_hash(row):
                result.problems.append(Problem("edited", name, rid, link["seq"],
                                               f"chain entry {link['seq']}: {_describe(name, rid, row)} was edited "
                                               f"after it was journaled"))
    for (name, rid), link in latest.items():
        if (name, rid) not in seen and link["op"] not in _GONE_OPS and name in tables:
            result.problems.append(Problem("deleted", name, rid, link["seq"],
                                           f"chain entry {link['seq']}: {_describe(name, rid, None)} was deleted"))


@contextlib.contextmanager
def snapshot(journal):
    """A Session on one consistent snapshot of the journal, so a run being written while it is
    verified does not show half-committed writes as tampering."""
    with journal.engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN")  # pysqlite runs each SELECT in its own snapshot otherwise
        else:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        try:
            with Session(bind=conn) as s:
                yield s
        finally:
            conn.rollback()


def verify_run(journal, run_id: str, *, key: bytes | None = None) -> VerifyResult:
    """``cloud2box journal verify --run ID``: verify one run of ``journal`` (a :class:`Journal`),
    with ``key`` or the chain key the journal was opened with."""
    journal.get_run(run_id)  # a clear error for an unknown run id
    with snapshot(journal) as s:
        return verify(s, run_id, key=key or key_for(journal.engine))


def chained_run_ids(session: Session) -> list[str]:
    """Every run of the journal, oldest first: the runs' rows, then runs that only the chain still names."""
    runs = MigrationRun.__table__
    ordered = list(session.scalars(select(runs.c.id).order_by(runs.c.created_at, runs.c.id)))
    chain = ChainEntry.__table__
    orphans = sorted(set(session.scalars(select(chain.c.run_id).distinct())) - set(ordered))
    return ordered + orphans


def verify_all(journal, *, key: bytes | None = None) -> list[VerifyResult]:
    """Verify every run of the journal in one snapshot (``cloud2box journal verify``)."""
    key = key or key_for(journal.engine)
    with snapshot(journal) as s:
        run_ids = chained_run_ids(s)
        known = set(run_ids)
        return [verify(s, run_id, key=key, known_runs=known) for run_id in run_ids]


def head_hash(journal, run_id: str) -> str:
    """The latest entry hash of the run's chain (GENESIS when nothing is chained yet)."""
    chain = ChainEntry.__table__
    with journal.session() as s:
        last = s.execute(select(chain.c.entry_hash).where(chain.c.run_id == run_id)
                         .order_by(chain.c.seq.desc()).limit(1)).scalar()
    return last or GENESIS

"""The cloud-ID → box-ID map of migrated CRM records: table ``c2b_crm_id_map``.

One row per migrated record, keyed by (migration key, entity, cloud ID) so that the map survives
across runs of the same migration (rehearsal re-runs, the cutover, the phase-3 straggler sweep).
The map is written right after each box write; a crash between the two is repaired by the
importer, which rebuilds missing rows from the box's ``ORIGIN_ID`` before writing again.

A map opened on a :class:`journal.store.Journal` with a ``run_id`` is part of that run's hash
chain (journal/chain.py): each batch is one flush, read back and linked in one statement each. A
map on a bare Engine (benchmarks, tests of the importer alone) is not chained.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from sqlalchemy import Engine, String, UniqueConstraint, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from .chain import ChainedSession
from .models import Base, utcnow


class CrmIdMapEntry(Base):
    __tablename__ = "c2b_crm_id_map"
    __table_args__ = (UniqueConstraint("migration", "entity", "cloud_id", name="uq_c2b_crm_id_map"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    migration: Mapped[str] = mapped_column(String(200), index=True)
    run_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    entity: Mapped[str] = mapped_column(String(32))
    cloud_id: Mapped[str] = mapped_column(String(32))
    box_id: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class IdMap:
    """The map of one migration. ``store`` is a :class:`journal.store.Journal` or an Engine."""

    def __init__(self, store, migration: str, *, run_id: str | None = None) -> None:
        self.engine: Engine = store if isinstance(store, Engine) else store.engine
        self.migration = migration
        self.run_id = run_id
        # writes through a Journal are chained into the run's hash chain; a bare Engine has no runs
        self._writer = Session if isinstance(store, Engine) else ChainedSession
        CrmIdMapEntry.__table__.create(self.engine, checkfirst=True)  # journals made before this table

    def get(self, entity: str) -> dict[str, str]:
        """cloud ID → box ID of every mapped record of ``entity``."""
        with Session(self.engine) as s:
            rows = s.execute(select(CrmIdMapEntry.cloud_id, CrmIdMapEntry.box_id)
                             .where(CrmIdMapEntry.migration == self.migration, CrmIdMapEntry.entity == entity))
            return {c: b for c, b in rows}

    def put(self, entity: str, pairs: Iterable[tuple[str, str]]) -> int:
        """Add (cloud ID, box ID) pairs not mapped yet, in one transaction; returns how many were new.
        A pair whose cloud ID is already mapped is left as it is (the first box twin wins)."""
        pairs = {str(c): str(b) for c, b in pairs}
        if not pairs:
            return 0
        with self._writer(self.engine) as s, s.begin():
            known = set()
            keys = list(pairs)
            for i in range(0, len(keys), 500):
                known.update(s.scalars(select(CrmIdMapEntry.cloud_id).where(
                    CrmIdMapEntry.migration == self.migration, CrmIdMapEntry.entity == entity,
                    CrmIdMapEntry.cloud_id.in_(keys[i:i + 500]))))
            new = [CrmIdMapEntry(migration=self.migration, run_id=self.run_id, entity=entity, cloud_id=c, box_id=b)
                   for c, b in pairs.items() if c not in known]
            s.add_all(new)
        return len(new)

    def repoint(self, entity: str, pairs: Iterable[tuple[str, str]]) -> int:
        """Point cloud IDs at these box IDs, mapped or not: the box lost the twin the map named
        (deleted there) and a new one was written. Returns how many rows changed or were added."""
        pairs = {str(c): str(b) for c, b in pairs}
        if not pairs:
            return 0
        changed = 0
        with self._writer(self.engine) as s, s.begin():
            keys = list(pairs)
            rows: dict[str, CrmIdMapEntry] = {}
            for i in range(0, len(keys), 500):
                rows.update((r.cloud_id, r) for r in s.scalars(select(CrmIdMapEntry).where(
                    CrmIdMapEntry.migration == self.migration, CrmIdMapEntry.entity == entity,
                    CrmIdMapEntry.cloud_id.in_(keys[i:i + 500]))))
            for cloud_id, box_id in pairs.items():
                row = rows.get(cloud_id)
                if row is None:
                    s.add(CrmIdMapEntry(migration=self.migration, run_id=self.run_id, entity=entity,
                                        cloud_id=cloud_id, box_id=box_id))
                elif row.box_id != box_id:
                    row.box_id, row.run_id = box_id, self.run_id
                else:
                    continue
                changed += 1
        return changed

    def count(self, entity: str | None = None) -> int:
        with Session(self.engine) as s:
            q = select(CrmIdMapEntry.id).where(CrmIdMapEntry.migration == self.migration)
            if entity:
                q = q.where(CrmIdMapEntry.entity == entity)
            return len(s.scalars(q).all())

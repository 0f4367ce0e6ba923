"""Evidence of every backup part a run fetched: table ``c2b_backup_parts``.

One row per part per step execution: size, hashes, whether it was verified, where it finally
came from (http or the ssh mirror), retries, duration and bytes fetched. Auditors read this to
see that the backup placed on production is the one the vendor made.
"""

from __future__ import annotations

import datetime as dt
from typing import Iterable

from sqlalchemy import BigInteger, Boolean, Float, Integer, String, Text, select
from sqlalchemy.orm import Mapped, mapped_column

from connectors.secrets import redact

from .models import Base, utcnow


class BackupPart(Base):
    __tablename__ = "c2b_backup_parts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(32), index=True)
    step_id: Mapped[str | None] = mapped_column(String(16), nullable=True)
    part: Mapped[str] = mapped_column(String(300))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64), default="")
    md5: Mapped[str] = mapped_column(String(32), default="")
    verified: Mapped[bool] = mapped_column(Boolean, default=False)
    source: Mapped[str] = mapped_column(String(8), default="http")  # http | ssh
    retries: Mapped[int] = mapped_column(Integer, default=0)
    duration_s: Mapped[float] = mapped_column(Float, default=0.0)
    bytes_fetched: Mapped[int] = mapped_column(BigInteger, default=0)
    checks: Mapped[str] = mapped_column(String(300), default="")
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    recorded_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


def record_parts(journal, run_id: str, step_id: str | None, parts: Iterable) -> int:
    """Write one row per :class:`connectors.http_download.PartResult`; returns how many."""
    BackupPart.__table__.create(journal.engine, checkfirst=True)  # journals made before this table existed
    rows = [BackupPart(run_id=run_id, step_id=step_id, part=p.name, size=p.size, sha256=p.sha256, md5=p.md5,
                       verified=p.status == "verified", source=p.source, retries=p.retries,
                       duration_s=round(p.duration_s, 3), bytes_fetched=p.bytes_fetched,
                       checks=",".join(p.checks), note=redact(p.error) if p.error else None) for p in parts]
    with journal.session() as s:
        s.add_all(rows)
    return len(rows)


def parts_of(journal, run_id: str) -> list[BackupPart]:
    """Every part row of a run, in the order written."""
    BackupPart.__table__.create(journal.engine, checkfirst=True)
    with journal.session() as s:
        return list(s.scalars(select(BackupPart).where(BackupPart.run_id == run_id).order_by(BackupPart.id)))

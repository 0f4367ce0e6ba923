"""Delta export: every CRM record the cloud created or changed after the backup's cutoff.

Per entity, two fast lists (no count queries): ``>DATE_MODIFY`` the cutoff (changed or created
after it) and ``>ID`` the backup's highest ID (created after it, whatever its clock says). Their
union is the delta; each record is marked ``created`` (after the backup) or ``modified`` (exists
in the backup). IDs in the backup that the cloud no longer has are *listed* as deleted in the
cloud, for the customer to decide: nothing is deleted automatically.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from .lists import iter_rows
from .model import ENTITIES, MULTI, ORIGINATOR, SELECT, parse_date
from .rest import Bitrix24Client

log = logging.getLogger("cloud2box.bitrix24")


@dataclass
class EntityDelta:
    entity: str
    backup_max_id: int
    rows: dict[str, dict] = field(default_factory=dict)  # cloud ID → row
    kind: dict[str, str] = field(default_factory=dict)  # cloud ID → created | modified
    deleted_in_cloud: list[str] = field(default_factory=list)
    echoes: list[str] = field(default_factory=list)  # cloud IDs carrying our own marker: never exported

    @property
    def created(self) -> int:
        return sum(1 for k in self.kind.values() if k == "created")

    @property
    def modified(self) -> int:
        return sum(1 for k in self.kind.values() if k == "modified")


@dataclass
class DeltaExport:
    cutoff: dt.datetime
    entities: dict[str, EntityDelta]
    seconds: float = 0.0
    requests: int = 0

    @property
    def records(self) -> int:
        return sum(len(e.rows) for e in self.entities.values())

    def summary(self) -> dict:
        return {e: {"created": d.created, "modified": d.modified, "deleted_in_cloud": len(d.deleted_in_cloud),
                    "echoes_skipped": len(d.echoes), "backup_max_id": d.backup_max_id}
                for e, d in self.entities.items()}


def _iso(d: dt.datetime) -> str:
    return d.isoformat(timespec="seconds")


def backup_max_id(box: Bitrix24Client, entity: str, cutoff: dt.datetime) -> int:
    """The highest ID the backup held: the box's newest record created at or before the cutoff
    (the box is the restored backup; records made on the box later have higher IDs)."""
    body = box.call(f"crm.{entity}.list", {"order": {"ID": "DESC"}, "filter": {"<=DATE_CREATE": _iso(cutoff)},
                                           "select": ["ID"], "start": -1})
    rows = body.get("result") or []
    return int(rows[0]["ID"]) if rows else 0


def export_delta(cloud: Bitrix24Client, box: Bitrix24Client, cutoff: dt.datetime, *,
                 entities: tuple[str, ...] | list[str] = ENTITIES, detect_deleted: bool = True,
                 max_ids: dict[str, int] | None = None, after_ids: dict[str, int] | None = None,
                 progress=None) -> DeltaExport:
    """List the delta of every entity (see the module doc). ``max_ids`` overrides the backup's
    highest IDs (else read from the box). ``after_ids`` (sweeps): list creations only above these
    cloud IDs (seen by an earlier pass), changes since ``cutoff`` as always.
    ``progress(done_records, message)`` is told per page."""
    if cutoff.tzinfo is None:
        raise ValueError("cutoff must be timezone-aware")
    t0 = time.monotonic()
    req0 = cloud.requests + box.requests
    out: dict[str, EntityDelta] = {}
    done = 0
    for entity in entities:
        max_id = (max_ids or {}).get(entity)
        if max_id is None:
            max_id = backup_max_id(box, entity, cutoff)
        d = EntityDelta(entity, max_id)
        method = f"crm.{entity}.list"
        floor = max(max_id, (after_ids or {}).get(entity, 0))
        echo_ids: set[str] = set()
        for rows in (iter_rows(cloud, method, filter={">DATE_MODIFY": _iso(cutoff)}, select=SELECT[entity]),
                     iter_rows(cloud, method, select=SELECT[entity], after_id=floor)):
            for row in rows:
                rid = str(row["ID"])
                if str(row.get("ORIGINATOR_ID") or "") == ORIGINATOR:
                    if rid not in echo_ids:
                        echo_ids.add(rid)
                        d.echoes.append(rid)
                    continue
                d.rows[rid] = row
        for rid, row in d.rows.items():
            created = parse_date(row.get("DATE_CREATE"))
            d.kind[rid] = "created" if int(rid) > max_id or (created and created > cutoff) else "modified"
        if detect_deleted:
            cloud_ids = {str(r["ID"]) for r in iter_rows(cloud, method, filter={"<=ID": max_id}, select=["ID"])}
            box_ids = {str(r["ID"]) for r in iter_rows(box, method, filter={"<=ID": max_id}, select=["ID"])}
            d.deleted_in_cloud = sorted(box_ids - cloud_ids, key=int)
        out[entity] = d
        done += len(d.rows)
        if progress:
            progress(done, f"{entity}: {d.created} created, {d.modified} modified after the cutoff")
        log.info("delta %s: %d created, %d modified, %d deleted in the cloud, %d echoes of our writes skipped",
                 entity, d.created, d.modified, len(d.deleted_in_cloud), len(d.echoes))
    return DeltaExport(cutoff, out, time.monotonic() - t0, cloud.requests + box.requests - req0)


def write_csvs(delta: DeltaExport, out_dir: Path) -> list[Path]:
    """One UTF-8 CSV per entity (the delta, for the customer's review) and one of the records
    deleted in the cloud, each 0600 with its cells neutralised (connectors.outputs). Multi-fields
    are joined with '; '. Returns the files written."""
    import pandas as pd

    from connectors.outputs import write_csv
    from connectors.secrets import redact

    files = []
    for entity, d in delta.entities.items():
        records = []
        for rid, row in d.rows.items():
            flat = {"CHANGE": d.kind[rid]}
            for k, v in row.items():
                if k in MULTI[entity] or isinstance(v, list):
                    v = "; ".join(str(x.get("VALUE", "")) if isinstance(x, dict) else str(x) for x in v or [])
                flat[k] = "" if v is None else redact(str(v))
            records.append(flat)
        files.append(write_csv(pd.DataFrame.from_records(records), out_dir / f"crm-delta-{entity}.csv"))
    deleted = [{"ENTITY": e, "ID": i, "ACTION": "deleted in the cloud after the backup: customer decides"}
               for e, d in delta.entities.items() for i in d.deleted_in_cloud]
    files.append(write_csv(pd.DataFrame.from_records(deleted, columns=["ENTITY", "ID", "ACTION"]),
                           out_dir / "crm-deleted-in-cloud.csv"))
    return files

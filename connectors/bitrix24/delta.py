"""Delta export: every CRM record the cloud created or changed after the backup's cutoff.

Per entity, two fast lists (no count queries): ``>DATE_MODIFY`` the cutoff (changed or created
after it) and ``>ID`` the backup's highest ID (created after it, whatever its clock says). Their
union is the delta; each record is marked ``created`` (after the backup) or ``modified`` (exists
in the backup). IDs in the backup that the cloud no longer has are *listed* as deleted in the
cloud, for the customer to decide: nothing is deleted automatically.

The backup's highest IDs (and record counts) come from :func:`backup_marks`, read from the box
while it is still the restored backup, i.e. before anything is imported, and kept by the caller (the
journal): read again later, a record moved with its cloud creation time (one created in the cloud
after the backup but dated before the cutoff) would pass for a backup record.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from .lists import iter_rows, php_query
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
    listed_up_to: int = 0  # the highest cloud ID the listing saw: higher ones were created after it

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
                    "echoes_skipped": len(d.echoes), "backup_max_id": d.backup_max_id,
                    "listed_up_to": d.listed_up_to}
                for e, d in self.entities.items()}


def _iso(d: dt.datetime) -> str:
    return d.isoformat(timespec="seconds")


def backup_marks(box: Bitrix24Client, cutoff: dt.datetime, entities=ENTITIES, *,
                 skip_ours: bool = False) -> dict[str, dict[str, int]]:
    """The backup's high-water marks per entity, read from the box: ``max_id``, the highest ID of a
    record created at or before the cutoff (the box continues the backup's ID sequences, so what
    it made later has higher IDs), and ``count``, the box's records with IDs up to it. Two requests.

    Valid only while nothing has been imported (see the module doc): take them once and keep them.
    ``skip_ours``: the box was written to before the marks were kept (an older journal): records
    carrying our ORIGINATOR_ID are not the backup's.
    """
    cut = _iso(cutoff)
    select = ["ID", "ORIGINATOR_ID"]
    highest = box.batch_each({f"m{i}": f"crm.{e}.list?" + php_query(
        {"order": {"ID": "DESC"}, "filter": {"<=DATE_CREATE": cut}, "select": select, "start": -1})
        for i, e in enumerate(entities)})
    max_ids: dict[str, int] = {}
    for i, entity in enumerate(entities):
        rows = highest[f"m{i}"]["result"] or []
        for _ in range(100_000):  # pages of our own records, newest first (skip_ours only): bounded
            keep = [r for r in rows if not skip_ours or str(r.get("ORIGINATOR_ID") or "") != ORIGINATOR]
            if keep or len(rows) < 50:
                max_ids[entity] = int(keep[0]["ID"]) if keep else 0
                break
            older = {"<=DATE_CREATE": cut, "<ID": rows[-1]["ID"]}
            rows = box.call(f"crm.{entity}.list", {"order": {"ID": "DESC"}, "select": select, "start": -1,
                                                   "filter": older}).get("result") or []
    counted = box.batch_each({f"c{i}": f"crm.{e}.list?" + php_query(
        {"filter": {"<=ID": max_ids[e]}, "select": ["ID"], "start": 0})
        for i, e in enumerate(entities) if max_ids[e] > 0})
    out = {}
    for i, entity in enumerate(entities):
        answer = counted.get(f"c{i}") or {}
        out[entity] = {"max_id": max_ids[entity], "count": int(answer.get("total") or len(answer.get("result") or []))}
    return out


def export_delta(cloud: Bitrix24Client, box: Bitrix24Client, cutoff: dt.datetime, *,
                 entities: tuple[str, ...] | list[str] = ENTITIES, detect_deleted: bool = True,
                 max_ids: dict[str, int] | None = None, after_ids: dict[str, int] | None = None,
                 progress=None) -> DeltaExport:
    """List the delta of every entity (see the module doc). ``max_ids``: the backup's highest IDs
    as :func:`backup_marks` took them before the import (read from the box when missing, which is
    right only before anything was imported). ``after_ids`` (sweeps): list creations only above these
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
            max_id = backup_marks(box, cutoff, (entity,))[entity]["max_id"]
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
        d.listed_up_to = max([floor, *map(int, d.rows), *map(int, d.echoes)])
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

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
from typing import Any

from . import userfields
from .lists import ITEM_ENTITY_TYPE, iter_rows, php_query
from .model import BINDINGS, ENTITIES, MULTI, ORIGINATOR, SELECT, chunks, parse_date
from .rest import Bitrix24Client

log = logging.getLogger("cloud2box.bitrix24")

TIMELINE_MARKS = ("activity", "product")  # timeline.timeline_marks' kinds


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
    # The cloud's custom field definitions per entity (userfields.read_definitions): the import makes
    # the missing ones on the box and maps list values by their text.
    uf_definitions: dict[str, dict[str, dict]] = field(default_factory=dict)
    timeline: Any = None  # timeline.TimelineDelta: activities, comments, products, deal product rows
    dynamic: Any = None  # dynamic.DynamicDelta: smart-process items

    @property
    def entity_records(self) -> int:
        """Records of the four entities (leads, deals, contacts, companies)."""
        return sum(len(e.rows) for e in self.entities.values())

    @property
    def records(self) -> int:
        """Everything the delta moves: the four entities' records, timeline entries, smart-process items."""
        return self.entity_records + (self.timeline.records if self.timeline is not None else 0) + \
            (self.dynamic.records if self.dynamic is not None else 0)

    def summary(self) -> dict:
        out: dict = {e: {"created": d.created, "modified": d.modified, "deleted_in_cloud": len(d.deleted_in_cloud),
                         "echoes_skipped": len(d.echoes), "backup_max_id": d.backup_max_id,
                         "listed_up_to": d.listed_up_to}
                     for e, d in self.entities.items()}
        if self.timeline is not None:
            out.update(self.timeline.summary())
        if self.dynamic is not None:
            out.update(self.dynamic.summary())
        return out


def _iso(d: dt.datetime) -> str:
    return d.isoformat(timespec="seconds")


def backup_marks(box: Bitrix24Client, cutoff: dt.datetime, entities=ENTITIES, *,
                 skip_ours: bool = False) -> dict[str, dict[str, int]]:
    """The backup's high-water marks per entity, read from the box: ``max_id``, the highest ID of a
    record created at or before the cutoff (the box continues the backup's ID sequences, so what
    it made later has higher IDs), and ``count``, the box's records with IDs up to it. Two requests.

    Valid only while nothing has been imported (see the module doc): take them once and keep them.
    ``skip_ours``: the box was written to before the marks were kept (an older journal): records we
    created (our ORIGINATOR_ID, an ORIGIN_ID other than their own ID) are not the backup's; a backup
    record we updated carries our marker too, but its own cloud ID.
    """
    cut = _iso(cutoff)
    select = ["ID", "ORIGINATOR_ID", "ORIGIN_ID"]
    highest = box.batch_each({f"m{i}": f"crm.{e}.list?" + php_query(
        {"order": {"ID": "DESC"}, "filter": {"<=DATE_CREATE": cut}, "select": select, "start": -1})
        for i, e in enumerate(entities)})
    max_ids: dict[str, int] = {}
    for i, entity in enumerate(entities):
        rows = highest[f"m{i}"]["result"] or []
        for _ in range(100_000):  # pages of our own records, newest first (skip_ours only): bounded
            keep = [r for r in rows if not skip_ours or not _created_by_us(r)]
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


def _created_by_us(row: dict) -> bool:
    return str(row.get("ORIGINATOR_ID") or "") == ORIGINATOR and str(row.get("ORIGIN_ID") or "") != str(row["ID"])


def export_delta(cloud: Bitrix24Client, box: Bitrix24Client, cutoff: dt.datetime, *,
                 entities: tuple[str, ...] | list[str] = ENTITIES, detect_deleted: bool = True,
                 max_ids: dict[str, int] | None = None, after_ids: dict[str, int] | None = None,
                 include_ids: dict[str, set[str]] | None = None, progress=None, extras: bool = True) -> DeltaExport:
    """List the delta of every entity (see the module doc). ``max_ids``: the backup's highest IDs
    as :func:`backup_marks` took them before the import (read from the box when missing, which is
    right only before anything was imported). ``after_ids`` (sweeps): list creations only above these
    cloud IDs (seen by an earlier pass), changes since ``cutoff`` as always. ``include_ids``: per entity,
    cloud IDs exported whatever their last change's time (released from quarantine, or held back by
    the pre-sync's loop guard), unless they are our own echoes.
    ``extras``: also the timeline of those records and the smart-process items (:func:`_export_extras`;
    their marks are ``max_ids``' ``activity``, ``product`` and ``dynamic:<entityTypeId>`` entries).
    ``progress(done_records, message)`` is told per entity."""
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
        read_bindings(cloud, entity, list(d.rows.values()))
        wanted = sorted({str(i) for i in (include_ids or {}).get(entity, ())} - set(d.rows) - echo_ids, key=int)
        for rid, row in rows_by_id(cloud, entity, wanted).items():
            if str(row.get("ORIGINATOR_ID") or "") != ORIGINATOR:
                d.rows[rid] = row
        for rid, row in d.rows.items():
            created = parse_date(row.get("DATE_CREATE"))
            d.kind[rid] = "created" if int(rid) > max_id or (created and created > cutoff) else "modified"
        if detect_deleted:
            d.deleted_in_cloud = _deleted_of_backup(cloud, box, entity, max_id)
        out[entity] = d
        done += len(d.rows)
        if progress:
            progress(done, f"{entity}: {d.created} created, {d.modified} modified after the cutoff")
        log.info("delta %s: %d created, %d modified, %d deleted in the cloud, %d echoes of our writes skipped",
                 entity, d.created, d.modified, len(d.deleted_in_cloud), len(d.echoes))
    definitions = {e: userfields.read_definitions(cloud, e) for e in entities}
    exported = DeltaExport(cutoff, out, 0.0, 0, uf_definitions=definitions)
    if extras:
        _export_extras(cloud, box, exported, max_ids or {}, progress, changed_only=after_ids is not None)
    exported.seconds, exported.requests = time.monotonic() - t0, cloud.requests + box.requests - req0
    return exported


def _export_extras(cloud: Bitrix24Client, box: Bitrix24Client, exported: DeltaExport, max_ids: dict[str, int],
                   progress, *, changed_only: bool = False) -> None:
    """The timeline (activities, comments, products, deal rows) of the records in the delta and the
    smart-process items, with their backup marks from ``max_ids`` (read from the box when missing,
    right only before anything is imported). ``changed_only`` (a sweep's pass, ``after_ids`` given):
    what changed since its ``cutoff`` only, not again everything created since the backup."""
    from . import dynamic, timeline  # they build on the importer, which builds on this module

    marks = None
    if all(k in max_ids for k in TIMELINE_MARKS):
        marks = {k: {"max_id": int(max_ids[k]), "count": 0} for k in TIMELINE_MARKS}
    exported.timeline = timeline.export_timeline(
        cloud, box, exported.cutoff, marks=marks, owners={e: set(d.rows) for e, d in exported.entities.items()},
        entity_max_ids={e: d.backup_max_id for e, d in exported.entities.items()}, changed_only=changed_only)
    dynamic_ids = {k: int(v) for k, v in max_ids.items() if k.startswith("dynamic:")}
    if not dynamic_ids:
        dynamic_ids = {k: m["max_id"] for k, m in dynamic.dynamic_marks(box, exported.cutoff).items()}
    exported.dynamic = dynamic.export_dynamic(cloud, exported.cutoff, dynamic_ids, changed_only=changed_only)
    if progress:
        progress(exported.records, f"timeline: {exported.timeline.records} entries; smart processes: "
                                   f"{exported.dynamic.records} items")


def _deleted_of_backup(cloud: Bitrix24Client, box: Bitrix24Client, entity: str, max_id: int) -> list[str]:
    """Backup records (IDs up to the backup's highest) the box has and the cloud no longer has:
    both ID sets are read whole (IDs only), the one part of the delta that grows with the portal."""
    method = f"crm.{entity}.list"
    cloud_ids = {str(r["ID"]) for r in iter_rows(cloud, method, filter={"<=ID": max_id}, select=["ID"])}
    box_ids = {str(r["ID"]) for r in iter_rows(box, method, filter={"<=ID": max_id}, select=["ID"])}
    return sorted(box_ids - cloud_ids, key=int)


def deleted_in_cloud(cloud: Bitrix24Client, box: Bitrix24Client, idmap, max_ids: dict[str, int], *,
                     entities: tuple[str, ...] | list[str] = ENTITIES) -> dict[str, list[str]]:
    """Cloud IDs of records deleted in the cloud since the backup, per entity: backup records (see
    :func:`_deleted_of_backup`) and records created after the backup that were moved already (in the
    id map, gone from the cloud). Listed for the customer; nothing is deleted on the box."""
    out: dict[str, list[str]] = {}
    for entity in entities:
        max_id = int(max_ids.get(entity, 0))
        gone = _deleted_of_backup(cloud, box, entity, max_id) if max_id else []
        moved = {c for c in idmap.get(entity) if int(c) > max_id}
        if moved:
            alive = {str(r["ID"]) for r in iter_rows(cloud, f"crm.{entity}.list", select=["ID"], after_id=max_id)}
            gone += sorted(moved - alive, key=int)
        if gone:
            out[entity] = gone
    return out


def changed_since(cloud: Bitrix24Client, since: dt.datetime, *,
                  entities: tuple[str, ...] | list[str] = ENTITIES) -> dict[str, int]:
    """How many records of each entity the cloud created or changed after ``since`` (one batch: the
    portal counts only what matches; creating a record sets its DATE_MODIFY too)."""
    answers = cloud.batch_each({f"n{i}": f"crm.{e}.list?" + php_query(
        {"filter": {">DATE_MODIFY": _iso(since)}, "select": ["ID"], "start": 0}) for i, e in enumerate(entities)})
    return {e: int((answers.get(f"n{i}") or {}).get("total") or 0) for i, e in enumerate(entities)}


def rows_by_id(client: Bitrix24Client, entity: str, ids: list[str]) -> dict[str, dict]:
    """Records by ID with every field the delta compares and their bindings (50 IDs per list command,
    50 commands per request). Complete or raising: a command refused by a limit is sent again
    (``batch_each``), since a record read as missing would be written twice."""
    out: dict[str, dict] = {}
    for group in chunks(ids, 50 * 50):
        cmd = {f"g{i}": f"crm.{entity}.list?" + php_query({"filter": {"@ID": part}, "select": SELECT[entity],
                                                           "start": -1})
               for i, part in enumerate(chunks(group, 50))}
        for answer in client.batch_each(cmd).values():
            for row in answer.get("result") or []:
                out[str(row["ID"])] = row
    read_bindings(client, entity, list(out.values()))
    return out


def read_bindings(client: Bitrix24Client, entity: str, rows: list[dict]) -> None:
    """Fill each row's multiple bindings (``CONTACT_IDS`` of leads and deals, ``COMPANY_IDS`` of
    contacts: model.BINDINGS) from crm.item.list, which alone returns them: 50 IDs per command, 50
    commands per request. A row the answer lacks (deleted meanwhile) gets an empty list."""
    for binding, (_target, item_name) in BINDINGS[entity].items():
        by_id = {str(r["ID"]): r for r in rows}
        for r in rows:
            r[binding] = []
        for group in chunks(list(by_id), 50 * 50):
            cmd = {f"b{i}": "crm.item.list?" + php_query({"entityTypeId": ITEM_ENTITY_TYPE[entity],
                                                          "filter": {"@id": ids}, "select": ["id", item_name],
                                                          "start": -1})
                   for i, ids in enumerate(chunks(group, 50))}
            for answer in client.batch_each(cmd).values():
                result = answer.get("result") or {}
                for item in (result.get("items") if isinstance(result, dict) else None) or []:
                    row = by_id.get(str(item.get("id")))
                    if row is not None:
                        row[binding] = [str(v) for v in item.get(item_name) or []]


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

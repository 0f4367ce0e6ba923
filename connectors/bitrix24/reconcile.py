"""Reconciliation: the proof that no lead was lost.

Per entity: the cloud's delta count against the box's count of migrated records (ORIGINATOR_ID
= cloud2box), and for every delta record its box twin (through the id map, confirmed by ORIGIN_ID)
with an equal hash of the compared fields (in box terms: relations and users remapped). Every
missing twin, duplicate and field mismatch is listed.

It does not trust the export either: with the cloud's client it lists, on its own, every cloud
record created since the backup (IDs above the backup's highest, up to what the export saw) and
fails on any without a box twin, whether the export listed it or not (``not_moved``). A record the
box could only take with a later creation time (older than the box's newest record: see the
importer) is listed under ``creation_time_not_kept``, not as a mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .delta import DeltaExport, rows_by_id
from .lists import iter_rows
from .model import ENTITIES, ORIGINATOR, UserMap, comparable, diff, field_hash, parse_date
from .userfields import UserFieldMaps, sync_definitions
from .rest import Bitrix24Client


@dataclass
class EntityReconciliation:
    entity: str
    cloud_delta: int = 0
    box_migrated: int = 0
    matched: int = 0
    missing: list[str] = field(default_factory=list)       # cloud IDs without a box twin
    duplicates: list[str] = field(default_factory=list)    # cloud IDs with more than one box twin
    mismatches: list[dict] = field(default_factory=list)   # {cloud_id, box_id, fields}
    not_moved: list[str] = field(default_factory=list)     # created since the backup, not listed, no box twin
    creation_time_not_kept: list[str] = field(default_factory=list)  # matched, dated by the box (see above)
    created_after_export: int = 0                          # cloud records newer than the export: the next run

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicates or self.mismatches or self.not_moved) \
            and self.matched == self.cloud_delta


@dataclass
class Reconciliation:
    entities: dict[str, EntityReconciliation]
    timeline: Any = None  # timeline.TimelineReconciliation
    dynamic: Any = None  # dynamic.DynamicReconciliation

    def _parts(self) -> list:
        return [p for p in (self.timeline, self.dynamic) if p is not None]

    @property
    def ok(self) -> bool:
        return all(e.ok for e in self.entities.values()) and all(p.ok for p in self._parts())

    @property
    def mismatches(self) -> int:
        return sum(len(e.missing) + len(e.duplicates) + len(e.mismatches) + len(e.not_moved)
                   for e in self.entities.values()) + sum(p.mismatches for p in self._parts())

    @property
    def without_twin(self) -> int:
        """Records of the cloud (in the delta or created since the backup) with no box twin at all."""
        return sum(len(e.missing) + len(e.not_moved)
                   for e in [*self.entities.values(), *(r for p in self._parts() for r in p.entities.values())])

    def evidence(self) -> dict:
        out: dict = {e: {"cloud_delta": r.cloud_delta, "box_migrated": r.box_migrated, "matched": r.matched,
                         "missing": r.missing[:50], "duplicates": r.duplicates[:50], "mismatches": r.mismatches[:50],
                         "not_moved": r.not_moved[:50], "creation_time_not_kept": r.creation_time_not_kept[:50],
                         "created_after_export": r.created_after_export, "ok": r.ok}
                     for e, r in self.entities.items()}
        if self.timeline is not None:
            out["timeline"] = self.timeline.evidence()
        if self.dynamic is not None:
            out["smart_processes"] = self.dynamic.evidence()
        return out

    def per_entity(self) -> dict[str, dict[str, int]]:
        """For the report: per entity (timeline kinds and smart processes included) how many records
        the delta had and how many the box holds as the cloud does."""
        rows = {**self.entities, **{e: r for p in self._parts() for e, r in p.entities.items()}}
        return {e: {"delta": r.cloud_delta, "matched": r.matched, "problems": len(r.missing) + len(r.duplicates)
                    + len(r.mismatches) + len(getattr(r, "not_moved", []))} for e, r in rows.items()}


def reconcile(box: Bitrix24Client, delta: DeltaExport, idmap, *, user_map: dict[str, str],
              fallback_user_id: int = 1, cloud: Bitrix24Client | None = None) -> Reconciliation:
    """Compare the delta with the box (see the module doc); with ``cloud``, also every record the
    cloud created since the backup, listed anew."""
    out: dict[str, EntityReconciliation] = {}
    maps = {e: idmap.get(e) for e in ENTITIES}
    relation_map = {}
    for e in ENTITIES:
        m = dict(maps[e])
        relation_map[e] = m
    users = UserMap(user_map, str(fallback_user_id))
    uf = sync_definitions(delta.uf_definitions, box, create=False) if delta.entity_records else UserFieldMaps()
    for entity in [e for e in ENTITIES if e in delta.entities]:
        d = delta.entities[entity]
        r = out[entity] = EntityReconciliation(entity, cloud_delta=len(d.rows))
        by_origin: dict[str, list[dict]] = {}
        # every record we made, IDs only (twins, duplicates, presence); the fields of the delta's twins only:
        # the cost follows the delta, not every record ever moved (the pre-sync's freeze moves minutes of changes)
        ours = list(iter_rows(box, f"crm.{entity}.list", filter={"ORIGINATOR_ID": ORIGINATOR},
                              select=["ID", "ORIGIN_ID"]))
        full = rows_by_id(box, entity, [str(r["ID"]) for r in ours if str(r.get("ORIGIN_ID")) in d.rows])
        for row in ours:
            by_origin.setdefault(str(row.get("ORIGIN_ID")), []).append(full.get(str(row["ID"]), row))
        r.box_migrated = sum(len(v) for k, v in by_origin.items() if k in d.rows)
        for cid, row in d.rows.items():
            twins = by_origin.get(cid, [])
            if not twins:
                r.missing.append(cid)
                continue
            if len(twins) > 1:
                r.duplicates.append(cid)
            twin = next((t for t in twins if str(t["ID"]) == maps[entity].get(cid)), None)
            if twin is None:
                r.missing.append(cid)
                continue
            want = comparable(entity, row, relation_map=relation_map, user_map=users, uf=uf)
            have = comparable(entity, twin, uf=uf)
            if field_hash(want) != field_hash(have) and _box_dated(want, have):
                r.creation_time_not_kept.append(cid)
                r.matched += 1
            elif field_hash(want) != field_hash(have):
                r.mismatches.append({"cloud_id": cid, "box_id": str(twin["ID"]), "fields": diff(want, have)})
            else:
                r.matched += 1
        if cloud is not None:
            _created_since_backup(cloud, d, by_origin, r)
    result = Reconciliation(out)
    if delta.timeline is not None:
        from .timeline import reconcile_timeline  # it builds on the importer

        result.timeline = reconcile_timeline(box, delta.timeline, idmap, user_map=user_map,
                                             fallback_user_id=fallback_user_id, cloud=cloud)
    if delta.dynamic is not None:
        from .dynamic import reconcile_dynamic

        result.dynamic = reconcile_dynamic(box, delta.dynamic, idmap, user_map=user_map,
                                           fallback_user_id=fallback_user_id)
    return result


def _box_dated(want: dict, have: dict) -> bool:
    """Only the creation time differs, and the box's is later than the cloud's: the box refused that
    time (imports go in ascending creation time and it held a newer record), as the importer says; it
    never writes a later time otherwise."""
    if diff(want, have) != ["DATE_CREATE"]:
        return False
    cloud_t, box_t = parse_date(want["DATE_CREATE"]), parse_date(have["DATE_CREATE"])
    return cloud_t is not None and box_t is not None and box_t > cloud_t


def _created_since_backup(cloud: Bitrix24Client, d, by_origin: dict[str, list[dict]], r: EntityReconciliation) -> None:
    """Every cloud record above the backup's highest ID (but our own echoes) has a box twin."""
    for row in iter_rows(cloud, f"crm.{d.entity}.list", select=["ID", "ORIGINATOR_ID"], after_id=d.backup_max_id):
        rid = str(row["ID"])
        if int(rid) > d.listed_up_to:
            r.created_after_export += 1
            continue
        if str(row.get("ORIGINATOR_ID") or "") == ORIGINATOR or rid in d.rows:
            continue  # an echo of our write; or checked above with the delta
        if rid not in by_origin:
            r.not_moved.append(rid)

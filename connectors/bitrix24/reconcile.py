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

The presence proof is incremental (``proven``): a reconciliation that passed leaves, per entity, the
marks up to which it proved presence — every cloud record created since the backup up to cloud ID
``cloud`` has a box twin, and no record of ours up to box ID ``box`` is a second twin. The next
reconciliation (the pre-sync's next pass, or step 2.11 in the freeze) lists only cloud IDs above
``cloud`` and our box records above ``box``, and reads the delta's older twins by ID through the
map: its cost follows what changed since the last proof, not the gap or the portal. A reconciliation
with problems leaves the marks where they were, so the next one proves that range again.
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
    held_back: list[str] = field(default_factory=list)     # excused (quarantined by the loop guard): not proven
    proven: dict[str, int] | None = None                   # {"cloud", "box"}: see the module doc

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

    def proven(self) -> dict[str, dict[str, int]]:
        """The presence marks this reconciliation leaves (see the module doc), per entity and timeline
        kind; what it did not prove keeps the marks it was given."""
        rows = [*self.entities.values(), *(r for p in self._parts() for r in p.entities.values())]
        return {r.entity: dict(r.proven) for r in rows if getattr(r, "proven", None) is not None}

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
              fallback_user_id: int = 1, cloud: Bitrix24Client | None = None,
              proven: dict[str, dict[str, int]] | None = None,
              excused: dict[str, set[str]] | None = None) -> Reconciliation:
    """Compare the delta with the box (see the module doc); with ``cloud``, also every record the
    cloud created since the backup, listed anew — above the ``proven`` marks of an earlier
    reconciliation when given (else from the backup). ``excused``: per entity, cloud IDs the loop
    guard holds back (quarantined): not reported missing, and the proof stops below them."""
    proven, excused = proven or {}, excused or {}
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
        marks = proven.get(entity) or {}
        box_mark = int(marks.get("box", 0))
        # the records we made above the box mark, IDs only (twins, duplicates, presence; below it an earlier
        # proof found each cloud record's one twin), and the delta's twins below it by ID through the map:
        # the cost follows the delta and the records made since that proof, not every record ever moved
        ours = list(iter_rows(box, f"crm.{entity}.list", filter={"ORIGINATOR_ID": ORIGINATOR},
                              select=["ID", "ORIGIN_ID"], after_id=box_mark))
        older = [maps[entity][c] for c in d.rows if c in maps[entity] and int(maps[entity][c]) <= box_mark]
        full = rows_by_id(box, entity, sorted({*older, *(str(x["ID"]) for x in ours
                                                        if str(x.get("ORIGIN_ID")) in d.rows)}, key=int))
        by_origin = _by_origin(ours, full)
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
            cloud_mark = max(d.backup_max_id, int(marks.get("cloud", 0)))
            _created_since_backup(cloud, box, d, by_origin, r, after_id=cloud_mark, idmap=maps[entity],
                                  excused=excused.get(entity, set()))
            r.proven = advance_marks(marks, r.ok, d.listed_up_to, [int(x["ID"]) for x in ours], held=r.held_back)
    result = Reconciliation(out)
    if delta.timeline is not None:
        from .timeline import reconcile_timeline  # it builds on the importer

        result.timeline = reconcile_timeline(box, delta.timeline, idmap, user_map=user_map,
                                             fallback_user_id=fallback_user_id, cloud=cloud,
                                             proven=proven.get("activity"))
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


def _by_origin(ours: list[dict], full: dict[str, dict]) -> dict[str, list[dict]]:
    """cloud ID (ORIGIN_ID) → its box twins, each once, full rows where read."""
    rows = {str(x["ID"]): x for x in ours}
    rows.update({i: x for i, x in full.items() if str(x.get("ORIGINATOR_ID") or "") == ORIGINATOR})
    out: dict[str, list[dict]] = {}
    for rid in sorted(rows, key=int):
        out.setdefault(str(rows[rid].get("ORIGIN_ID")), []).append(full.get(rid, rows[rid]))
    return out


def _created_since_backup(cloud: Bitrix24Client, box: Bitrix24Client, d, by_origin: dict[str, list[dict]],
                          r: EntityReconciliation, *, after_id: int, idmap: dict[str, str], excused: set[str]) -> None:
    """Every cloud record above ``after_id`` (the backup's highest ID, or an earlier proof's mark) but
    our own echoes has a box twin. A twin made before the box mark was not listed: it is read by ID
    through the map (a crash between a box write and the map write leaves it not_moved, proven later)."""
    unseen = []
    for row in iter_rows(cloud, f"crm.{d.entity}.list", select=["ID", "ORIGINATOR_ID"], after_id=after_id):
        rid = str(row["ID"])
        if int(rid) > d.listed_up_to:
            r.created_after_export += 1
            continue
        if str(row.get("ORIGINATOR_ID") or "") == ORIGINATOR or rid in d.rows:
            continue  # an echo of our write; or checked above with the delta
        if rid in excused:
            r.held_back.append(rid)
        elif rid not in by_origin:
            unseen.append(rid)
    found = rows_by_id(box, d.entity, sorted({idmap[c] for c in unseen if c in idmap}, key=int)) if unseen else {}
    twins = {str(x.get("ORIGIN_ID")) for x in found.values() if str(x.get("ORIGINATOR_ID") or "") == ORIGINATOR}
    r.not_moved += [c for c in unseen if c not in twins]


def advance_marks(marks: dict, ok: bool, cloud_to: int, box_ids, *, held=()) -> dict[str, int]:
    """The marks after a proof that listed cloud IDs up to ``cloud_to`` and our box records ``box_ids``
    above ``marks``: advanced when it found nothing wrong (the cloud mark below the first record held
    back), else as given, so the next proof covers the range again. A proof that listed nothing new
    (a pass that moved only changes: ``cloud_to`` is the backup's mark) keeps the marks it started
    from — they never go back, or the freeze would prove the whole gap again."""
    cloud, box = int(marks.get("cloud", 0)), int(marks.get("box", 0))
    if not ok:
        return {"cloud": cloud, "box": box}
    return {"cloud": min([max(cloud, cloud_to), *(int(h) - 1 for h in held)]), "box": max([box, *box_ids])}

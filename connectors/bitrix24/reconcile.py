"""Reconciliation: the proof that no lead was lost.

Per entity: the cloud's delta count against the box's count of migrated records (ORIGINATOR_ID
= cloud2box), and for every delta record its box twin (through the id map, confirmed by ORIGIN_ID)
with an equal hash of the compared fields (in box terms: relations and users remapped). Every
missing twin, duplicate and field mismatch is listed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .delta import DeltaExport
from .lists import iter_rows
from .model import ENTITIES, ORIGINATOR, SELECT, comparable, diff, field_hash
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

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicates or self.mismatches) and self.matched == self.cloud_delta


@dataclass
class Reconciliation:
    entities: dict[str, EntityReconciliation]

    @property
    def ok(self) -> bool:
        return all(e.ok for e in self.entities.values())

    @property
    def mismatches(self) -> int:
        return sum(len(e.missing) + len(e.duplicates) + len(e.mismatches) for e in self.entities.values())

    def evidence(self) -> dict:
        return {e: {"cloud_delta": r.cloud_delta, "box_migrated": r.box_migrated, "matched": r.matched,
                    "missing": r.missing[:50], "duplicates": r.duplicates[:50], "mismatches": r.mismatches[:50],
                    "ok": r.ok} for e, r in self.entities.items()}


def reconcile(box: Bitrix24Client, delta: DeltaExport, idmap, *, user_map: dict[str, str],
              fallback_user_id: int = 1) -> Reconciliation:
    """Compare the delta with the box (see the module doc)."""
    out: dict[str, EntityReconciliation] = {}
    maps = {e: idmap.get(e) for e in ENTITIES}
    relation_map = {}
    for e in ENTITIES:
        m = dict(maps[e])
        relation_map[e] = m
    users = {**user_map}
    for entity in [e for e in ENTITIES if e in delta.entities]:
        d = delta.entities[entity]
        r = out[entity] = EntityReconciliation(entity, cloud_delta=len(d.rows))
        by_origin: dict[str, list[dict]] = {}
        for row in iter_rows(box, f"crm.{entity}.list", filter={"ORIGINATOR_ID": ORIGINATOR}, select=SELECT[entity]):
            by_origin.setdefault(str(row.get("ORIGIN_ID")), []).append(row)
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
            cloud_user_map = {u: users.get(u, str(fallback_user_id)) for u in {str(row.get("ASSIGNED_BY_ID") or "")}}
            want = comparable(entity, row, relation_map=relation_map, user_map=cloud_user_map)
            have = comparable(entity, twin)
            if field_hash(want) != field_hash(have):
                r.mismatches.append({"cloud_id": cid, "box_id": str(twin["ID"]), "fields": diff(want, have)})
            else:
                r.matched += 1
    return Reconciliation(out)

"""Idempotent import of the delta into the box.

Order companies → contacts → leads → deals, so every relation points at a record the box
already has; relation IDs are remapped through the cloud-ID → box-ID map (records of the backup
keep their IDs on the box). New records go in with ``crm.item.batchImport`` (creation times kept,
no robots) when the box offers it, else ``crm.<entity>.add`` with ``params[IMPORT]``; records the
backup already has are updated with the cloud's values. Every box record written carries
``ORIGINATOR_ID = 'cloud2box'`` and ``ORIGIN_ID = <cloud ID>``.

Why it never duplicates: before writing, the map is completed from the box itself (records with
our ORIGINATOR_ID, by ORIGIN_ID), so a crash between a box write and the map write is repaired on
the next run; a write whose outcome is unknown (connection lost) is never blindly retried — the
box is re-read and only what is still missing is written.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from connectors.errors import FatalError, TransientError

from .delta import DeltaExport
from .lists import ITEM_ENTITY_TYPE, iter_rows, php_query
from .model import DATA_FIELDS, ENTITIES, MULTI, ORIGINATOR, RELATIONS, SELECT, USER_FIELDS, chunks, comparable, \
    multi_values, parse_date
from .rest import AmbiguousWriteError, Bitrix24Client

log = logging.getLogger("cloud2box.bitrix24")

ITEM_NAMES = {"DATE_CREATE": "createdTime", "DATE_MODIFY": "updatedTime", "CREATED_BY_ID": "createdBy",
              "MODIFY_BY_ID": "updatedBy", "PHONE": "phone", "EMAIL": "email"}
MAX_ROUNDS = 5  # re-plans after writes of unknown outcome, per entity


def item_name(field: str) -> str:
    """``COMPANY_ID`` → ``companyId`` (crm.item.* spelling)."""
    if field in ITEM_NAMES:
        return ITEM_NAMES[field]
    head, *rest = field.lower().split("_")
    return head + "".join(p.capitalize() for p in rest)


@dataclass
class EntityImport:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    map_rebuilt: int = 0
    duplicates_in_box: list[str] = field(default_factory=list)
    unresolved_relations: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


@dataclass
class ImportReport:
    entities: dict[str, EntityImport] = field(default_factory=dict)
    fallback_users: dict[str, int] = field(default_factory=dict)  # cloud user ID → records given to fallback
    method: str = "batchImport"
    seconds: float = 0.0
    requests: int = 0
    rounds: int = 0

    @property
    def written(self) -> int:
        return sum(e.created + e.updated for e in self.entities.values())

    @property
    def failures(self) -> list[str]:
        return [f for e in self.entities.values() for f in e.failures]

    def summary(self) -> dict:
        return {e: {"created": r.created, "updated": r.updated, "unchanged": r.unchanged,
                    "map_rebuilt": r.map_rebuilt, "failures": len(r.failures),
                    "unresolved_relations": len(r.unresolved_relations),
                    "duplicates_in_box": r.duplicates_in_box[:50]} for e, r in self.entities.items()}


def _users(client: Bitrix24Client) -> list[dict]:
    users, start = [], 0
    for _ in range(10_000):
        body = client.call("user.get", {"start": start})
        users.extend(body.get("result") or [])
        if "next" not in body:
            return users
        start = int(body["next"])
    raise FatalError(f"{client.name}: user.get did not end", fix="check the portal")


def map_users(cloud: Bitrix24Client, box: Bitrix24Client) -> dict[str, str]:
    """Cloud user ID → box user ID, matched by e-mail (IDs of users hired after the backup differ)."""
    by_mail = {str(u.get("EMAIL", "")).lower(): str(u["ID"]) for u in _users(box) if u.get("EMAIL")}
    out = {}
    for u in _users(cloud):
        mail = str(u.get("EMAIL", "")).lower()
        if mail and mail in by_mail:
            out[str(u["ID"])] = by_mail[mail]
    return out


class _Context:
    def __init__(self, box, idmap, delta, user_map, fallback_user_id, report):
        self.box, self.idmap, self.delta = box, idmap, delta
        self.user_map, self.fallback = user_map, str(fallback_user_id)
        self.report = report
        self.maps: dict[str, dict[str, str]] = {}

    def box_user(self, cloud_user) -> str:
        v = str(cloud_user or "")
        if not v or v == "0":
            return ""
        if v in self.user_map:
            return self.user_map[v]
        self.report.fallback_users[v] = self.report.fallback_users.get(v, 0) + 1
        return self.fallback

    def relation(self, entity: str, field_: str, target: str, cloud_value, cloud_id: str) -> str:
        v = str(cloud_value or "")
        if not v or v == "0":
            return ""
        m = self.maps.get(target)
        if m is None:
            m = self.maps[target] = self.idmap.get(target)
        if v in m:
            return m[v]
        target_delta = self.delta.entities.get(target)
        if target_delta is None or int(v) <= target_delta.backup_max_id:
            return v  # a record of the backup: same ID on the box
        self.report.entities[entity].unresolved_relations.append(f"{entity} {cloud_id}: {field_}={v} not on the box")
        return ""


def _box_fields(ctx: _Context, entity: str, cloud_id: str, row: dict, *, create: bool) -> dict:
    out: dict = {f: row.get(f) or "" for f in DATA_FIELDS[entity]}
    for f, target in RELATIONS[entity].items():
        out[f] = ctx.relation(entity, f, target, row.get(f), cloud_id)
    for f in USER_FIELDS:
        out[f] = ctx.box_user(row.get(f))
    for f in MULTI[entity]:
        out[f] = [{"VALUE": v, "VALUE_TYPE": t} for t, v in multi_values(row.get(f))]
    if create:
        out["DATE_CREATE"] = row.get("DATE_CREATE")
        out["DATE_MODIFY"] = row.get("DATE_MODIFY") or row.get("DATE_CREATE")
        if row.get("CREATED_BY_ID"):
            out["CREATED_BY_ID"] = ctx.box_user(row.get("CREATED_BY_ID"))
    out["ORIGINATOR_ID"] = ORIGINATOR
    out["ORIGIN_ID"] = cloud_id
    return out


def _rebuild_map(ctx: _Context, entity: str, rep: EntityImport) -> dict[str, str]:
    """Complete the map from the box: every record with our ORIGINATOR_ID, by ORIGIN_ID."""
    known = ctx.idmap.get(entity)
    found: dict[str, str] = {}
    dups: set[str] = set()
    for row in iter_rows(ctx.box, f"crm.{entity}.list", filter={"ORIGINATOR_ID": ORIGINATOR},
                         select=["ID", "ORIGIN_ID"]):
        origin = str(row.get("ORIGIN_ID") or "")
        if not origin:
            continue
        if origin in found:
            dups.add(origin)
            continue  # ascending IDs: the first twin wins, the map keeps pointing at it
        found[origin] = str(row["ID"])
    missing = [(c, b) for c, b in found.items() if c not in known]
    if missing:
        rep.map_rebuilt += ctx.idmap.put(entity, missing)
        log.warning("%s: %d map entries rebuilt from the box's ORIGIN_ID (an earlier run stopped between a "
                    "box write and the map write)", entity, len(missing))
    rep.duplicates_in_box = sorted(dups, key=int)
    ctx.maps[entity] = ctx.idmap.get(entity)
    return ctx.maps[entity]


def _fetch_box(ctx: _Context, entity: str, box_ids: list[str]) -> dict[str, dict]:
    """Box records by ID (50 IDs per list command, 50 commands per request)."""
    out: dict[str, dict] = {}
    for group in chunks(box_ids, 50 * 50):
        cmd = {f"g{i}": f"crm.{entity}.list?" + php_query({"filter": {"@ID": ids}, "select": SELECT[entity],
                                                           "start": -1})
               for i, ids in enumerate(chunks(group, 50))}
        res = ctx.box.batch(cmd)
        for key in cmd:
            for row in res["result"].get(key) or []:
                out[str(row["ID"])] = row
    return out


def _write_updates(ctx: _Context, entity: str, plans: list[tuple[str, str, dict, dict]], rep: EntityImport) -> None:
    """plans: (cloud ID, box ID, desired fields, current box row). Multi-fields are replaced:
    the box's values are deleted by their IDs, the cloud's added."""
    for group in chunks(plans, 50):
        cmd = {}
        for i, (cid, bid, fields, current) in enumerate(group):
            f = dict(fields)
            for m in MULTI[entity]:
                if multi_values(current.get(m)) == multi_values(f[m]):
                    f.pop(m)
                else:
                    f[m] = [{"ID": x["ID"], "DELETE": "Y"} for x in current.get(m) or []] + f[m]
            cmd[f"u{i}"] = f"crm.{entity}.update?" + php_query({"id": bid, "fields": f})
        res = ctx.box.batch(cmd, idempotent=False)
        ok = []
        for i, (cid, bid, _, _) in enumerate(group):
            if f"u{i}" in res["result"]:
                ok.append((cid, bid))
                rep.updated += 1
            else:
                rep.failures.append(f"{entity} {cid} → box {bid}: update failed: {res['result_error'].get(f'u{i}')}")
        ctx.idmap.put(entity, ok)


def _write_creates(ctx: _Context, entity: str, plans: list[tuple[str, dict]], rep: EntityImport,
                   use_import: bool) -> None:
    """plans: (cloud ID, box fields) in ascending creation time."""
    per_cmd = 20 if use_import else 1
    for group in chunks(plans, 50 * per_cmd):
        cmd, members = {}, {}
        for i, items in enumerate(chunks(group, per_cmd)):
            if use_import:
                data = [{item_name(k): v for k, v in f.items()} for _, f in items]
                cmd[f"c{i}"] = "crm.item.batchImport?" + php_query(
                    {"entityTypeId": ITEM_ENTITY_TYPE[entity], "data": data})
            else:
                cmd[f"c{i}"] = f"crm.{entity}.add?" + php_query({"fields": items[0][1], "params": {"IMPORT": "Y"}})
            members[f"c{i}"] = items
        res = ctx.box.batch(cmd, idempotent=False)
        ok: list[tuple[str, str]] = []
        with_add: list[tuple[str, dict]] = []
        for key, items in members.items():
            if key not in res["result"]:
                err = res["result_error"].get(key) or {}
                if use_import and err.get("error") == "ERROR_METHOD_NOT_FOUND":
                    ctx.report.method = "add"  # an older box: no crm.item.batchImport
                    with_add.extend(items)
                    continue
                rep.failures.extend(f"{entity} {cid}: create failed: {err}" for cid, _ in items)
                continue
            if use_import:
                answers = (res["result"][key] or {}).get("items") or []
                for n, (cid, f) in enumerate(items):
                    ans = answers[n] if n < len(answers) else {}
                    new_id = (ans.get("item") or {}).get("id") if isinstance(ans, dict) else None
                    if new_id:
                        ok.append((cid, str(new_id)))
                    else:  # e.g. createdTime older than a box record: add with IMPORT keeps it anyway
                        with_add.append((cid, f))
            else:
                ok.append((items[0][0], str(res["result"][key])))
        ctx.idmap.put(entity, ok)  # right after the box write: the window a crash can hit is this line
        rep.created += len(ok)
        if with_add:
            _write_creates(ctx, entity, with_add, rep, use_import=False)
        if ctx.report.method == "add":
            use_import, per_cmd = False, 1


def import_delta(box: Bitrix24Client, delta: DeltaExport, idmap, *, user_map: dict[str, str],
                 fallback_user_id: int = 1, use_batch_import: bool = True,
                 progress: Callable[[int, int, str], None] | None = None) -> ImportReport:
    """Write the delta into the box; safe to run again at any time (see the module doc).

    Args:
        box: the box portal's client.
        delta: what :func:`connectors.bitrix24.delta.export_delta` found.
        idmap: a :class:`journal.idmap.IdMap` of this migration.
        user_map: cloud user ID → box user ID (:func:`map_users`); others go to ``fallback_user_id``.
    """
    t0 = time.monotonic()
    req0 = box.requests
    report = ImportReport(method="batchImport" if use_batch_import else "add")
    ctx = _Context(box, idmap, delta, user_map, fallback_user_id, report)
    total = delta.records
    done = 0
    for entity in [e for e in ENTITIES if e in delta.entities]:
        d = delta.entities[entity]
        rep = report.entities[entity] = EntityImport()
        if not d.rows:
            continue  # nothing to write: no need to read the box (sweeps mostly find nothing)
        order = sorted(d.rows, key=lambda c: (parse_date(d.rows[c].get("DATE_CREATE")) or delta.cutoff, int(c)))
        for round_no in range(MAX_ROUNDS):
            report.rounds += 1
            idm = _rebuild_map(ctx, entity, rep)
            twins_wanted = [idm.get(c) or c for c in order if c in idm or d.kind[c] == "modified"]
            twins = _fetch_box(ctx, entity, twins_wanted)
            creates, updates, unchanged = [], [], []
            rep.unresolved_relations.clear()
            rep.unchanged = 0
            for cid in order:
                row = d.rows[cid]
                bid = idm.get(cid) or (cid if d.kind[cid] == "modified" else None)
                current = twins.get(bid) if bid else None
                if current is None:
                    creates.append((cid, _box_fields(ctx, entity, cid, row, create=True)))
                    continue
                want = _box_fields(ctx, entity, cid, row, create=False)
                same = comparable(entity, {**current, "DATE_CREATE": None}) == \
                    comparable(entity, {**want, "DATE_CREATE": None}) and \
                    str(current.get("ORIGINATOR_ID") or "") == ORIGINATOR and str(current.get("ORIGIN_ID")) == cid
                if same:
                    unchanged.append((cid, bid))
                else:
                    updates.append((cid, bid, want, current))
            rep.unchanged = len(unchanged)
            ctx.idmap.put(entity, unchanged)
            try:
                _write_creates(ctx, entity, creates, rep, use_import=report.method == "batchImport")
                _write_updates(ctx, entity, updates, rep)
                break
            except AmbiguousWriteError as exc:
                # The box may or may not have done it: read the box again and write what is missing.
                log.warning("%s: a write's outcome is unknown (%s); re-reading the box", entity, exc)
                continue
        else:
            raise TransientError(f"box: {entity} writes kept failing with unknown outcome ({MAX_ROUNDS} rounds)",
                                 fix="check the box's health")  # the flow adds which step to run again
        ctx.maps[entity] = idmap.get(entity)
        done += len(d.rows)
        if progress:
            progress(done, total, f"{entity}: {rep.created} created, {rep.updated} updated, {rep.unchanged} unchanged")
    report.seconds = time.monotonic() - t0
    report.requests = box.requests - req0
    return report

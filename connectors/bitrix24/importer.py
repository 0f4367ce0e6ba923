"""Idempotent import of the delta into the box.

Order companies → contacts → leads → deals, so every relation points at a record the box
already has; relation IDs are remapped through the cloud-ID → box-ID map (records of the backup
keep their IDs on the box). New records go in with ``crm.item.batchImport`` (creation times kept,
no robots) when the box offers it, else ``crm.<entity>.add`` with ``params[IMPORT]``; records the
backup already has are updated with the cloud's values. Every box record written carries
``ORIGINATOR_ID = 'cloud2box'`` and ``ORIGIN_ID = <cloud ID>``.

Why it never duplicates: before writing, the map is completed from the box itself (records with
our ORIGINATOR_ID, by ORIGIN_ID), so a crash between a box write and the map write is repaired on
the next run; a write whose outcome is unknown (timed out, connection lost) is never blindly
retried — the box may still be executing it, so the importer first waits until that write must have
ended (every record it carried is on the box, or nothing changed for as long as a request may take:
:func:`_settle`), then re-reads the box and writes only what is still missing. A timed-out write also
makes the next ones smaller (:class:`_Pace`). A command refused by a limit inside a batch was not
executed: it is planned again.

Why it never loses one: whatever a run did not finish is planned again from the delta and the
box; a record older than the box's newest record, whose creation time the box refuses (imports go
in ascending creation time), is still moved, with the box's newest creation time
(:func:`_write_retimed`), and listed with its cloud time.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from connectors.errors import FatalError, RateLimitedError, TransientError

from .delta import DeltaExport, rows_by_id
from .lists import ITEM_ENTITY_TYPE, iter_rows, php_query
from .model import BINDINGS, DATA_FIELDS, ENTITIES, MULTI, ORIGINATOR, RELATIONS, USER_FIELDS, chunks, \
    MAIN_LINK, UserMap, bindings_of, comparable, multi_values, parse_date
from .rest import AmbiguousWriteError, Bitrix24Client
from .userfields import UserFieldMaps, is_uf, sync_definitions

log = logging.getLogger("cloud2box.bitrix24")

MAX_ROUNDS = 5  # re-plans in a row that got no record further, per entity
MAX_ROUNDS_TOTAL = 200  # re-plans at all, per entity (each follows a write resolved on the box)
SETTLE_MAX_S = 600.0  # longest wait for an in-flight write to end on the box (at least 10 × the timeout)
BY_ORIGIN_LIMIT = 1000  # up to this many records, their box twins are looked up by ORIGIN_ID (else: all of ours)

# crm.item.batchImport's name for each field we write with crm.<entity>.add, per entity. Each item
# of its ``data`` is the ``fields`` of crm.item.import (bitrix-tools/b24-rest-docs
# api-reference/crm/universal/import/crm-item-batch-import.md), whose names are in the per-object
# tables of api-reference/crm/universal/import/crm-item-import.md ("Параметр fields"): a lead's
# status is ``stageId`` (table "Лид"), a company's type ``typeId`` (table "Компания"). The history
# fields are from import/index.md ("Как сохранить историю элемента"); the multi-fields keep the
# names PHONE/EMAIL with lists of {VALUE, VALUE_TYPE}, as crm-item-import.md says for them (not
# crm.item.add's ``fm``, not the read-only ``phone``/``email`` strings). No name is derived: a field
# missing here is a KeyError in the tests, never a name the box silently ignores.
_ITEM_COMMON = {"ASSIGNED_BY_ID": "assignedById", "ORIGINATOR_ID": "originatorId", "ORIGIN_ID": "originId",
                "COMMENTS": "comments", "DATE_CREATE": "createdTime", "DATE_MODIFY": "updatedTime",
                "CREATED_BY_ID": "createdBy", "MODIFY_BY_ID": "updatedBy"}
_ITEM_MULTI = {"PHONE": "PHONE", "EMAIL": "EMAIL", "WEB": "WEB", "IM": "IM"}
ITEM_NAMES: dict[str, dict[str, str]] = {
    "company": {**_ITEM_COMMON, **_ITEM_MULTI, "TITLE": "title", "COMPANY_TYPE": "typeId", "INDUSTRY": "industry"},
    "contact": {**_ITEM_COMMON, **_ITEM_MULTI, "NAME": "name", "LAST_NAME": "lastName", "POST": "post",
                "SOURCE_ID": "sourceId", "COMPANY_ID": "companyIds", "COMPANY_IDS": "companyIds"},
    "lead": {**_ITEM_COMMON, **_ITEM_MULTI, "TITLE": "title", "NAME": "name", "LAST_NAME": "lastName",
             "STATUS_ID": "stageId", "SOURCE_ID": "sourceId", "OPPORTUNITY": "opportunity",
             "CURRENCY_ID": "currencyId", "CONTACT_ID": "contactIds", "CONTACT_IDS": "contactIds",
             "COMPANY_ID": "companyId"},
    "deal": {**_ITEM_COMMON, "TITLE": "title", "STAGE_ID": "stageId", "CATEGORY_ID": "categoryId",
             "OPPORTUNITY": "opportunity", "CURRENCY_ID": "currencyId", "CONTACT_ID": "contactIds",
             "CONTACT_IDS": "contactIds", "COMPANY_ID": "companyId", "LEAD_ID": "leadId"},
}
# Custom fields keep their UF_CRM_… names: the import is asked for them (useOriginalUfNames=Y).
# Contacts and companies are bound through the lists (contactIds/companyIds in the same tables; a
# deal's single CONTACT_ID is "Устаревшее", api-reference/crm/deals/crm-deal-add.md): our one link
# goes as a one-entry list, an empty link as no entry.
_ITEM_AS_LIST = {("lead", "CONTACT_ID"), ("deal", "CONTACT_ID"), ("contact", "COMPANY_ID")}


def item_name(entity: str, field: str) -> str:
    """crm.item.batchImport's name of ``field`` of ``entity`` (``STATUS_ID`` of a lead → ``stageId``;
    a custom field keeps its name, see ``useOriginalUfNames``).

    Raises:
        KeyError: a field nobody has looked up in the import page (see ``ITEM_NAMES``).
    """
    return field if is_uf(field) else ITEM_NAMES[entity][field]


def batch_import_item(entity: str, fields: dict) -> dict:
    """One entry of crm.item.batchImport's ``data`` from the fields we give crm.<entity>.add. The
    list of bindings (CONTACT_IDS, COMPANY_IDS), when given, stands for the single link too."""
    out = {}
    for f, v in fields.items():
        if (entity, f) in _ITEM_AS_LIST:
            if any(b in fields for b in BINDINGS[entity]):
                continue
            v = [v] if str(v or "") not in ("", "0") else []
        out[item_name(entity, f)] = v
    return out


@dataclass
class EntityImport:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    map_rebuilt: int = 0
    duplicates_in_box: list[str] = field(default_factory=list)
    unresolved_relations: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    times_not_kept: list[str] = field(default_factory=list)  # cloud IDs the box refused the creation time of
    cloud_times: dict[str, str] = field(default_factory=dict)  # their cloud DATE_CREATE (kept for the review)


@dataclass
class ImportReport:
    entities: dict[str, EntityImport] = field(default_factory=dict)
    fallback_users: dict[str, int] = field(default_factory=dict)  # cloud user ID → records given to fallback
    method: str = "batchImport"
    seconds: float = 0.0
    requests: int = 0
    rounds: int = 0
    unknown_outcomes: int = 0  # writes whose answer was lost, resolved on the box
    settle_s: float = 0.0  # seconds spent waiting for such writes to end on the box
    userfields: UserFieldMaps = field(default_factory=UserFieldMaps)  # custom field definitions made, values mapped
    timeline: Any = None  # timeline.TimelineImport
    dynamic: dict[str, Any] = field(default_factory=dict)  # dynamic:<entityTypeId> → dynamic.TypeImport

    @property
    def written(self) -> int:
        return sum(e.created + e.updated for e in self.entities.values())

    @property
    def failures(self) -> list[str]:
        return [f for e in self.entities.values() for f in e.failures] + \
            (self.timeline.failures if self.timeline is not None else []) + \
            [f for t in self.dynamic.values() for f in t.failures]

    def userfields_summary(self) -> dict:
        uf = self.userfields
        return {"definitions_created": uf.created, "list_values_added": uf.values_added[:50],
                "not_moved": uf.not_moved, "problems": uf.problems[:50]}

    def details(self) -> dict:
        """What else the import did, by kind (the step's evidence shows each under its key)."""
        out: dict = {"custom_fields": self.userfields_summary()}
        if self.timeline is not None:
            out["timeline"] = self.timeline.summary()
        if self.dynamic:
            out["smart_processes"] = {k: {"created": t.created, "updated": t.updated, "unchanged": t.unchanged,
                                          "creation_time_not_kept": t.times_not_kept[:50],
                                          "failures": t.failures[:50]} for k, t in self.dynamic.items()}
        return out

    def summary(self) -> dict:
        return {e: {"created": r.created, "updated": r.updated, "unchanged": r.unchanged,
                    "map_rebuilt": r.map_rebuilt, "failures": len(r.failures),
                    "unresolved_relations": len(r.unresolved_relations),
                    "duplicates_in_box": r.duplicates_in_box[:50],
                    "creation_time_not_kept": r.times_not_kept[:50]} for e, r in self.entities.items()}


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


class _Pace:
    """Records per write request, so that the box answers well within the client's timeout: halved
    after a timeout, else sized from the measured seconds per record to half the timeout."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.limit = 50 * 20  # a full batch of crm.item.batchImport commands
        self.per_record: float | None = None

    def records(self, per_cmd: int) -> int:
        """Records in the next request (commands of ``per_cmd`` records, at most 50 commands)."""
        return max(1, min(self.limit, 50 * per_cmd))

    def answered(self, records: int, seconds: float) -> None:
        if records <= 0 or seconds <= 0:
            return
        per = seconds / records
        self.per_record = per if self.per_record is None else (self.per_record + per) / 2
        self.limit = max(1, int(self.timeout * 0.5 / self.per_record))

    def timed_out(self, records: int) -> None:
        self.limit = max(1, min(self.limit, records) // 2)


class _Replan(Exception):
    """Records of this round are not (or not surely) written: plan again from the box."""


class _Context:
    def __init__(self, box, idmap, delta, user_map, fallback_user_id, report, *, quiet_s: float,
                 settle_max_s: float, sleep: Callable[[float], None]):
        self.box, self.idmap, self.delta = box, idmap, delta
        self.user_map, self.fallback = user_map, str(fallback_user_id)
        self.report = report
        self.pace = _Pace(box.timeout)
        self.failed: dict[str, set[str]] = {}  # entity → cloud IDs whose write failed for good (reported)
        self.quiet_s, self.settle_max_s, self.sleep = quiet_s, settle_max_s, sleep
        self.maps: dict[str, dict[str, str]] = {}
        self.uf = UserFieldMaps()  # filled by import_delta before any record is written

    def relations(self) -> dict[str, dict[str, str]]:
        """cloud ID → box ID per entity, as mapped so far (records of the backup keep their IDs)."""
        for e in ENTITIES:
            if e not in self.maps:
                self.maps[e] = self.idmap.get(e)
        return self.maps

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
    for f, (target, _) in BINDINGS[entity].items():
        ids = [ctx.relation(entity, f, target, v, cloud_id) for v in bindings_of(row, f)]
        main = str(out.get(MAIN_LINK[f]) or "")
        out[f] = sorted({i for i in ids if i}, key=lambda i: (i != main, len(i), i))  # the main link first
    for f in ctx.uf.fields(entity):
        if f in row:
            out[f] = ctx.uf.to_box(entity, f, row.get(f), users=UserMap(ctx.user_map, ctx.fallback),
                                   relations=ctx.relations())
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


def _rebuild_map(ctx: _Context, entity: str, rep: EntityImport, cloud_ids: list[str]) -> dict[str, str]:
    """Complete the map from the box: our records (ORIGINATOR_ID) by ORIGIN_ID — those of ``cloud_ids``
    when they are few (a pre-sync pass or the freeze moves minutes of changes: the cost follows the delta,
    not every record ever moved), else every one of ours in one listing."""
    known = ctx.idmap.get(entity)
    on_box = _on_box(ctx, entity, cloud_ids if len(cloud_ids) <= BY_ORIGIN_LIMIT else None)
    missing = [(c, ids[0]) for c, ids in on_box.items() if c not in known]  # the first twin wins, as the map
    if missing:
        rep.map_rebuilt += ctx.idmap.put(entity, missing)
        log.warning("%s: %d map entries rebuilt from the box's ORIGIN_ID (an earlier run stopped between a "
                    "box write and the map write)", entity, len(missing))
    rep.duplicates_in_box = sorted((c for c, ids in on_box.items() if len(ids) > 1), key=int)
    ctx.maps[entity] = ctx.idmap.get(entity)
    return ctx.maps[entity]


def _fetch_box(ctx: _Context, entity: str, box_ids: list[str]) -> dict[str, dict]:
    """Box records by ID, complete or raising (:func:`.delta.rows_by_id`)."""
    return rows_by_id(ctx.box, entity, box_ids)


def _on_box(ctx: _Context, entity: str, cloud_ids=None) -> dict[str, tuple[str, ...]]:
    """Our records on the box whose ORIGIN_ID is one of ``cloud_ids`` (in groups of 100), else every
    one of ours: cloud ID → box IDs, ascending."""
    found: dict[str, list[str]] = {}
    groups = [None] if cloud_ids is None else list(chunks(sorted({str(c) for c in cloud_ids}, key=int), 100))
    for group in groups:
        flt = {"ORIGINATOR_ID": ORIGINATOR, **({"@ORIGIN_ID": group} if group else {})}
        for row in iter_rows(ctx.box, f"crm.{entity}.list", filter=flt, select=["ID", "ORIGIN_ID"],
                             commands_per_batch=5 if group else 50):
            origin = str(row.get("ORIGIN_ID") or "")
            if origin:
                found.setdefault(origin, []).append(str(row["ID"]))
    return {c: tuple(sorted(ids, key=int)) for c, ids in found.items()}


def _same(ctx: _Context, entity: str, current: dict, want: dict, cloud_id: str) -> bool:
    """The box record already holds what we would write (creation times aside: never updated)."""
    return comparable(entity, {**current, "DATE_CREATE": None}, uf=ctx.uf) == \
        comparable(entity, {**want, "DATE_CREATE": None}, uf=ctx.uf) and str(current.get("ORIGINATOR_ID") or "") == ORIGINATOR and str(current.get("ORIGIN_ID")) == cloud_id


def _settle(ctx: _Context, what: str, look: Callable[[], tuple[bool, object]]) -> object:
    """Wait until a write whose answer was lost must have ended on the box; returns the last state.

    The box may still be executing it (a timed-out request goes on): planning again now would
    write its records a second time. ``look()`` → ``(done, state)``: done when every record the
    write carried is on the box as written; else the write has ended once ``state`` has not changed
    for ``ctx.quiet_s`` seconds (the client's timeout: a box still working on our request saves
    a record well within the time we allow a whole request). Bounded by ``ctx.settle_max_s``.

    Raises:
        TransientError: the box was still changing them at the bound (run the step again later).
    """
    t0 = time.monotonic()
    last: object = None
    since = t0
    poll = min(1.0, max(0.05, ctx.quiet_s / 4))
    for n in range(1_000_000):  # the deadline below ends it
        done, state = look()
        now = time.monotonic()
        if done:
            break
        if n == 0 or state != last:
            last, since = state, now
        elif now - since >= ctx.quiet_s:
            break
        if now - t0 >= ctx.settle_max_s:
            ctx.report.settle_s += now - t0
            raise TransientError(f"box: {what} was still being written {now - t0:.0f} s after its answer was lost",
                                 fix="the box is overloaded: wait until it is idle")
        ctx.sleep(poll)
    ctx.report.settle_s += time.monotonic() - t0
    return state


def _send(ctx: _Context, entity: str, cmd: dict, records: int, what: str,
          look: Callable[[], tuple[bool, object]], resolved: Callable[[object], None], *, halt: bool = False) -> dict:
    """One write request. Its answer lost: wait until the box has ended it (:func:`_settle`), keep
    what it wrote (``resolved(state)``), and plan again (:class:`_Replan`)."""
    t0, waited0 = time.monotonic(), ctx.box.waited_s
    try:
        res = ctx.box.batch(cmd, halt=halt, idempotent=False)
    except AmbiguousWriteError as exc:
        ctx.report.unknown_outcomes += 1
        if exc.timed_out:
            ctx.pace.timed_out(records)
        log.warning("%s: %s; waiting until the box has finished %s, then re-reading it", entity, exc, what)
        resolved(_settle(ctx, what, look))
        raise _Replan(f"{what}: {exc.message}") from None
    ctx.pace.answered(records, time.monotonic() - t0 - (ctx.box.waited_s - waited0))
    return res


def _created_look(ctx: _Context, entity: str, cloud_ids: list[str]) -> Callable[[], tuple[bool, object]]:
    def look() -> tuple[bool, object]:
        found = _on_box(ctx, entity, cloud_ids)
        return all(c in found for c in cloud_ids), found
    return look


def _map_found(ctx: _Context, entity: str, rep: EntityImport, found) -> None:
    """Map what a write of unknown outcome created (the first twin, as :func:`_rebuild_map` does)."""
    rep.created += ctx.idmap.put(entity, [(c, ids[0]) for c, ids in (found or {}).items() if ids])


def _updated_look(ctx: _Context, entity: str, plans: list[tuple]) -> Callable[[], tuple[bool, object]]:
    def look() -> tuple[bool, object]:
        rows = _fetch_box(ctx, entity, [bid for _, bid, _, _ in plans])
        state = tuple(sorted((bid, repr(comparable(entity, rows.get(bid) or {}, uf=ctx.uf))) for _, bid, _, _ in plans))
        done = all(bid in rows and _same(ctx, entity, rows[bid], want, cid) for cid, bid, want, _ in plans)
        return done, state
    return look


def _unwritten(ctx: _Context, cmd: dict, res: dict, key: str) -> str | None:
    """Why the failed command ``key`` wrote nothing for sure ("limit", "not run"), "unknown" when it
    may have written, None when it failed for good (a refusal the portal explained)."""
    if key not in res["result_error"]:
        return "not run"
    err = ctx.box.command_error(cmd, res, key)
    if isinstance(err, RateLimitedError):
        return "limit"
    return "unknown" if isinstance(err, TransientError) else None


def _write_updates(ctx: _Context, entity: str, plans: list[tuple[str, str, dict, dict]], rep: EntityImport) -> None:
    """plans: (cloud ID, box ID, desired fields, current box row). Multi-fields are replaced:
    the box's values are deleted by their IDs, the cloud's added (so an update is never sent twice
    on a stale plan: the second would add the phones again)."""
    rest = list(plans)
    for _ in range(len(plans) + 1):  # every request takes at least one plan
        if not rest:
            return
        size = ctx.pace.records(1)
        group, rest = rest[:size], rest[size:]
        cmd = {}
        for i, (_cid, bid, fields, current) in enumerate(group):
            f = dict(fields)
            for m in MULTI[entity]:
                if multi_values(current.get(m)) == multi_values(f[m]):
                    f.pop(m)
                else:
                    f[m] = [{"ID": x["ID"], "DELETE": "Y"} for x in current.get(m) or []] + f[m]
            cmd[f"u{i}"] = f"crm.{entity}.update?" + php_query({"id": bid, "fields": f})
        res = _send(ctx, entity, cmd, len(group), f"an update of {len(group)} {entity}(s)",
                    _updated_look(ctx, entity, group), lambda state: None)
        ok, again, unsure = [], [], []
        for i, plan in enumerate(group):
            cid, bid = plan[0], plan[1]
            key = f"u{i}"
            if key in res["result"]:
                ok.append((cid, bid))
                rep.updated += 1
                continue
            why = _unwritten(ctx, cmd, res, key)
            if why is None:
                rep.failures.append(f"{entity} {cid} → box {bid}: update failed: {res['result_error'].get(key)}")
                ctx.failed.setdefault(entity, set()).add(cid)
            else:
                (unsure if why == "unknown" else again).append(plan)
        ctx.idmap.put(entity, ok)
        if unsure:
            _settle(ctx, f"an update of {len(unsure)} {entity}(s)", _updated_look(ctx, entity, unsure))
        if unsure or again:
            raise _Replan(f"{len(unsure) + len(again)} {entity} update(s) not surely written (limits, errors)")


def _write_creates(ctx: _Context, entity: str, plans: list[tuple[str, dict]], rep: EntityImport,
                   use_import: bool, *, retimed: bool = False) -> None:
    """plans: (cloud ID, box fields) in ascending creation time. ``retimed``: the times are the
    box's (:func:`_write_retimed`), the last way in.

    The box keeps creation times only in ascending order, so a request stops at its first failed
    command (``halt``): what follows is planned again, never written past a record left behind.
    A record that failed for good is remembered (``ctx.failed``) and not planned again."""
    per_cmd = 20 if use_import else 1
    rest = list(plans)
    for _ in range(len(plans) + 1):  # every request takes at least one plan
        if not rest:
            return
        size = ctx.pace.records(per_cmd)
        group, rest = rest[:size], rest[size:]
        cmd, members = {}, {}
        for i, items in enumerate(chunks(group, per_cmd)):
            if use_import:
                data = [batch_import_item(entity, f) for _, f in items]
                cmd[f"c{i}"] = "crm.item.batchImport?" + php_query(
                    {"entityTypeId": ITEM_ENTITY_TYPE[entity], "data": data, "useOriginalUfNames": "Y"})
            else:
                cmd[f"c{i}"] = f"crm.{entity}.add?" + php_query({"fields": items[0][1], "params": {"IMPORT": "Y"}})
            members[f"c{i}"] = items
        in_flight = [cid for cid, _ in group]
        res = _send(ctx, entity, cmd, len(group), f"a write of {len(group)} new {entity}(s)",
                    _created_look(ctx, entity, in_flight), lambda found: _map_found(ctx, entity, rep, found),
                    halt=True)
        ok: list[tuple[str, str]] = []
        with_add: list[tuple[str, dict]] = []
        again: list[str] = []
        unsure: list[str] = []
        refused: list[tuple[tuple[str, dict], dict]] = []
        for key, items in members.items():
            if key not in res["result"]:
                err = res["result_error"].get(key) or {}
                if use_import and err.get("error") == "ERROR_METHOD_NOT_FOUND":
                    ctx.report.method = "add"  # an older box: no crm.item.batchImport
                    with_add.extend(items)
                    continue
                why = _unwritten(ctx, cmd, res, key)
                if why is not None:  # refused by a limit / not run: plan again; else it may have run
                    (unsure if why == "unknown" else again).extend(cid for cid, _ in items)
                    continue
                if not use_import and not retimed:
                    refused.append((items[0], err))  # the box's answer, or its creation time: see below
                    continue
                _failed(ctx, entity, rep, items, err)
                continue
            if use_import:
                answers = (res["result"][key] or {}).get("items") or []
                for n, (cid, f) in enumerate(items):
                    ans = answers[n] if n < len(answers) else {}
                    new_id = (ans.get("item") or {}).get("id") if isinstance(ans, dict) else None
                    if new_id:
                        ok.append((cid, str(new_id)))
                    else:  # refused inside batchImport: alone with add, whose answer says why (a creation
                        with_add.append((cid, f))  # time the box refuses is then retimed, see _write_retimed)
            else:
                ok.append((items[0][0], str(res["result"][key])))
        ctx.idmap.put(entity, ok)  # right after the box write: the window a crash can hit is this line
        rep.created += len(ok)
        if retimed:
            rep.times_not_kept.extend(cid for cid, _ in ok)
        if unsure:
            _map_found(ctx, entity, rep, _settle(ctx, f"{len(unsure)} new {entity}(s)",
                                                 _created_look(ctx, entity, unsure)))
        if refused:  # older than the box's newest record: moved with the box's time (_write_retimed)
            newest = _box_newest(ctx, entity)
            retime = [plan for plan, _ in refused if _older_than(plan[1], newest)]
            for plan, err in refused:
                if not _older_than(plan[1], newest):
                    _failed(ctx, entity, rep, [plan], err)
            if retime:
                _write_retimed(ctx, entity, retime, rep, newest)
        if unsure or again:
            # nothing past a record left behind: planned again in order (with_add too)
            raise _Replan(f"{len(unsure) + len(again)} new {entity}(s) not surely written (limits, errors)")
        if with_add:
            _write_creates(ctx, entity, with_add, rep, use_import=False)
        if ctx.report.method == "add":
            use_import, per_cmd = False, 1


def _failed(ctx: _Context, entity: str, rep: EntityImport, plans: list[tuple[str, dict]], err) -> None:
    """Refused for good (the box said why): reported, and not planned again in this run."""
    rep.failures.extend(f"{entity} {cid}: create failed: {err}" for cid, _ in plans)
    ctx.failed.setdefault(entity, set()).update(cid for cid, _ in plans)


def _box_newest(ctx: _Context, entity: str) -> str | None:
    """DATE_CREATE of the box's newest record of ``entity`` (None on an empty table)."""
    body = ctx.box.call(f"crm.{entity}.list", {"order": {"DATE_CREATE": "DESC"}, "select": ["ID", "DATE_CREATE"],
                                               "start": -1})
    rows = body.get("result") or []
    return rows[0].get("DATE_CREATE") if rows else None


def _older_than(fields: dict, newest: str | None) -> bool:
    created, limit = parse_date(fields.get("DATE_CREATE")), parse_date(newest)
    return created is not None and limit is not None and created < limit


def _write_retimed(ctx: _Context, entity: str, plans: list[tuple[str, dict]], rep: EntityImport,
                   newest: str | None) -> None:
    """Records whose cloud creation time the box refuses: imports keep creation times only in
    ascending order, and the box already holds a newer record — the backup's own (a record created
    in the cloud after the backup but dated before its cutoff: an import in the cloud, a clock), the
    2.8 test records, or, in a sweep after go-live, what the team made on the box since. They still
    move, in import mode (no robots), dated as the box's newest record — the oldest time it accepts,
    so no later import is refused for them. The cloud's time is kept in the report
    (``times_not_kept``: cloud ID → cloud DATE_CREATE, written to crm-creation-time-not-kept.csv) and
    the reconciliation lists them under ``creation_time_not_kept``."""
    log.warning("%s: %d record(s) older than the box's newest record: the box refuses their creation times; "
                "moved with %s, the cloud's times are listed", entity, len(plans), newest or "the box's time")
    fixed = []
    for cid, fields in plans:
        rep.cloud_times.setdefault(cid, str(fields.get("DATE_CREATE") or ""))
        f = {k: v for k, v in fields.items() if k not in ("DATE_CREATE", "DATE_MODIFY")}
        if newest:
            f.update(DATE_CREATE=newest, DATE_MODIFY=newest)
        fixed.append((cid, f))
    _write_creates(ctx, entity, fixed, rep, use_import=False, retimed=True)


def import_delta(box: Bitrix24Client, delta: DeltaExport, idmap, *, user_map: dict[str, str],
                 fallback_user_id: int = 1, use_batch_import: bool = True,
                 progress: Callable[[int, int, str], None] | None = None, settle_quiet_s: float | None = None,
                 settle_max_s: float | None = None, sleep: Callable[[float], None] = time.sleep) -> ImportReport:
    """Write the delta into the box; safe to run again at any time (see the module doc).

    Args:
        box: the box portal's client.
        delta: what :func:`connectors.bitrix24.delta.export_delta` found.
        idmap: a :class:`journal.idmap.IdMap` of this migration.
        user_map: cloud user ID → box user ID (:func:`map_users`); others go to ``fallback_user_id``.
        settle_quiet_s: after a write whose answer was lost, how long the box must show no change to
            its records before the write counts as ended (default: the client's timeout).
        settle_max_s: the longest such wait (default: the larger of 600 s and 10 timeouts).

    Raises:
        TransientError: writes kept ending without an answer, or the box was still executing one
            at the bound; nothing is lost, the next run continues.
    """
    t0 = time.monotonic()
    req0 = box.requests
    report = ImportReport(method="batchImport" if use_batch_import else "add")
    quiet = settle_quiet_s if settle_quiet_s is not None else max(1.0, box.timeout)
    ctx = _Context(box, idmap, delta, user_map, fallback_user_id, report, quiet_s=quiet,
                   settle_max_s=settle_max_s if settle_max_s is not None else max(SETTLE_MAX_S, 10 * box.timeout),
                   sleep=sleep)
    total = delta.records
    done = 0
    if delta.entity_records:  # before any record needs them (a sweep that found nothing reads nothing)
        ctx.uf = report.userfields = sync_definitions(delta.uf_definitions, box)
    for entity in [e for e in ENTITIES if e in delta.entities]:
        d = delta.entities[entity]
        rep = report.entities[entity] = EntityImport()
        if not d.rows:
            continue  # nothing to write: no need to read the box (sweeps mostly find nothing)
        order = sorted(d.rows, key=lambda c: (parse_date(d.rows[c].get("DATE_CREATE")) or delta.cutoff, int(c)))
        stalled, progress_was = 0, None
        for _ in range(MAX_ROUNDS_TOTAL):
            report.rounds += 1
            idm = _rebuild_map(ctx, entity, rep, order)
            progress_now = (sum(1 for c in order if c in idm), rep.updated)
            stalled = stalled + 1 if progress_now == progress_was else 0
            progress_was = progress_now
            if stalled >= MAX_ROUNDS:
                raise TransientError(f"box: {entity} writes kept ending without a sure outcome ({MAX_ROUNDS} "
                                     "rounds without progress)", fix="check the box's health")
            twins_wanted = [idm.get(c) or c for c in order if c in idm or d.kind[c] == "modified"]
            twins = _fetch_box(ctx, entity, twins_wanted)
            creates, updates, unchanged = [], [], []
            rep.unresolved_relations.clear()
            rep.unchanged = 0
            for cid in order:
                if cid in ctx.failed.get(entity, ()):
                    continue  # reported in rep.failures; planning it again would only fail again
                row = d.rows[cid]
                bid = idm.get(cid) or (cid if d.kind[cid] == "modified" else None)
                current = twins.get(bid) if bid else None
                if current is None:
                    creates.append((cid, _box_fields(ctx, entity, cid, row, create=True)))
                    continue
                want = _box_fields(ctx, entity, cid, row, create=False)
                if _same(ctx, entity, current, want, cid):
                    unchanged.append((cid, bid))
                else:
                    updates.append((cid, bid, want, current))
            rep.unchanged = len(unchanged)
            ctx.idmap.put(entity, unchanged)
            try:
                _write_creates(ctx, entity, creates, rep, use_import=report.method == "batchImport")
                _write_updates(ctx, entity, updates, rep)
                break
            except _Replan as exc:  # resolved on the box already: plan what is still missing
                log.warning("%s: %s; planning again from the box", entity, exc)
                continue
        else:
            raise TransientError(f"box: {entity} writes kept ending without a sure outcome ({MAX_ROUNDS_TOTAL} "
                                 "rounds)", fix="check the box's health")  # the flow adds which step to run again
        ctx.maps[entity] = idmap.get(entity)
        done += len(d.rows)
        if progress:
            progress(done, total, f"{entity}: {rep.created} created, {rep.updated} updated, {rep.unchanged} unchanged")
    _import_extras(box, delta, idmap, report, user_map, fallback_user_id, settle_quiet_s, settle_max_s, sleep)
    report.seconds = time.monotonic() - t0
    report.requests = box.requests - req0
    return report


def _import_extras(box, delta: DeltaExport, idmap, report: ImportReport, user_map, fallback_user_id,
                   settle_quiet_s, settle_max_s, sleep) -> None:
    """After the four entities (their map is complete): the timeline, then the smart-process items."""
    from .dynamic import import_dynamic  # both build on this module
    from .timeline import import_timeline

    if delta.timeline is not None and delta.timeline.records:
        report.timeline = import_timeline(box, delta.timeline, idmap, user_map=user_map,
                                          fallback_user_id=fallback_user_id, settle_quiet_s=settle_quiet_s,
                                          settle_max_s=settle_max_s, sleep=sleep)
    if delta.dynamic is not None and delta.dynamic.records:
        report.dynamic = import_dynamic(box, delta.dynamic, idmap, user_map=user_map,
                                        fallback_user_id=fallback_user_id, quiet_s=settle_quiet_s, sleep=sleep)


def write_retimed_csv(report: ImportReport, out_dir) -> Path:
    """crm-creation-time-not-kept.csv: every record the box took with its own creation time, with the
    cloud's (0600, cells neutralised: connectors.outputs)."""
    import pandas as pd

    from connectors.outputs import write_csv

    rows = [{"ENTITY": e, "CLOUD_ID": cid, "CLOUD_DATE_CREATE": r.cloud_times.get(cid, ""),
             "ACTION": "moved with the box's newest creation time (the box refuses older ones)"}
            for e, r in report.entities.items() for cid in r.times_not_kept]
    return write_csv(pd.DataFrame.from_records(rows, columns=["ENTITY", "CLOUD_ID", "CLOUD_DATE_CREATE", "ACTION"]),
                     Path(out_dir) / "crm-creation-time-not-kept.csv")

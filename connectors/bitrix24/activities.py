"""Activities (calls, e-mails, meetings) made or changed in the cloud after the backup, onto the box.

Facts (bitrix-tools/b24-rest-docs, api-reference/crm/timeline/activities/activity-base/):
- ``crm.activity.list`` filters on any field with the usual prefixes and returns
  ``COMMUNICATIONS`` and ``FILES`` only when ``select`` names them (crm-activity-list.md);
  ``BINDINGS`` is read-only (crm-activity-fields.md): the box builds it from the owner and the
  communications' entities on add; further bindings go through ``crm.activity.binding.add``
  (../binding/crm-activity-binding-add.md).
- ``crm.activity.add`` takes ``ORIGINATOR_ID``/``ORIGIN_ID`` ("link to an external source"), which
  is how our copies are found again; ``PROVIDER_ID`` and ``CREATED`` are not writable, so a cloud
  telephony call (``VOXIMPLANT_CALL``) becomes a plain call on the box with its duration
  (``START_TIME``/``END_TIME``), ``DIRECTION`` and phone (``COMMUNICATIONS``).
- An outgoing e-mail added with ``COMPLETED=Y`` is *sent* by the box (crm-activity-add.md, "Варианты
  использования значений полей": to keep a mail from going out add it with ``DIRECTION=2``,
  ``COMPLETED=N`` and complete it with an update). Customers must not get a second copy, so a
  completed outgoing e-mail is added as not completed and completed by the next round's update.
- A call's recording is a file (``FILES``: ``{id, url}`` pointing at the cloud's
  ``crm_show_file.php``, crm-activity-list.md "Получение вложений"). The box cannot take a foreign
  file by reference, and the cloud serves it only to a signed-in user, so the link is kept: one
  line per file is added to the box activity's description (the ``auth`` parameter removed).
- Only calls, meetings and e-mails can be added with ``crm.activity.add`` (tasks are made through
  ``tasks.task.*``, provider activities through ``crm.activity.configurable.add``); others, and
  activities of owners outside the four entities, are listed as not moved.
"""

from __future__ import annotations

import datetime as dt
import logging
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .importer import _Context, _send, _settle, _unwritten
from .lists import iter_rows, php_query
from .model import ORIGINATOR, chunks, parse_date
from .timeline_base import OWNER_ENTITIES, OWNER_TYPE_IDS, Owners, created_by, run_rounds

log = logging.getLogger("cloud2box.bitrix24")

SELECT = ["*", "COMMUNICATIONS", "BINDINGS", "FILES"]
MOVABLE_TYPES = {"1": "meeting", "2": "call", "4": "email"}  # crm_enum_activitytype (crm/data-types.md)
CALL, EMAIL, OUTGOING = "2", "4", "2"
COPIED = ("TYPE_ID", "SUBJECT", "DESCRIPTION", "DESCRIPTION_TYPE", "DIRECTION", "START_TIME", "END_TIME",
          "COMPLETED", "PRIORITY", "LOCATION")
# compared per record (the reconciliation and the importer's "already there" test)
COMPARED = ("TYPE_ID", "SUBJECT", "DIRECTION", "START_TIME", "END_TIME", "COMPLETED", "DESCRIPTION", "OWNER",
            "COMMUNICATIONS", "RESPONSIBLE_ID")


def _norm(v) -> str:
    return "" if v in (None, "", "0", 0) else str(v).strip()


def _utc(v) -> str:
    d = parse_date(v)
    return d.astimezone(dt.UTC).isoformat() if d else ""


def view(row: dict) -> dict:
    """The compared fields of an activity, in its own portal's terms."""
    return {"TYPE_ID": _norm(row.get("TYPE_ID")), "SUBJECT": str(row.get("SUBJECT") or "").strip(),
            "DIRECTION": _norm(row.get("DIRECTION")), "START_TIME": _utc(row.get("START_TIME")),
            "END_TIME": _utc(row.get("END_TIME")), "COMPLETED": str(row.get("COMPLETED") or "N"),
            "DESCRIPTION": str(row.get("DESCRIPTION") or "").strip(),
            "OWNER": f"{_norm(row.get('OWNER_TYPE_ID'))}:{_norm(row.get('OWNER_ID'))}",
            "COMMUNICATIONS": sorted((str(c.get("TYPE") or ""), str(c.get("VALUE") or "").strip())
                                     for c in row.get("COMMUNICATIONS") or [] if isinstance(c, dict)),
            "RESPONSIBLE_ID": _norm(row.get("RESPONSIBLE_ID"))}


def movable(row: dict) -> str | None:
    """Why a cloud activity cannot be moved with crm.activity.add, or None."""
    if _norm(row.get("TYPE_ID")) not in MOVABLE_TYPES:
        return f"type {row.get('TYPE_ID')} ({row.get('PROVIDER_ID') or 'no provider'}) is not a call, meeting or e-mail"
    if _norm(row.get("OWNER_TYPE_ID")) not in {str(t) for t in OWNER_ENTITIES}:
        return f"owner type {row.get('OWNER_TYPE_ID')} is not a lead, deal, contact or company"
    return None


def _without_auth(url: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() != "auth"]
    return urlunsplit(parts._replace(query=urlencode(query)))


def description(row: dict) -> str:
    """The cloud's description plus one line per file of the activity (its link; see the module doc)."""
    text = str(row.get("DESCRIPTION") or "").strip()
    label = "Call record in the cloud" if _norm(row.get("TYPE_ID")) == CALL else "File in the cloud"
    links = [f"{label}: {_without_auth(str(f['url']))}" for f in row.get("FILES") or []
             if isinstance(f, dict) and f.get("url")]
    return "\n".join([text, *links]).strip() if links else text


def box_fields(ctx: _Context, owners: Owners, cloud_id: str, row: dict, *,
               backup: bool = False) -> tuple[dict | None, list[str]]:
    """What the box activity must hold (its final state), and what could not be resolved.
    ``backup``: an activity of the backup, whose files the box restored with it (no link lines)."""
    unresolved = []
    owner_entity = OWNER_ENTITIES[int(row["OWNER_TYPE_ID"])]
    owner = owners.box_id(owner_entity, row.get("OWNER_ID"))
    if owner is None:
        return None, [f"activity {cloud_id}: owner {owner_entity} {row.get('OWNER_ID')} is not on the box"]
    out = {f: row.get(f) for f in COPIED if row.get(f) not in (None, "")}
    out["DESCRIPTION"] = str(row.get("DESCRIPTION") or "").strip() if backup else description(row)
    out["OWNER_TYPE_ID"], out["OWNER_ID"] = int(row["OWNER_TYPE_ID"]), int(owner)
    out["RESPONSIBLE_ID"] = ctx.box_user(row.get("RESPONSIBLE_ID")) or ctx.fallback
    if row.get("AUTHOR_ID"):
        out["AUTHOR_ID"] = ctx.box_user(row.get("AUTHOR_ID")) or ctx.fallback
    comms = []
    for c in row.get("COMMUNICATIONS") or []:
        entity = OWNER_ENTITIES.get(int(c.get("ENTITY_TYPE_ID") or 0))
        target = owners.box_id(entity, c.get("ENTITY_ID")) if entity else None
        if entity and target is None:
            unresolved.append(f"activity {cloud_id}: communication's {entity} {c.get('ENTITY_ID')} is not on the box")
        item = {"VALUE": c.get("VALUE"), "TYPE": c.get("TYPE")}
        if target is not None:  # else the box binds the value to the owner (the vendor's add does)
            item.update(ENTITY_ID=int(target), ENTITY_TYPE_ID=int(c["ENTITY_TYPE_ID"]))
        comms.append(item)
    out["COMMUNICATIONS"] = comms
    out["ORIGINATOR_ID"], out["ORIGIN_ID"] = ORIGINATOR, cloud_id
    return out, unresolved


def wanted_bindings(owners: Owners, row: dict) -> set[tuple[int, str]]:
    """The cloud activity's bindings in box terms (those the box has a record for)."""
    out = set()
    for b in row.get("BINDINGS") or []:
        entity = OWNER_ENTITIES.get(int(b.get("OWNER_TYPE_ID") or 0))
        target = owners.box_id(entity, b.get("OWNER_ID")) if entity else None
        if target is not None:
            out.add((int(b["OWNER_TYPE_ID"]), str(target)))
    return out


def bindings_of(row: dict) -> set[tuple[int, str]]:
    return {(int(b.get("OWNER_TYPE_ID") or 0), str(b.get("OWNER_ID"))) for b in row.get("BINDINGS") or []}


# Up to this many activities are looked up on the box by their cloud IDs (a few requests: a pre-sync
# pass, the freeze); more are found with one listing of all of ours (a catch-up moving weeks).
BY_ID_LIMIT = 1000


def ours_on_box(box, cloud_ids=None, *, after_id: int = 0) -> dict[str, list[str]]:
    """Box activities carrying our ORIGINATOR_ID: cloud ID (ORIGIN_ID) → box IDs, ascending.
    ``cloud_ids``: only these (in groups of 100), else every one of ours with a box ID above ``after_id``."""
    found: dict[str, list[str]] = {}
    groups = [None] if cloud_ids is None else list(chunks(sorted({str(c) for c in cloud_ids}, key=int), 100))
    for group in groups:
        flt = {"ORIGINATOR_ID": ORIGINATOR, **({"@ORIGIN_ID": group} if group else {})}
        for row in iter_rows(box, "crm.activity.list", filter=flt, select=["ID", "ORIGIN_ID"], commands_per_batch=5,
                             after_id=after_id if group is None else 0):
            found.setdefault(str(row.get("ORIGIN_ID")), []).append(str(row["ID"]))
    return {c: sorted(ids, key=int) for c, ids in found.items()}


def fetch(box, box_ids) -> dict[str, dict]:
    """Box activities by ID, with communications and bindings. Complete or raising."""
    out: dict[str, dict] = {}
    for group in chunks(sorted({str(b) for b in box_ids}, key=int), 50 * 50):
        cmd = {f"g{i}": "crm.activity.list?" + php_query({"filter": {"@ID": ids}, "select": SELECT, "start": -1})
               for i, ids in enumerate(chunks(group, 50))}
        for answer in box.batch_each(cmd).values():
            for row in answer["result"] or []:
                out[str(row["ID"])] = row
    return out


def _locate(ctx: _Context, kind: dict[str, str]) -> dict[str, str]:
    """cloud ID → box ID of its twin as the box holds it now. Ours are found by ORIGIN_ID (the first
    twin; the map is completed or re-pointed from it: a crash between a box write and the map write,
    or a twin deleted on the box and written again); an activity of the backup keeps its ID."""
    rep = ctx.report.entities["activity"]
    found = ours_on_box(ctx.box, list(kind) if len(kind) <= BY_ID_LIMIT else None)
    known = ctx.idmap.get("activity")
    fix = [(c, ids[0]) for c, ids in found.items() if c in kind and known.get(c) != ids[0]]
    if fix:
        rep.map_rebuilt += ctx.idmap.repoint("activity", fix)
    rep.duplicates_in_box = sorted((c for c, ids in found.items() if len(ids) > 1 and c in kind), key=int)
    out = {c: ids[0] for c, ids in found.items() if c in kind}
    for cid, k in kind.items():
        if cid not in out and k == "modified":
            out[cid] = known.get(cid) or cid
    return out


def import_activities(ctx: _Context, owners: Owners, rows: dict[str, dict], kind: dict[str, str]) -> None:
    """Write the movable activities of ``rows`` (cloud ID → row) into the box (see the module doc)."""
    rep = ctx.report.entities["activity"]
    todo = {c: r for c, r in rows.items() if movable(r) is None}

    def step() -> tuple[str, ...]:
        located = _locate(ctx, {c: kind[c] for c in todo})
        twins = fetch(ctx.box, located.values())
        mapped = ctx.idmap.get("activity")
        creates, updates, binds, unresolved = [], [], [], set()
        rep.unchanged = 0
        for cid in sorted(todo, key=int):
            if cid in ctx.failed.get("activity", ()):
                continue
            want, problems = box_fields(ctx, owners, cid, todo[cid], backup=kind[cid] == "modified")
            unresolved.update(problems)
            if want is None:
                continue
            bid = located.get(cid)
            current = twins.get(bid) if bid else None
            if current is None:
                creates.append((cid, want))
                continue
            if mapped.get(cid) != bid:
                ctx.idmap.repoint("activity", [(cid, bid)])  # a backup activity: same ID on the box
            if view(current) != view(want):
                updates.append((cid, bid, want, current))
            missing = wanted_bindings(owners, todo[cid]) - bindings_of(current)
            binds.extend((cid, bid, b) for b in sorted(missing))
            if view(current) == view(want) and not missing:
                rep.unchanged += 1
        rep.unresolved = sorted(unresolved)
        _create(ctx, creates)
        _update(ctx, updates)
        _bind(ctx, binds)
        return tuple([f"create:{c}" for c, _ in creates] + [f"update:{c}" for c, *_ in updates]
                     + [f"bind:{c}" for c, *_ in binds])

    run_rounds(ctx, "activity", step)


def _create(ctx: _Context, plans: list[tuple[str, dict]]) -> None:
    for group in chunks(plans, max(1, min(50, ctx.pace.records(1)))):
        cmd = {}
        for i, (_cid, fields) in enumerate(group):
            f = dict(fields)
            if _norm(f.get("TYPE_ID")) == EMAIL and _norm(f.get("DIRECTION")) == OUTGOING:
                f["COMPLETED"] = "N"  # never sent again: completed by the next round's update
                f["SETTINGS"] = {"DISABLE_SENDING_MESSAGE_COPY": "Y"}
            cmd[f"a{i}"] = "crm.activity.add?" + php_query({"fields": f})
        in_flight = [cid for cid, _ in group]

        def look(ids=in_flight):
            found = ours_on_box(ctx.box, ids)
            return all(c in found for c in ids), tuple(sorted((c, tuple(v)) for c, v in found.items()))

        res = _send(ctx, "activity", cmd, len(group), f"a write of {len(group)} new activities", look,
                    lambda state: None)  # what it wrote is found by ORIGIN_ID in the next round
        _ok, unsure = created_by(ctx, "activity", cmd, res, [(f"a{i}", cid) for i, (cid, _) in enumerate(group)])
        if unsure:
            _settle(ctx, f"{len(unsure)} new activities", lambda ids=unsure: look(ids))


def _update(ctx: _Context, plans: list[tuple[str, str, dict, dict]]) -> None:
    rep = ctx.report.entities["activity"]
    for group in chunks(plans, 50):
        cmd = {}
        for i, (_cid, bid, want, current) in enumerate(group):
            # crm-activity-update.md marks owner, type and communications as required: all are sent
            # (communications replace the box's with equal values when unchanged)
            f = {k: v for k, v in want.items() if k not in ("ORIGINATOR_ID", "ORIGIN_ID", "AUTHOR_ID")}
            cmd[f"u{i}"] = "crm.activity.update?" + php_query({"id": bid, "fields": f})
        bids = [bid for _, bid, _, _ in group]

        def look(plans=group, ids=bids):
            rows = fetch(ctx.box, ids)
            done = all(b in rows and view(rows[b]) == view(w) for _, b, w, _ in plans)
            return done, tuple(sorted((b, repr(view(rows.get(b) or {}))) for b in ids))

        res = _send(ctx, "activity", cmd, len(group), f"an update of {len(group)} activities", look, lambda s: None)
        for i, (cid, bid, _, _) in enumerate(group):
            key = f"u{i}"
            if key in res["result"]:
                rep.updated += 1
            elif _unwritten(ctx, cmd, res, key) is None:
                rep.failures.append(f"activity {cid} → box {bid}: update failed: {res['result_error'].get(key)}")
                ctx.failed.setdefault("activity", set()).add(cid)


def _bind(ctx: _Context, plans: list[tuple[str, str, tuple[int, str]]]) -> None:
    """Bindings the box did not make from the owner and the communications. Adding one that exists
    changes nothing that matters, so a lost answer is simply read again in the next round."""
    rep = ctx.report.entities["activity"]
    for group in chunks(plans, 50):
        cmd = {f"b{i}": "crm.activity.binding.add?" + php_query(
            {"activityId": bid, "entityTypeId": etype, "entityId": eid}) for i, (_c, bid, (etype, eid)) in enumerate(group)}
        res = _send(ctx, "activity", cmd, len(group), f"{len(group)} activity binding(s)",
                    lambda: (False, None), lambda s: None)
        for i, (cid, bid, binding) in enumerate(group):
            key = f"b{i}"
            if key not in res["result"] and _unwritten(ctx, cmd, res, key) is None:
                rep.failures.append(f"activity {cid} → box {bid}: binding {binding} refused: "
                                    f"{res['result_error'].get(key)}")
                ctx.failed.setdefault("activity", set()).add(cid)


def owners_of(rows: dict[str, dict]) -> dict[str, set[str]]:
    """Cloud records the activities are bound to, per entity (whose comments are looked at too)."""
    out: dict[str, set[str]] = {e: set() for e in OWNER_TYPE_IDS}
    for row in rows.values():
        for b in (row.get("BINDINGS") or []) + [{"OWNER_TYPE_ID": row.get("OWNER_TYPE_ID"),
                                                 "OWNER_ID": row.get("OWNER_ID")}]:
            entity = OWNER_ENTITIES.get(int(b.get("OWNER_TYPE_ID") or 0))
            if entity and _norm(b.get("OWNER_ID")):
                out[entity].add(str(b["OWNER_ID"]))
    return out

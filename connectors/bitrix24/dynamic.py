"""Smart-process items: what the cloud's smart processes (``crm.type.list``) made or changed after the backup.

Each smart process is a CRM type with its own ``entityTypeId`` (bitrix-tools/b24-rest-docs
api-reference/crm/universal/user-defined-object-types/crm-type-list.md); its items are read and
written with ``crm.item.*`` by that ID, with crm.item's camelCase names (object-fields.md, "Смарт-процесс")
and custom fields under their original ``UF_CRM_N_…`` names (``useOriginalUfNames=Y``). The restored
box has every type the backup had, with the same ``entityTypeId`` and item IDs; items made in the
cloud after the backup get new IDs on the box, mapped in the IdMap under ``dynamic:<entityTypeId>``.

Items have no ORIGINATOR_ID/ORIGIN_ID (object-fields.md lists none for smart processes), so an item
is found on the box by its ``xmlId`` (external code): the cloud's own when it has one (an external
system's key), else ``cloud2box:<entityTypeId>:<cloud ID>``, which we write. A write whose answer was
lost is never sent again before the box has ended it: the importer waits until every item it
carried is found by ``xmlId`` or the box has shown no change for as long as a request may take,
then plans again from the box (as :mod:`.importer` does for the four entities).

New items go in with ``crm.item.batchImport`` (creation times and authors kept, no robots:
api-reference/crm/universal/import/index.md) in ascending creation time; an item whose time the box
refuses (it holds a newer one) goes in with ``crm.item.add`` and is listed (``times_not_kept``).
A type made in the cloud after the backup is not on the box: its items are listed as failures, with
the fix (make the type on the box).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field

from connectors.errors import FatalError, TransientError

from .lists import iter_rows, php_query
from .model import UserMap, chunks, parse_date
from .rest import AmbiguousWriteError, Bitrix24Client

log = logging.getLogger("cloud2box.bitrix24")

MARKER = "cloud2box"
MAX_ROUNDS = 20
# Copied as they are; compared by the reconciliation.
DATA = ("title", "stageId", "categoryId", "begindate", "closedate", "opportunity", "isManualOpportunity",
        "taxValue", "currencyId", "sourceId", "sourceDescription", "opened", "xmlId")
USERS = ("assignedById",)
LINKS = {"companyId": "company", "contactId": "contact", "mycompanyId": "company"}
HISTORY = ("createdTime", "updatedTime", "createdBy", "updatedBy")
_CLASSIC = {1: "lead", 2: "deal", 3: "contact", 4: "company"}


def entity_key(entity_type_id: int) -> str:
    """The IdMap's and the report's name of a smart process."""
    return f"dynamic:{entity_type_id}"


def _items(body: dict) -> list[dict]:
    result = body.get("result") or {}
    return (result.get("items") if isinstance(result, dict) else None) or []


def list_types(client: Bitrix24Client) -> dict[int, dict]:
    """entityTypeId → type, every smart process of the portal (pages of 50, bounded)."""
    out: dict[int, dict] = {}
    start = 0
    for _ in range(1000):
        body = client.call("crm.type.list", {"start": start})
        result = body.get("result") or {}
        for t in (result.get("types") if isinstance(result, dict) else None) or []:
            out[int(t["entityTypeId"])] = t
        if "next" not in body:
            return out
        start = int(body["next"])
    return out


def _list(client: Bitrix24Client, etid: int, *, filter: dict | None = None, select=None, after_id: int = 0):
    return iter_rows(client, "crm.item.list", filter=filter, select=select or ["*"], after_id=after_id,
                     extra={"entityTypeId": etid, "useOriginalUfNames": "Y"})


def dynamic_marks(box: Bitrix24Client, cutoff: dt.datetime) -> dict[str, dict[str, int]]:
    """Per smart process of the restored box: ``max_id``, its highest item created at or before the
    cutoff, and ``count``, its items up to it. Read before anything is imported (see delta.backup_marks)."""
    out = {}
    for etid in list_types(box):
        body = box.call("crm.item.list", {"entityTypeId": etid, "order": {"id": "DESC"}, "select": ["id"],
                                          "filter": {"<=createdTime": cutoff.isoformat(timespec="seconds")},
                                          "start": -1})
        rows = _items(body)
        max_id = int(rows[0]["id"]) if rows else 0
        count = sum(1 for _ in _list(box, etid, filter={"<=id": max_id}, select=["id"])) if max_id else 0
        out[entity_key(etid)] = {"max_id": max_id, "count": count}
    return out


@dataclass
class TypeDelta:
    entity_type_id: int
    title: str
    backup_max_id: int
    rows: dict[str, dict] = field(default_factory=dict)  # cloud ID → item
    kind: dict[str, str] = field(default_factory=dict)  # created | modified


@dataclass
class DynamicDelta:
    cutoff: dt.datetime
    types: dict[int, TypeDelta] = field(default_factory=dict)

    @property
    def records(self) -> int:
        return sum(len(t.rows) for t in self.types.values())

    def summary(self) -> dict:
        return {entity_key(e): {"title": t.title, "created": sum(k == "created" for k in t.kind.values()),
                                "modified": sum(k == "modified" for k in t.kind.values())}
                for e, t in self.types.items()}


def export_dynamic(cloud: Bitrix24Client, cutoff: dt.datetime, max_ids: dict[str, int], *,
                   changed_only: bool = False) -> DynamicDelta:
    """Items of every smart process changed after the cutoff (``>updatedTime``) or created after the
    backup (``id`` above its mark); ``max_ids``: :func:`dynamic_marks`' ``max_id`` per type (a type
    without a mark was made after the backup: all of its items are new). ``changed_only``: a sweep's
    pass, the changes since ``cutoff`` alone."""
    out = DynamicDelta(cutoff)
    for etid, t in list_types(cloud).items():
        mark = int(max_ids.get(entity_key(etid), 0))
        d = out.types[etid] = TypeDelta(etid, str(t.get("title") or etid), mark)
        for rows in (_list(cloud, etid, filter={">updatedTime": cutoff.isoformat(timespec="seconds")}),
                     _list(cloud, etid, after_id=mark) if not changed_only else ()):
            for item in rows:
                d.rows[str(item["id"])] = item
        for cid, item in d.rows.items():
            created = parse_date(item.get("createdTime"))
            d.kind[cid] = "created" if int(cid) > mark or (created and created > cutoff) else "modified"
    return out


def key_of(etid: int, cloud_id: str, item: dict) -> str:
    """The xmlId the box's twin carries (see the module doc)."""
    return str(item.get("xmlId") or "") or f"{MARKER}:{etid}:{cloud_id}"


@dataclass
class TypeImport:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    map_rebuilt: int = 0
    times_not_kept: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


class _Writer:
    def __init__(self, box: Bitrix24Client, idmap, delta: DynamicDelta, users: UserMap, *, quiet_s: float,
                 sleep=time.sleep) -> None:
        self.box, self.idmap, self.delta, self.users = box, idmap, delta, users
        self.quiet_s, self.sleep = quiet_s, sleep
        self.no_import = False  # the box has no crm.item.batchImport: items go in one by one with crm.item.add
        self.unsure = False  # the last write's answer was lost: what the next round finds, it created
        self.maps = {e: idmap.get(e) for e in _CLASSIC.values()}

    def link(self, target: str, value) -> int | str:
        v = str(value or "")
        if not v or v == "0":
            return 0
        return int(self.maps.get(target, {}).get(v, v))

    def fields(self, etid: int, cloud_id: str, item: dict, *, create: bool) -> dict:
        out = {f: item[f] for f in DATA if f in item}
        if self.delta.types[etid].kind.get(cloud_id) == "created":
            out["xmlId"] = key_of(etid, cloud_id, item)  # how its twin is found (items of the backup: by ID)
        for f in USERS:
            if item.get(f):
                out[f] = int(self.users.get(str(item[f])))
        for f, target in LINKS.items():
            if f in item:
                out[f] = self.link(target, item[f])
        if "contactIds" in item:
            out["contactIds"] = [self.link("contact", c) for c in item.get("contactIds") or []]
        if "observers" in item:
            out["observers"] = [int(self.users.get(str(u))) for u in item.get("observers") or []]
        for f, v in item.items():
            if f.startswith("UF_CRM_"):
                out[f] = v
            elif f.startswith("parentId") and f[8:].isdigit():
                parent = int(f[8:])
                target = _CLASSIC.get(parent) or entity_key(parent)
                if target not in self.maps:
                    self.maps[target] = self.idmap.get(target)
                out[f] = self.link(target, v)
        if create:
            for f in HISTORY:
                if item.get(f):
                    out[f] = int(self.users.get(str(item[f]))) if f.endswith("By") else item[f]
        return out

    def on_box(self, etid: int, keys: list[str]) -> dict[str, list[dict]]:
        found: dict[str, list[dict]] = {}
        for group in chunks(sorted(set(keys)), 50):
            for item in _list(self.box, etid, filter={"@xmlId": group}):
                found.setdefault(str(item.get("xmlId")), []).append(item)
        return found

    def settle(self, etid: int, keys: list[str]) -> None:
        """Wait until a write whose answer was lost has ended on the box (every item found, or no change
        for ``quiet_s``); bounded by 10 × that."""
        t0 = time.monotonic()
        last, since = None, t0
        while time.monotonic() - t0 < 10 * self.quiet_s:
            found = self.on_box(etid, keys)
            if all(k in found for k in keys):
                return
            state = sorted(found)
            if state != last:
                last, since = state, time.monotonic()
            elif time.monotonic() - since >= self.quiet_s:
                return
            self.sleep(min(1.0, self.quiet_s / 4))
        raise TransientError(f"box: items of smart process {etid} were still being written after the answer "
                             "was lost", fix="the box is overloaded: wait until it is idle, then run the step again")


def import_dynamic(box: Bitrix24Client, delta: DynamicDelta, idmap, *, user_map: dict[str, str],
                   fallback_user_id: int = 1, quiet_s: float | None = None, sleep=time.sleep) -> dict[str, TypeImport]:
    """Write every smart process's delta into the box; safe to run again (see the module doc)."""
    w = _Writer(box, idmap, delta, UserMap(user_map, str(fallback_user_id)),
                quiet_s=quiet_s if quiet_s is not None else max(1.0, box.timeout), sleep=sleep)
    box_types = list_types(box) if delta.records else {}
    out: dict[str, TypeImport] = {}
    for etid, d in delta.types.items():
        rep = out[entity_key(etid)] = TypeImport()
        if not d.rows:
            continue
        if etid not in box_types:
            rep.failures.extend(f"{entity_key(etid)} {cid}: the smart process '{d.title}' is not on the box "
                                "(made after the backup): create it on the box with the same settings, then run "
                                "the step again" for cid in d.rows)
            continue
        for _ in range(MAX_ROUNDS):
            if _round(w, etid, d, rep):
                break
        else:
            raise TransientError(f"box: smart process {etid}: writes kept ending without a sure outcome",
                                 fix="check the box's health, then run the step again")
    return out


def _round(w: _Writer, etid: int, d: TypeDelta, rep: TypeImport) -> bool:
    """Plan from the box and write; False when something is not surely written (plan again)."""
    key = entity_key(etid)
    keys = {cid: key_of(etid, cid, item) for cid, item in d.rows.items() if d.kind[cid] == "created"}
    found = w.on_box(etid, list(keys.values()))
    new = w.idmap.put(key, [(cid, str(found[k][0]["id"])) for cid, k in keys.items() if k in found])
    if w.unsure:  # what a write whose answer was lost created
        rep.created += new
    else:  # an earlier run stopped between the box write and the map write
        rep.map_rebuilt += new
    w.unsure = False
    mapped = w.idmap.get(key)
    backup_items = _by_id(w.box, etid, [cid for cid in d.rows if d.kind[cid] == "modified"])
    creates, updates = [], []
    rep.unchanged = 0
    rep.failures.clear()
    for cid in sorted(d.rows, key=lambda c: (parse_date(d.rows[c].get("createdTime")) or w.delta.cutoff, int(c))):
        if d.kind[cid] == "modified":
            bid, twin = cid, backup_items.get(cid)
        else:
            bid = mapped.get(cid)
            twin = next((x for x in found.get(keys[cid], []) if str(x["id"]) == bid), None)
        if twin is None:
            if d.kind[cid] == "modified":
                rep.failures.append(f"{key} {cid}: an item of the backup is not on the box (deleted there?)")
                continue
            creates.append((cid, w.fields(etid, cid, d.rows[cid], create=True)))
            continue
        want = w.fields(etid, cid, d.rows[cid], create=False)
        if differences(want, twin):
            updates.append((cid, bid, want))
        else:
            rep.unchanged += 1
    try:
        complete = _create(w, etid, creates, rep)
        _update(w, etid, updates, rep)
    except AmbiguousWriteError as exc:
        log.warning("smart process %s: %s; waiting until the box has ended the write, then re-reading it", etid, exc)
        w.settle(etid, [keys[c] for c, _ in creates])
        w.unsure = True
        return False
    return complete


def _by_id(box: Bitrix24Client, etid: int, ids: list[str]) -> dict[str, dict]:
    out = {}
    for group in chunks(sorted(ids, key=int), 50):
        for item in _list(box, etid, filter={"@id": group}):
            out[str(item["id"])] = item
    return out


def differences(want: dict, twin: dict) -> list[str]:
    """The fields of ``want`` (as we would write them) that the box's item does not hold."""
    a, b = comparable(want), comparable(twin)
    return sorted(k for k in a if a[k] != b.get(k, ""))


def _create(w: _Writer, etid: int, plans: list[tuple[str, dict]], rep: TypeImport) -> bool:
    """batchImport in ascending creation time; False when a command did not run (plan again)."""
    key = entity_key(etid)
    if w.no_import:
        for cid, f in plans:
            _add_alone(w, etid, cid, f, rep)
        return True
    for group in chunks(plans, 20 * 50):
        parts = list(chunks(group, 20))
        cmd = {f"c{i}": "crm.item.batchImport?" + php_query({"entityTypeId": etid, "useOriginalUfNames": "Y",
                                                             "data": [f for _, f in part]})
               for i, part in enumerate(parts)}
        res = w.box.batch(cmd, halt=True, idempotent=False)
        done, refused = [], []
        complete = True
        for i, part in enumerate(parts):
            if f"c{i}" not in res["result"]:
                err = w.box.command_error(cmd, res, f"c{i}") if f"c{i}" in res["result_error"] else None
                code = (res["result_error"].get(f"c{i}") or {}).get("error") if err is not None else None
                if code == "ERROR_METHOD_NOT_FOUND":  # an older box: no crm.item.batchImport
                    w.no_import = True
                    refused.extend(item for rest in parts[i:] for item in rest)
                elif err is not None and not isinstance(err, TransientError):
                    rep.failures.extend(f"{key} {cid}: create failed: {err}" for cid, _ in part)
                    continue
                else:
                    complete = False  # refused by a limit or not run (halt): nothing past it, plan again
                break
            answers = (res["result"][f"c{i}"] or {}).get("items") or []
            for n, (cid, f) in enumerate(part):
                ans = answers[n] if n < len(answers) else {}
                new_id = (ans.get("item") or {}).get("id") if isinstance(ans, dict) else None
                (done.append((cid, str(new_id))) if new_id else refused.append((cid, f)))
        w.idmap.put(key, done)
        rep.created += len(done)
        for cid, f in refused:  # refused inside the import (its creation time, mostly): add alone, box time
            _add_alone(w, etid, cid, f, rep)
        if not complete:
            return False
    return True


def _add_alone(w: _Writer, etid: int, cid: str, fields: dict, rep: TypeImport) -> None:
    key = entity_key(etid)
    plain = {k: v for k, v in fields.items() if k not in HISTORY}
    try:
        body = w.box.call("crm.item.add", {"entityTypeId": etid, "fields": plain, "useOriginalUfNames": "Y"},
                          idempotent=False)
    except AmbiguousWriteError:
        raise
    except (TransientError, FatalError) as exc:  # refused for good: reported, the others go on
        rep.failures.append(f"{key} {cid}: create failed: {exc}")
        return
    item = (body.get("result") or {}).get("item") or {}
    w.idmap.put(key, [(cid, str(item.get("id")))])
    rep.created += 1
    rep.times_not_kept.append(cid)


def _update(w: _Writer, etid: int, plans: list[tuple[str, str, dict]], rep: TypeImport) -> None:
    key = entity_key(etid)
    for group in chunks(plans, 50):
        cmd = {f"u{i}": "crm.item.update?" + php_query({"entityTypeId": etid, "id": bid, "fields": f,
                                                        "useOriginalUfNames": "Y"})
               for i, (_, bid, f) in enumerate(group)}
        res = w.box.batch(cmd, idempotent=False)
        for i, (cid, bid, _) in enumerate(group):
            if f"u{i}" in res["result"]:
                rep.updated += 1
                if w.delta.types[etid].kind[cid] == "created":
                    w.idmap.put(key, [(cid, bid)])
            else:
                rep.failures.append(f"{key} {cid} → box {bid}: update failed: {res['result_error'].get(f'u{i}')}")


def comparable(item: dict) -> dict:
    """What must be equal between an item as we would write it and its box twin."""
    out = {}
    for f, v in item.items():
        if f in HISTORY or f in ("id", "entityTypeId") or f.startswith(("movedBy", "movedTime", "previousStageId")):
            continue
        if f in DATA or f in USERS or f in LINKS or f.startswith(("UF_CRM_", "parentId")) or f in ("contactIds",
                                                                                                  "observers"):
            if isinstance(v, list):
                out[f] = sorted(str(x) for x in v)
            else:
                out[f] = "" if v in (None, 0, "0", False) else str(v)
    return out


@dataclass
class TypeReconciliation:
    cloud_delta: int = 0
    matched: int = 0
    missing: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    mismatches: list[dict] = field(default_factory=list)
    not_moved: list[str] = field(default_factory=list)  # kept empty: the export lists every item above the mark

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicates or self.mismatches)


@dataclass
class DynamicReconciliation:
    entities: dict[str, TypeReconciliation]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.entities.values())

    @property
    def mismatches(self) -> int:
        return sum(len(r.missing) + len(r.duplicates) + len(r.mismatches) for r in self.entities.values())

    def evidence(self) -> dict:
        return {k: {"cloud_delta": r.cloud_delta, "matched": r.matched, "missing": r.missing[:50],
                    "duplicates": r.duplicates[:50], "mismatches": r.mismatches[:50], "ok": r.ok}
                for k, r in self.entities.items()}


def reconcile_dynamic(box: Bitrix24Client, delta: DynamicDelta, idmap, *, user_map: dict[str, str],
                      fallback_user_id: int = 1) -> DynamicReconciliation:
    """Per smart process: every delta item has exactly one box twin (by xmlId), equal in box terms."""
    w = _Writer(box, idmap, delta, UserMap(user_map, str(fallback_user_id)), quiet_s=0)
    box_types = list_types(box) if delta.records else {}
    out = {}
    for etid, d in delta.types.items():
        r = out[entity_key(etid)] = TypeReconciliation(cloud_delta=len(d.rows))
        if not d.rows:
            continue
        if etid not in box_types:  # made after the backup, not on the box (the import says so)
            r.missing.extend(d.rows)
            continue
        keys = {cid: key_of(etid, cid, item) for cid, item in d.rows.items() if d.kind[cid] == "created"}
        found = w.on_box(etid, list(keys.values()))
        backup_items = _by_id(box, etid, [cid for cid in d.rows if d.kind[cid] == "modified"])
        for cid, item in d.rows.items():
            twins = found.get(keys[cid], []) if cid in keys else [x for x in [backup_items.get(cid)] if x]
            if not twins:
                r.missing.append(cid)
                continue
            if len(twins) > 1:
                r.duplicates.append(cid)
            bad = differences(w.fields(etid, cid, item, create=False), twins[0])
            if bad:
                r.mismatches.append({"cloud_id": cid, "box_id": str(twins[0]["id"]), "fields": bad})
            else:
                r.matched += 1
    return DynamicReconciliation(out)

"""The rest of a sales team's day after the backup: activities (calls, e-mails, meetings),
timeline comments, new products and deal product rows — exported from the cloud, imported into
the box after the four entities, and reconciled per record.

The public API (the flow calls these in this order, after the four entities were imported):

- :func:`timeline_marks` ``(box, cutoff)`` — the backup's highest activity and product IDs and
  their counts, read from the box before anything is imported; journaled once by the caller and
  passed back in on every re-run (as :func:`connectors.bitrix24.delta.backup_marks`).
- :func:`export_timeline` ``(cloud, box, cutoff, *, marks, owners, entity_max_ids, all_owners)`` →
  :class:`TimelineDelta`.
- :func:`import_timeline` ``(box, tdelta, idmap, *, user_map, fallback_user_id)`` →
  :class:`~connectors.bitrix24.timeline_base.TimelineImport` (``summary()``).
- :func:`reconcile_timeline` ``(box, tdelta, idmap, *, user_map, fallback_user_id, cloud=None)`` →
  :class:`TimelineReconciliation` (``ok``, ``evidence()``, shaped like
  :class:`connectors.bitrix24.reconcile.Reconciliation`'s).
- :func:`write_csvs` ``(tdelta, out_dir)`` — the customer's review files.

Idempotence and lost answers follow the importer's rules (its module doc): activities carry
``ORIGINATOR_ID``/``ORIGIN_ID``, products an ``XML_ID``, comments are recognised by owner, text and
author; every write whose answer was lost is settled on the box before anything is planned again.
The vendor facts behind each part are in :mod:`.activities`, :mod:`.comments` and :mod:`.products`.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import activities as act
from . import comments as com
from . import products as prod
from .lists import iter_rows
from .model import ENTITIES, ORIGINATOR, chunks, diff, parse_date
from .reconcile import advance_marks
from .timeline_base import (
    OWNER_ENTITIES,
    Owners,
    TimelineEntityImport,
    TimelineImport,
    make_context,
)

log = logging.getLogger("cloud2box.bitrix24")

__all__ = ["TimelineDelta", "TimelineImport", "TimelineReconciliation", "export_timeline", "import_timeline",
           "reconcile_timeline", "timeline_marks", "write_csvs"]


@dataclass
class TimelineDelta:
    cutoff: dt.datetime
    marks: dict[str, dict[str, int]]
    entity_max_ids: dict[str, int] | None = None  # the four entities' backup marks (None: trust the map)
    activities: dict[str, dict] = field(default_factory=dict)  # cloud ID → row (movable ones)
    activity_kind: dict[str, str] = field(default_factory=dict)  # cloud ID → created | modified
    not_movable: dict[str, str] = field(default_factory=dict)  # cloud ID → why (see activities.movable)
    echoes: list[str] = field(default_factory=list)  # activities carrying our own marker: never exported
    activities_listed_up_to: int = 0
    comments: dict[str, dict] = field(default_factory=dict)  # cloud comment ID → row with ENTITY_TYPE/ID
    comment_owners: int = 0  # records whose comments were listed
    products: dict[str, dict] = field(default_factory=dict)  # cloud product ID → row (created after the backup)
    deal_rows: dict[str, list[dict]] = field(default_factory=dict)  # cloud deal ID → its rows (camelCase)
    seconds: float = 0.0
    requests: int = 0

    @property
    def records(self) -> int:
        return len(self.activities) + len(self.comments) + len(self.products) + len(self.deal_rows)

    def summary(self) -> dict:
        kinds = Counter(act.MOVABLE_TYPES.get(str(r.get("TYPE_ID")), "?") for r in self.activities.values())
        return {"activity": {"created": sum(1 for k in self.activity_kind.values() if k == "created"),
                             "modified": sum(1 for k in self.activity_kind.values() if k == "modified"),
                             "by_type": dict(kinds), "not_movable": dict(list(self.not_movable.items())[:50]),
                             "echoes_skipped": len(self.echoes), "backup_max_id": self.marks["activity"]["max_id"]},
                "comment": {"created": len(self.comments), "owners_listed": self.comment_owners},
                "product": {"created": len(self.products), "backup_max_id": self.marks["product"]["max_id"]},
                "productrow": {"deals": len(self.deal_rows),
                               "rows": sum(len(v) for v in self.deal_rows.values())}}


def _iso(d: dt.datetime) -> str:
    return d.isoformat(timespec="seconds")


def timeline_marks(box, cutoff: dt.datetime) -> dict[str, dict[str, int]]:
    """``{"activity": {"max_id", "count"}, "product": {...}}``: the highest ID of what the box held
    at the cutoff (activities by ``CREATED``, products by ``DATE_CREATE``) and how many it holds up
    to that ID. Valid only before anything is imported (see the module doc). Four requests."""
    body = box.call("crm.activity.list", {"order": {"ID": "DESC"}, "filter": {"<=CREATED": _iso(cutoff)},
                                          "select": ["ID"], "start": -1})
    rows = body.get("result") or []
    max_id = int(rows[0]["ID"]) if rows else 0
    return {"activity": {"max_id": max_id, "count": prod._count(box, "crm.activity.list", max_id)},
            "product": prod.product_marks(box, _iso(cutoff))}


def export_timeline(cloud, box, cutoff: dt.datetime, *, marks: dict[str, dict[str, int]] | None,
                    owners: dict[str, set[str] | list[str]], entity_max_ids: dict[str, int] | None = None,
                    all_owners: bool = False, changed_only: bool = False) -> TimelineDelta:
    """List what the cloud made after the cutoff (see the module doc).

    Args:
        marks: :func:`timeline_marks` as journaled (read from ``box`` when None: right only before
            anything was imported).
        owners: cloud IDs per entity that the main delta moved or changed; their comments are
            listed, and the deals among them give the product rows.
        entity_max_ids: the four entities' backup highest IDs (the main delta's marks), so that a
            reference to a record created after the backup that is not on the box is reported.
        all_owners: list the comments of every record of the cloud too (one command per record).
        changed_only: a sweep's pass: list only activities changed since ``cutoff`` (the pass's
            start), not also every one created since the backup by ID (which catches activities
            dated before the cutoff: step 2.11 lists those once, a sweep need not again).
    """
    if cutoff.tzinfo is None:
        raise ValueError("cutoff must be timezone-aware")
    t0, req0 = time.monotonic(), cloud.requests + box.requests
    marks = marks or timeline_marks(box, cutoff)
    out = TimelineDelta(cutoff, marks, entity_max_ids)
    _export_activities(cloud, out, by_id=not changed_only)
    who = {e: {str(i) for i in owners.get(e, ())} for e in ENTITIES}
    for entity, ids in act.owners_of(out.activities).items():
        who[entity] |= ids
    if all_owners:
        for entity, ids in com.all_record_ids(cloud).items():
            who[entity] |= ids
    out.comment_owners = sum(len(v) for v in who.values())
    out.comments = com.since(com.list_comments(cloud, who), cutoff)
    out.products = prod.list_products_since(cloud, marks["product"]["max_id"])
    out.deal_rows = prod.read_rows(cloud, {str(i) for i in owners.get("deal", ())})
    out.seconds, out.requests = time.monotonic() - t0, cloud.requests + box.requests - req0
    log.info("timeline delta: %d activities (%d not movable), %d comments, %d products, rows of %d deals",
             len(out.activities), len(out.not_movable), len(out.comments), len(out.products), len(out.deal_rows))
    return out


def _export_activities(cloud, out: TimelineDelta, *, by_id: bool = True) -> None:
    max_id = out.marks["activity"]["max_id"]
    seen: dict[str, dict] = {}
    for rows in (iter_rows(cloud, "crm.activity.list", filter={">LAST_UPDATED": _iso(out.cutoff)}, select=act.SELECT),
                 iter_rows(cloud, "crm.activity.list", select=act.SELECT, after_id=max_id) if by_id else ()):
        for row in rows:
            rid = str(row["ID"])
            if str(row.get("ORIGINATOR_ID") or "") == ORIGINATOR:
                if rid not in out.echoes:
                    out.echoes.append(rid)
                continue
            seen[rid] = row
    out.activities_listed_up_to = max([max_id, *map(int, seen), *map(int, out.echoes)])
    for rid, row in seen.items():
        why = act.movable(row)
        if why is not None:
            out.not_movable[rid] = why
            continue
        created = parse_date(row.get("CREATED"))
        out.activities[rid] = row
        out.activity_kind[rid] = "created" if int(rid) > max_id or (created and created > out.cutoff) else "modified"


def import_timeline(box, tdelta: TimelineDelta, idmap, *, user_map: dict[str, str], fallback_user_id: int = 1,
                    settle_quiet_s: float | None = None, settle_max_s: float | None = None,
                    sleep: Callable[[float], None] = time.sleep) -> TimelineImport:
    """Write the timeline delta into the box, after the four entities (their map is in ``idmap``):
    products → deal rows → activities → comments. Safe to run again at any time.

    Raises:
        TransientError: writes kept ending without a sure outcome; the next run continues.
    """
    t0, req0 = time.monotonic(), box.requests
    report = TimelineImport(entities={e: TimelineEntityImport() for e in ("product", "productrow", "activity",
                                                                            "comment")})
    ctx = make_context(box, idmap, report, user_map=user_map, fallback_user_id=fallback_user_id,
                       settle_quiet_s=settle_quiet_s, settle_max_s=settle_max_s, sleep=sleep)
    owners = Owners(idmap, tdelta.entity_max_ids)
    if tdelta.products:
        prod.import_products(ctx, tdelta.products)
    if tdelta.deal_rows:
        prod.import_rows(ctx, owners, tdelta.deal_rows, tdelta.marks["product"]["max_id"])
    if tdelta.activities:
        act.import_activities(ctx, owners, tdelta.activities, tdelta.activity_kind)
    if tdelta.comments:
        com.import_comments(ctx, owners, tdelta.comments, tdelta.cutoff)
    report.seconds, report.requests = time.monotonic() - t0, box.requests - req0
    return report


# --- reconciliation ------------------------------------------------------------------------------

@dataclass
class TimelineEntityReconciliation:
    entity: str
    cloud_delta: int = 0
    matched: int = 0
    missing: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    mismatches: list[dict] = field(default_factory=list)
    not_moved: list[str] = field(default_factory=list)  # created since the backup, not exported, not on the box
    created_after_export: int = 0
    proven: dict[str, int] | None = None  # activities: the presence marks a proof leaves (see .reconcile)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicates or self.mismatches or self.not_moved) \
            and self.matched == self.cloud_delta


@dataclass
class TimelineReconciliation:
    entities: dict[str, TimelineEntityReconciliation]
    not_movable: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(e.ok for e in self.entities.values())

    @property
    def mismatches(self) -> int:
        return sum(len(e.missing) + len(e.duplicates) + len(e.mismatches) + len(e.not_moved)
                   for e in self.entities.values())

    def evidence(self) -> dict:
        out: dict = {e: {"cloud_delta": r.cloud_delta, "matched": r.matched, "missing": r.missing[:50],
                         "duplicates": r.duplicates[:50], "mismatches": r.mismatches[:50],
                         "not_moved": r.not_moved[:50], "created_after_export": r.created_after_export, "ok": r.ok}
                     for e, r in self.entities.items()}
        out["activity_not_movable"] = dict(list(self.not_movable.items())[:50])
        return out


def reconcile_timeline(box, tdelta: TimelineDelta, idmap, *, user_map: dict[str, str], fallback_user_id: int = 1,
                       cloud=None, proven: dict[str, int] | None = None) -> TimelineReconciliation:
    """Compare, per record, the timeline delta with the box; with ``cloud``, also every activity the
    cloud created since the backup, listed anew (one the export missed is ``not_moved``) — above the
    ``proven`` marks of an earlier proof when given (see :mod:`.reconcile`)."""
    ctx = make_context(box, idmap, TimelineImport(entities={"activity": TimelineEntityImport()}), user_map=user_map,
                       fallback_user_id=fallback_user_id, settle_quiet_s=None, settle_max_s=None, sleep=time.sleep)
    owners = Owners(idmap, tdelta.entity_max_ids)
    out = {"product": _reconcile_products(box, tdelta),
           "productrow": _reconcile_rows(box, tdelta, idmap, owners),
           "activity": _reconcile_activities(ctx, tdelta, owners, cloud, proven or {}),
           "comment": _reconcile_comments(box, tdelta, idmap, owners)}
    return TimelineReconciliation(out, dict(tdelta.not_movable))


def _reconcile_products(box, tdelta: TimelineDelta) -> TimelineEntityReconciliation:
    r = TimelineEntityReconciliation("product", cloud_delta=len(tdelta.products))
    codes = {c: prod.product_code(c, row) for c, row in tdelta.products.items()}
    on_box = prod.products_on_box(box, codes.values())
    rows = {str(x["ID"]): x for group in chunks(sorted({v[0] for v in on_box.values()}, key=int), 50)
            for x in iter_rows(box, "crm.product.list", filter={"@ID": group}, select=["*"], commands_per_batch=5)}
    for cid, row in sorted(tdelta.products.items(), key=lambda x: int(x[0])):
        twins = on_box.get(codes[cid], [])
        if not twins:
            r.missing.append(cid)
            continue
        if len(twins) > 1:
            r.duplicates.append(cid)
        want = {f: prod._num(row.get(f)) if f == "PRICE" else str(row.get(f) or "") for f in ("NAME", "PRICE", "CURRENCY_ID")}
        have_row = rows.get(twins[0], {})
        have = {f: prod._num(have_row.get(f)) if f == "PRICE" else str(have_row.get(f) or "") for f in want}
        if want != have:
            r.mismatches.append({"cloud_id": cid, "box_id": twins[0], "fields": diff(want, have)})
        else:
            r.matched += 1
    return r


def _reconcile_rows(box, tdelta: TimelineDelta, idmap, owners: Owners) -> TimelineEntityReconciliation:
    r = TimelineEntityReconciliation("productrow", cloud_delta=len(tdelta.deal_rows))
    pmap = prod.box_product_map(idmap, tdelta.marks["product"]["max_id"])
    box_deal = {c: owners.box_id("deal", c) for c in tdelta.deal_rows}
    on_box = prod.read_rows(box, [b for b in box_deal.values() if b])
    for cid, rows in sorted(tdelta.deal_rows.items(), key=lambda x: int(x[0])):
        bid = box_deal[cid]
        if bid is None:
            r.missing.append(cid)
            continue
        want, have = prod.rows_multiset(rows, pmap), prod.rows_multiset(on_box.get(bid, []))
        if want == have:
            r.matched += 1
        else:
            r.mismatches.append({"cloud_id": cid, "box_id": bid, "missing_rows": sorted(map(list, (want - have).elements())),
                                 "extra_rows": sorted(map(list, (have - want).elements()))})
    return r


def _reconcile_activities(ctx, tdelta: TimelineDelta, owners: Owners, cloud, marks: dict) -> TimelineEntityReconciliation:
    r = TimelineEntityReconciliation("activity", cloud_delta=len(tdelta.activities))
    box_mark = int(marks.get("box", 0))
    # with ``cloud`` every activity created since the last proof (or the backup) is checked for a twin: ours
    # above the proof's box mark are listed; the delta's twins are looked up by cloud ID when few
    above = act.ours_on_box(ctx.box, after_id=box_mark) if cloud is not None else {}
    if cloud is not None and box_mark == 0:
        ours = above  # every one of ours
    elif len(tdelta.activities) <= act.BY_ID_LIMIT:
        ours = _merged(act.ours_on_box(ctx.box, list(tdelta.activities)) if tdelta.activities else {}, above)
    else:
        ours = act.ours_on_box(ctx.box)
    mapped = ctx.idmap.get("activity")
    box_of = {c: (ours.get(c) or [None])[0] or ((mapped.get(c) or c) if tdelta.activity_kind[c] == "modified" else None)
              for c in tdelta.activities}
    rows = act.fetch(ctx.box, [b for b in box_of.values() if b])
    for cid, row in sorted(tdelta.activities.items(), key=lambda x: int(x[0])):
        bid = box_of[cid]
        if len(ours.get(cid, [])) > 1:
            r.duplicates.append(cid)
        twin = rows.get(bid) if bid else None
        if twin is None:
            r.missing.append(cid)
            continue
        want, _ = act.box_fields(ctx, owners, cid, row, backup=tdelta.activity_kind[cid] == "modified")
        if want is None:  # its owner is not on the box: reported by the four entities' reconciliation
            r.missing.append(cid)
            continue
        problems = diff(act.view(want), act.view(twin))
        if problems:
            r.mismatches.append({"cloud_id": cid, "box_id": bid, "fields": problems})
        else:
            r.matched += 1
    if cloud is not None:
        cloud_mark = max(int(tdelta.marks["activity"]["max_id"]), int(marks.get("cloud", 0)))
        unseen = []
        for row in iter_rows(cloud, "crm.activity.list", select=["ID", "ORIGINATOR_ID", "TYPE_ID", "OWNER_TYPE_ID"],
                             after_id=cloud_mark):
            rid = str(row["ID"])
            if int(rid) > tdelta.activities_listed_up_to:
                r.created_after_export += 1
            elif rid not in tdelta.activities and rid not in tdelta.not_movable and rid not in ours \
                    and str(row.get("ORIGINATOR_ID") or "") != ORIGINATOR and act.movable(row) is None:
                unseen.append(rid)
        if unseen:  # moved before the proof's box mark (not listed above): found by cloud ID
            found = act.ours_on_box(ctx.box, unseen)
            r.not_moved += [c for c in unseen if c not in found]
        r.proven = advance_marks(marks, r.ok, tdelta.activities_listed_up_to,
                                 [int(b) for ids in above.values() for b in ids])
    return r


def _merged(a: dict[str, list[str]], b: dict[str, list[str]]) -> dict[str, list[str]]:
    return {c: sorted({*a.get(c, ()), *b.get(c, ())}, key=int) for c in {*a, *b}}


def _reconcile_comments(box, tdelta: TimelineDelta, idmap, owners: Owners) -> TimelineEntityReconciliation:
    r = TimelineEntityReconciliation("comment", cloud_delta=len(tdelta.comments))
    box_owner = {c: (row["ENTITY_TYPE"], owners.box_id(row["ENTITY_TYPE"], row["ENTITY_ID"]))
                 for c, row in tdelta.comments.items()}
    wanted: dict[str, set[str]] = {}
    for entity, bid in box_owner.values():
        if bid:
            wanted.setdefault(entity, set()).add(bid)
    on_box = com.list_comments(box, wanted)
    by_id = {str(b["ID"]): (owner, b) for owner, rows in on_box.items() for b in rows}
    mapped = idmap.get("comment")
    for cid, row in sorted(tdelta.comments.items(), key=lambda x: int(x[0])):
        found = by_id.get(mapped.get(cid, ""))
        if found is None or box_owner[cid][1] is None:
            r.missing.append(cid)
        elif found[0] != box_owner[cid] or com._text(found[1]) != com._text(row):
            r.mismatches.append({"cloud_id": cid, "box_id": str(found[1]["ID"]), "fields": ["COMMENT"]})
        else:
            r.matched += 1
    cloud_texts = com.per_owner_texts(tdelta.comments, lambda c, row: box_owner[c] if box_owner[c][1] else None)
    for owner, texts in cloud_texts.items():
        box_texts = Counter(com._text(b) for b in on_box.get(owner, [])
                            if (parse_date(b.get("CREATED")) or tdelta.cutoff) > tdelta.cutoff)
        for text, n in texts.items():
            if box_texts[text] > n:
                r.duplicates.append(f"{owner[0]} {owner[1]}: {box_texts[text] - n} extra of a comment")
    return r


# --- review files ------------------------------------------------------------------------------

def write_csvs(tdelta: TimelineDelta, out_dir: Path) -> list[Path]:
    """One CSV per kind (activities, comments, products, product rows), 0600, cells neutralised
    (connectors.outputs.write_csv); file links without their ``auth`` parameter. Returns the files."""
    import pandas as pd

    from connectors.outputs import write_csv
    from connectors.secrets import redact

    def flat(values: dict) -> dict:
        return {k: "" if v is None else redact(str(v)) for k, v in values.items()}

    activities = []
    for cid, row in tdelta.activities.items():
        activities.append(flat({
            "CHANGE": tdelta.activity_kind[cid], "ID": cid, "TYPE": act.MOVABLE_TYPES.get(str(row.get("TYPE_ID")), ""),
            "OWNER": f"{OWNER_ENTITIES.get(int(row.get('OWNER_TYPE_ID') or 0), '?')} {row.get('OWNER_ID')}",
            **{f: row.get(f) for f in ("SUBJECT", "DIRECTION", "START_TIME", "END_TIME", "COMPLETED", "RESPONSIBLE_ID",
                                       "PROVIDER_ID")},
            "COMMUNICATIONS": "; ".join(str(c.get("VALUE", "")) for c in row.get("COMMUNICATIONS") or []),
            "FILES": "; ".join(act._without_auth(str(f.get("url"))) for f in row.get("FILES") or [] if f.get("url"))}))
    comments = [flat({"ID": c, "OWNER": f"{r['ENTITY_TYPE']} {r['ENTITY_ID']}", "AUTHOR_ID": r.get("AUTHOR_ID"),
                      "CREATED": r.get("CREATED"), "COMMENT": r.get("COMMENT")}) for c, r in tdelta.comments.items()]
    products = [flat({"ID": c, **{f: r.get(f) for f in ("NAME", "PRICE", "CURRENCY_ID", "XML_ID")}})
                for c, r in tdelta.products.items()]
    rows = [flat({"DEAL_ID": d, **{f: r.get(f) for f in ("productId", "productName", "price", "quantity")}})
            for d, rs in tdelta.deal_rows.items() for r in rs]
    files = []
    for name, records, columns in (("activity", activities, ["CHANGE", "ID", "TYPE", "OWNER"]),
                                   ("comment", comments, ["ID", "OWNER", "COMMENT"]),
                                   ("product", products, ["ID", "NAME", "PRICE"]),
                                   ("productrow", rows, ["DEAL_ID", "productId", "price", "quantity"])):
        frame = pd.DataFrame.from_records(records) if records else pd.DataFrame(columns=columns)
        files.append(write_csv(frame, out_dir / f"crm-delta-{name}.csv"))
    return files

"""Generated timeline history for the sandbox pair: activities (telephony calls, e-mails, meetings),
timeline comments, a product catalogue and deal product rows — in the backup, and made in the cloud
after the cutoff.

:func:`make_timeline` is called by ``generator.generate`` with its own random stream (so the four
entities' records stay exactly what they were for a seed); ``seed_*`` load it into a CrmStore's
``timeline`` the way ``generator.seed_backup``/``seed_cloud`` load the records (IDs kept).

A call is what the cloud's telephony logs into the card (see ``timeline.py``): PROVIDER_ID
VOXIMPLANT_CALL, ORIGIN_ID ``VI_<call id>``, DIRECTION, START/END_TIME (equal for a missed call,
which stays not completed), the phone as its one communication, the record as a file of the activity.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .timeline import CALL, DIRECTION_INCOMING, DIRECTION_OUTGOING, EMAIL, MEETING

if TYPE_CHECKING:
    from .store import CrmStore

TYPE_IDS = {"lead": 1, "deal": 2, "contact": 3, "company": 4}
# Activities per record of the backup, by owner (a sales team calls leads and deals most).
ACTIVITY_RATE = {"lead": 1.2, "deal": 1.0, "contact": 0.5, "company": 0.3}
CATALOGUE = [("CRM licence, 1 year", "1200.00"), ("Onboarding workshop", "450.00"), ("Support hour", "80.00"),
             ("IP phone", "139.90"), ("Headset", "59.00"), ("Data migration", "990.00"),
             ("Training day", "600.00"), ("Extra storage 100 GB", "25.00")]
COMMENTS = ["Customer asked to call back after lunch", "Sent the price list", "Waiting for the signed contract",
            "Перезвонить в понедельник", "Budget approved", "Bitte Angebot anpassen", "Meeting moved to Friday"]


@dataclass
class TimelineDataset:
    """Backup state and post-cutoff additions. Activities are ``put_activity`` fields with ``ID``;
    comments ``{"ID", "entity", "entity_id", "text", "author", "at"}``; products ``{"ID", "NAME",
    "PRICE", "CURRENCY_ID", "at"}``; rows ``(at, deal ID, [row fields])`` in the order they are set."""

    activities: list[dict] = field(default_factory=list)
    comments: list[dict] = field(default_factory=list)
    products: list[dict] = field(default_factory=list)
    rows: list[tuple] = field(default_factory=list)
    post_activities: list[dict] = field(default_factory=list)
    post_comments: list[dict] = field(default_factory=list)
    post_products: list[dict] = field(default_factory=list)
    post_rows: list[tuple] = field(default_factory=list)


def make_timeline(rng: random.Random, backup: dict[str, dict[int, dict]], changes: list, cutoff: dt.datetime,
                  post_end: dt.datetime, users: list[dict]) -> TimelineDataset:
    """The timeline of a generated CRM: ``backup`` (entity → ID → fields) and ``changes`` as
    ``generator.generate`` makes them. Records deleted in the cloud get nothing after the cutoff."""
    out = TimelineDataset()
    deleted = {(c.entity, c.record_id) for c in changes if c.kind == "delete"}
    new = {e: {c.record_id: c.fields for c in changes if c.kind == "add" and c.entity == e} for e in TYPE_IDS}
    user_ids = [int(u["ID"]) for u in users]

    def when(lo: dt.datetime, hi: dt.datetime) -> dt.datetime:
        return (lo + dt.timedelta(seconds=rng.uniform(0, max(1.0, (hi - lo).total_seconds())))).replace(microsecond=0)

    pre: list[dict] = []
    last_start = cutoff - dt.timedelta(hours=2)  # a backup call has ended (and been logged) before the cutoff
    for entity, rate in ACTIVITY_RATE.items():
        for rid, rec in sorted(backup[entity].items()):
            for _ in range(int(rate) + (rng.random() < rate % 1)):
                pre.append(_activity(rng, entity, rid, rec, when(min(rec["DATE_CREATE"], last_start), last_start),
                                     user_ids))
            if rng.random() < 0.25:
                out.comments.append(_comment(rng, entity, rid, when(rec["DATE_CREATE"], cutoff), user_ids))
    span_end = post_end - dt.timedelta(hours=1)
    post: list[dict] = []
    for entity in TYPE_IDS:
        targets = [(rid, rec, rec["DATE_CREATE"]) for rid, rec in sorted(new[entity].items())]
        old = [(rid, rec, cutoff) for rid, rec in sorted(backup[entity].items()) if (entity, rid) not in deleted]
        targets += rng.sample(old, min(len(old), max(1, len(old) // 10)))
        for rid, rec, since in targets:
            for _ in range(rng.randint(1, 2)):
                post.append(_activity(rng, entity, rid, rec, when(since, max(since, span_end)), user_ids))
            if rng.random() < 0.4:
                out.post_comments.append(_comment(rng, entity, rid, when(since, max(since, span_end)), user_ids))
    # IDs grow with creation time, as the portal's sequences do; post-cutoff ones follow the backup's
    for number, act in enumerate(sorted(pre, key=lambda a: a["CREATED"]) + sorted(post, key=lambda a: a["CREATED"]),
                                 start=1):
        act["ID"] = number
    out.activities, out.post_activities = sorted(pre, key=lambda a: a["ID"]), sorted(post, key=lambda a: a["ID"])
    out.comments.sort(key=lambda c: c["at"])
    out.post_comments.sort(key=lambda c: c["at"])
    for number, com in enumerate(out.comments + out.post_comments, start=1):
        com["ID"] = number
    _catalogue(rng, out, backup, new, cutoff, span_end)
    return out


def _activity(rng: random.Random, entity: str, rid: int, rec: dict, start: dt.datetime, users: list[int]) -> dict:
    """A call (most), an e-mail or a meeting on one record, starting at ``start``."""
    kind = rng.choices([CALL, EMAIL, MEETING], weights=[6, 3, 1])[0]
    owner = {"OWNER_TYPE_ID": TYPE_IDS[entity], "OWNER_ID": rid, "RESPONSIBLE_ID": rng.choice(users)}
    phone = (rec.get("PHONE") or [{"VALUE": f"+7 495 {rng.randint(100, 999)}-{rng.randint(10, 99)}-00"}])[0]["VALUE"]
    email = (rec.get("EMAIL") or [{"VALUE": f"client{rid}@example.com"}])[0]["VALUE"]
    if kind == CALL:
        direction = rng.choice([DIRECTION_INCOMING, DIRECTION_OUTGOING])
        missed = direction == DIRECTION_INCOMING and rng.random() < 0.25
        end = start + dt.timedelta(seconds=0 if missed else rng.randint(15, 1200))
        call_id = f"{rng.getrandbits(128):032x}"
        fields = {"TYPE_ID": CALL, "PROVIDER_ID": "VOXIMPLANT_CALL", "PROVIDER_TYPE_ID": "CALL",
                  "SUBJECT": ("Missed call " if missed else "Incoming call " if direction == DIRECTION_INCOMING
                              else "Outgoing call ") + phone,
                  "DIRECTION": direction, "START_TIME": start, "END_TIME": end, "COMPLETED": "N" if missed else "Y",
                  "ORIGIN_ID": f"VI_{call_id}", "COMMUNICATIONS": [{"TYPE": "PHONE", "VALUE": phone}],
                  "FILES": [] if missed else [rng.randint(1, 10 ** 7)]}  # the record: a file of the activity
    elif kind == EMAIL:
        end = start
        fields = {"TYPE_ID": EMAIL, "SUBJECT": rng.choice(["Offer", "Re: contract", "Invoice", "Follow-up"]),
                  "DESCRIPTION": "<p>" + rng.choice(COMMENTS) + "</p>", "DESCRIPTION_TYPE": 3,
                  "DIRECTION": rng.choice([DIRECTION_INCOMING, DIRECTION_OUTGOING]), "START_TIME": start,
                  "END_TIME": end, "COMPLETED": "Y", "COMMUNICATIONS": [{"TYPE": "EMAIL", "VALUE": email}]}
    else:
        end = start + dt.timedelta(hours=1)
        fields = {"TYPE_ID": MEETING, "SUBJECT": "Meeting: " + rng.choice(["demo", "contract", "kick-off"]),
                  "LOCATION": rng.choice(["Office", "Customer site", "Video call"]), "START_TIME": start,
                  "END_TIME": end, "COMPLETED": rng.choice(["Y", "N"]),
                  "COMMUNICATIONS": [{"TYPE": "PHONE", "VALUE": phone}]}
    for c in fields["COMMUNICATIONS"]:
        c.update(ENTITY_TYPE_ID=TYPE_IDS[entity], ENTITY_ID=rid)
    created = max(start, end) if kind == CALL else start  # a call is logged when it ends
    return {**owner, **fields, "CREATED": created, "LAST_UPDATED": created, "AUTHOR_ID": owner["RESPONSIBLE_ID"],
            "EDITOR_ID": owner["RESPONSIBLE_ID"]}


def _comment(rng: random.Random, entity: str, rid: int, at: dt.datetime, users: list[int]) -> dict:
    return {"entity": entity, "entity_id": rid, "text": rng.choice(COMMENTS), "author": rng.choice(users), "at": at}


def _rows(rng: random.Random, products: list[dict]) -> list[dict]:
    rows = []
    for sort, prod in enumerate(rng.sample(products, rng.randint(1, min(3, len(products)))), start=1):
        row: dict[str, Any] = {"PRODUCT_ID": prod["ID"], "PRICE": prod["PRICE"], "QUANTITY": rng.randint(1, 5),
                               "SORT": sort * 10}
        if rng.random() < 0.3:
            row.update(DISCOUNT_TYPE_ID=2, DISCOUNT_RATE=rng.choice([5, 10, 15]))
        rows.append(row)
    return rows


def _catalogue(rng: random.Random, out: TimelineDataset, backup: dict, new: dict, cutoff: dt.datetime,
               span_end: dt.datetime) -> None:
    """Products before the cutoff and one after; rows on some backup deals, on new deals, and one
    old deal whose rows change after the cutoff."""
    first = cutoff - dt.timedelta(days=366)
    for number, (name, price) in enumerate(CATALOGUE, start=1):
        out.products.append({"ID": number, "NAME": name, "PRICE": price, "CURRENCY_ID": "EUR",
                             "at": first + dt.timedelta(days=number)})
    late = cutoff + (span_end - cutoff) / 3
    out.post_products.append({"ID": len(CATALOGUE) + 1, "NAME": "Call-centre add-on", "PRICE": "300.00",
                              "CURRENCY_ID": "EUR", "at": late.replace(microsecond=0)})
    with_rows = [rid for rid in sorted(backup["deal"]) if rng.random() < 0.3]
    for rid in with_rows:
        out.rows.append((backup["deal"][rid]["DATE_MODIFY"], rid, _rows(rng, out.products)))
    for rid, rec in sorted(new["deal"].items()):
        if rng.random() < 0.5:
            products = out.products + (out.post_products if rec["DATE_CREATE"] > late else [])
            out.post_rows.append((rec["DATE_CREATE"], rid, _rows(rng, products)))
    if with_rows:
        rid = rng.choice(with_rows)
        out.post_rows.append((late + dt.timedelta(minutes=5), rid, _rows(rng, out.products + out.post_products)))
    out.post_rows.sort(key=lambda r: r[0])


def _put_activities(store: CrmStore, activities: list[dict]) -> None:
    for act in activities:
        store.timeline.put_activity({k: v for k, v in act.items() if k != "ID"}, activity_id=act["ID"])


def _put_rows(store: CrmStore, rows: list[tuple]) -> None:
    for at, deal_id, row_list in rows:
        deal = store.get("deal", deal_id)
        if deal is not None:  # the deal's DATE_MODIFY never goes back
            store.timeline.set_rows("D", deal_id, row_list, now=max(at, deal["DATE_MODIFY"]))


def _put_comments(store: CrmStore, comments: list[dict]) -> None:
    for c in comments:
        store.timeline.put_comment(c["entity"], c["entity_id"], c["text"], c["author"], created=c["at"],
                                   comment_id=c["ID"])


def seed_timeline_backup(store: CrmStore, data: TimelineDataset) -> None:
    """The backup's timeline (its records must be in ``store`` already)."""
    for prod in data.products:
        store.timeline.put_product(prod, product_id=prod["ID"], now=prod["at"])
    _put_activities(store, data.activities)
    _put_comments(store, data.comments)
    _put_rows(store, data.rows)


def seed_timeline_post(store: CrmStore, data: TimelineDataset) -> None:
    """What the cloud's users added after the cutoff (after ``seed_timeline_backup`` and the changes)."""
    for prod in data.post_products:
        store.timeline.put_product(prod, product_id=prod["ID"], now=prod["at"])
    _put_activities(store, data.post_activities)
    _put_comments(store, data.post_comments)
    _put_rows(store, data.post_rows)

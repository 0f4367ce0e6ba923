"""Generated custom fields, WEB/IM values, contact ↔ company bindings and a smart process for the
sandbox pair (called by :func:`.generator.generate`; a separate random stream, so the other generated
records stay as they were).

The backup holds three field definitions — a lead string, a lead enumeration with three items, a
contact multiple string — and a string field of the smart process "Shipments" with its items.
After the cutoff, in the cloud only: a deal enumeration created then (definition and item IDs
unknown to the box), a fourth item of the lead enumeration, new records with values of all of
them, new WEB/IM values, a contact's companies changed, new and changed shipments. Item IDs step
by 2 as the vendor's cloud shows them (crm-lead-userfield-list.md's example: 3157, 3159 …) and
jump after the cutoff, so that the box's own sequence (step 1, from the backup's last ID) gives
other IDs to the same values.
"""

from __future__ import annotations

import bisect
import datetime as dt
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import dynamic
from .store import CrmStore, dynamic_entity

LEAD_NOTE = "UF_CRM_1721244707107"  # crm.item: ufCrm_1721244707107
LEAD_INTEREST = "UF_CRM_INTEREST"  # crm.item: ufCrmInterest
CONTACT_LANGUAGES = "UF_CRM_1721244800201"  # multiple
DEAL_DELIVERY = "UF_CRM_DELIVERY"  # created after the cutoff
SHIPMENT_CARRIER = "UF_CRM_1_1721812760630"  # of the smart process with type id 1: ufCrm1_1721812760630
SHIPMENTS = {"title": "Shipments", "entityTypeId": 1030, "isStagesEnabled": "Y", "isCategoriesEnabled": "N",
             "isClientEnabled": "Y", "isLinkWithProductsEnabled": "Y"}
SHIPMENTS_TYPE_ID, SHIPMENTS_CATEGORY = 1, 7

_FIELDS = [
    ("CRM_LEAD", 101, {"FIELD_NAME": LEAD_NOTE, "USER_TYPE_ID": "string", "LABEL": "Campaign note"}),
    ("CRM_LEAD", 103, {"FIELD_NAME": LEAD_INTEREST, "USER_TYPE_ID": "enumeration", "LABEL": "Interest",
                       "LIST": [{"ID": 41, "VALUE": "Hardware", "SORT": 10, "DEF": "Y"},
                                {"ID": 43, "VALUE": "Software", "SORT": 20},
                                {"ID": 45, "VALUE": "Service", "SORT": 30}]}),
    ("CRM_CONTACT", 105, {"FIELD_NAME": CONTACT_LANGUAGES, "USER_TYPE_ID": "string", "MULTIPLE": "Y",
                          "LABEL": "Languages"}),
    (f"CRM_{SHIPMENTS_TYPE_ID}", 107, {"FIELD_NAME": SHIPMENT_CARRIER, "USER_TYPE_ID": "string", "LABEL": "Carrier"}),
]
_POST_FIELD = ("CRM_DEAL", 113, {"FIELD_NAME": DEAL_DELIVERY, "USER_TYPE_ID": "enumeration", "LABEL": "Delivery",
                                 "LIST": [{"ID": 61, "VALUE": "Pickup", "SORT": 10},
                                          {"ID": 63, "VALUE": "Courier", "SORT": 20}]})
_POST_ITEM = (103, {"ID": 51, "VALUE": "Training", "SORT": 40})  # a value added to the lead enumeration
LANGUAGES = ["en", "de", "ru", "id", "bg"]
CARRIERS = ["DHL", "DPD", "Pochta", "JNE"]
IM_TYPES = ["TELEGRAM", "SKYPE", "VIBER", "OTHER"]


@dataclass
class CustomDataset:
    """What :func:`make_custom` generated: definitions as (ENTITY_ID, field ID, fields), the
    smart process's backup items (ID → store fields) and its post-cutoff changes (``Change``-like
    tuples: (at, kind, item ID, fields))."""

    fields: list[tuple] = field(default_factory=list)
    post_field: tuple | None = None
    post_item: tuple | None = None
    shipments: dict[int, dict] = field(default_factory=dict)
    shipment_changes: list[tuple] = field(default_factory=list)


def _web(rng: random.Random, name: str) -> list[dict]:
    return [{"VALUE": f"https://{name.lower()}{rng.randint(1, 99)}.example", "VALUE_TYPE": "WORK"}]


def _im(rng: random.Random) -> list[dict]:
    return [{"VALUE": f"@user{rng.randint(100, 999)}", "VALUE_TYPE": rng.choice(IM_TYPES)}]


class _Without(Sequence):
    """``[x for x in items if x != dropped]`` of an ascending list without building it: rng.sample
    indexes a sequence, so the draws are the list's, in O(log n) instead of O(n) per contact."""

    def __init__(self, items: list, dropped) -> None:  # items: ascending
        self.items = items
        at = bisect.bisect_left(items, dropped)
        self.at = at if at < len(items) and items[at] == dropped else None

    def __len__(self) -> int:
        return len(self.items) - (self.at is not None)

    def __getitem__(self, i: int):
        if i < 0 or i >= len(self):
            raise IndexError(i)
        return self.items[i + 1] if self.at is not None and i >= self.at else self.items[i]


def make_custom(rng: random.Random, backup: dict, changes: list, cutoff: dt.datetime, post_end: dt.datetime,
                users: list[dict], change_type) -> CustomDataset:
    """Add custom-field values, WEB/IM values and company bindings to the backup's records and the
    post-cutoff changes (in place; ``changes`` stays sorted), and make the smart process's data.
    ``change_type``: the generator's ``Change`` (new post-cutoff updates are appended as such)."""
    span = (post_end - cutoff).total_seconds()
    interests = [41, 43, 45]
    for rid, lead in backup["lead"].items():
        if rng.random() < 0.5:
            lead[LEAD_NOTE] = f"campaign {rng.randint(1, 40)}"
            lead[LEAD_INTEREST] = rng.choice(interests)
        if rng.random() < 0.2:
            lead["WEB"] = _web(rng, "lead")
    companies = sorted(backup["company"])
    created = [backup["company"][c]["DATE_CREATE"] for c in companies]  # ascending: IDs follow time
    for rid, contact in backup["contact"].items():
        if rng.random() < 0.5:
            contact[CONTACT_LANGUAGES] = rng.sample(LANGUAGES, rng.randint(1, 3))
        if rng.random() < 0.3:
            contact["IM"] = _im(rng)
        older = companies[:bisect.bisect_left(created, contact["DATE_CREATE"])]
        if contact.get("COMPANY_ID") and len(older) > 1:  # 1–3 companies, the primary one first
            extra = rng.sample(_Without(older, contact["COMPANY_ID"]), min(len(older) - 1, rng.randint(0, 2)))
            contact["COMPANY_IDS"] = [contact["COMPANY_ID"], *extra]
    for company in backup["company"].values():
        if rng.random() < 0.3:
            company["WEB"] = _web(rng, "office")
    for change in changes:
        if change.kind != "add":
            continue
        if change.entity == "lead":
            change.fields.update({LEAD_NOTE: f"campaign {rng.randint(41, 60)}",
                                  LEAD_INTEREST: rng.choice(interests + [_POST_ITEM[1]["ID"]]),
                                  "WEB": _web(rng, "lead"), "IM": _im(rng)})
        elif change.entity == "contact":
            change.fields.update({CONTACT_LANGUAGES: rng.sample(LANGUAGES, 2), "IM": _im(rng)})
        elif change.entity == "deal":
            change.fields[DEAL_DELIVERY] = rng.choice([61, 63])
    # a backup contact's companies change; another gets a messenger after the cutoff
    bound = sorted(r for r, c in backup["contact"].items() if len(c.get("COMPANY_IDS") or []) > 1)
    if bound:
        rid = bound[0]
        moved = list(reversed(backup["contact"][rid]["COMPANY_IDS"]))[:2]
        changes.append(change_type(_after(rng, cutoff, span), "update", "contact", rid, {"COMPANY_IDS": moved}))
    plain = sorted(backup["contact"])[-1]
    changes.append(change_type(_after(rng, cutoff, span), "update", "contact", plain, {"IM": _im(rng)}))
    changes.sort(key=lambda c: c.at)
    data = CustomDataset(fields=list(_FIELDS), post_field=_POST_FIELD, post_item=_POST_ITEM)
    _shipments(rng, data, backup, cutoff, span, users)
    return data


def _after(rng: random.Random, cutoff: dt.datetime, span: float) -> dt.datetime:
    return (cutoff + dt.timedelta(seconds=rng.uniform(1, span))).replace(microsecond=0)


def _shipments(rng: random.Random, data: CustomDataset, backup: dict, cutoff: dt.datetime, span: float,
               users: list[dict]) -> None:
    stage = f"DT{SHIPMENTS['entityTypeId']}_{SHIPMENTS_CATEGORY}"
    companies, contacts = sorted(backup["company"]), sorted(backup["contact"])

    def item(t: dt.datetime) -> dict:
        return {"TITLE": f"Shipment {rng.randint(1000, 9999)}", "STAGE_ID": f"{stage}:{rng.choice(['NEW', 'PREPARATION', 'SUCCESS'])}",
                "CATEGORY_ID": SHIPMENTS_CATEGORY, "ASSIGNED_BY_ID": rng.choice(users)["ID"],
                "CREATED_BY_ID": rng.choice(users)["ID"], "OPPORTUNITY": f"{rng.randint(1, 90) * 50}.00",
                "CURRENCY_ID": "EUR", "COMPANY_ID": rng.choice(companies), "CONTACT_IDS": [rng.choice(contacts)],
                SHIPMENT_CARRIER: rng.choice(CARRIERS), "DATE_CREATE": t, "DATE_MODIFY": t}

    year = 365 * 86400
    made = sorted((cutoff - dt.timedelta(seconds=rng.uniform(86400, year))).replace(microsecond=0) for _ in range(12))
    data.shipments = {i: item(t) for i, t in enumerate(made, start=1)}
    news = sorted(_after(rng, cutoff, span) for _ in range(3))
    data.shipment_changes = [(t, "add", len(made) + n, item(t)) for n, t in enumerate(news, start=1)]
    for rid in (2, 5):
        data.shipment_changes.append((_after(rng, cutoff, span), "update", rid,
                                      {"STAGE_ID": f"{stage}:SUCCESS", SHIPMENT_CARRIER: "DHL Express"}))
    data.shipment_changes.sort(key=lambda c: c[0])


def seed_custom_definitions(store: CrmStore, data: CustomDataset) -> None:
    """The backup's smart process and custom-field definitions (IDs kept): before any record."""
    dynamic.add_type(store, SHIPMENTS, type_id=SHIPMENTS_TYPE_ID, category_id=SHIPMENTS_CATEGORY)
    for entity_id, field_id, fields in data.fields:
        store.userfields.add(entity_id, fields, field_id=field_id)


def seed_custom_items(store: CrmStore, data: CustomDataset) -> None:
    """The backup's smart-process items."""
    entity = dynamic_entity(SHIPMENTS["entityTypeId"])
    for rid, fields in sorted(data.shipments.items()):
        store.add(entity, fields, keep_times=True, record_id=rid)


def seed_custom_post(store: CrmStore, data: CustomDataset) -> None:
    """The cloud's definitions made after the cutoff: before the post-cutoff records. Its item
    sequence has moved on (other fields' items took IDs meanwhile), as the cloud's does."""
    entity_id, field_id, fields = data.post_field
    store.userfields.next_item_id = max(store.userfields.next_item_id, data.post_item[1]["ID"])
    store.userfields.update(data.post_item[0], {"LIST": [{k: v for k, v in data.post_item[1].items() if k != "ID"}]})
    store.userfields.add(entity_id, fields, field_id=field_id)


def seed_custom_changes(store: CrmStore, data: CustomDataset) -> None:
    """The smart process's post-cutoff changes, at their times."""
    entity = dynamic_entity(SHIPMENTS["entityTypeId"])
    for at, kind, rid, fields in data.shipment_changes:
        if kind == "add":
            store.add(entity, fields, keep_times=True, record_id=rid)
        else:
            store.update(entity, rid, fields, now=at)

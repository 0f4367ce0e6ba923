"""In-memory CRM store of the sandbox portal: leads, deals, contacts, companies, users, tasks with
their comments, and telephony external lines.

Records are kept in the classic ``crm.<entity>.*`` shape (UPPER_CASE fields, IDs as strings on the
wire) with their dates as aware datetimes; :func:`render` turns one into what the REST API returns,
and :func:`render_item` that rendering into a crm.item.* item (camelCase names, ``fm``).
IDs are kept sorted so that the fast-export path (``order[ID]=ASC`` + ``filter[>ID]``) costs a
bisect plus one page, as on the real portal's primary-key index.
"""

from __future__ import annotations

import bisect
import datetime as dt
import re
import threading
from decimal import Decimal, InvalidOperation
from typing import Any, Iterable

from .errors import StoreError
from .userfields import ENTITY_IDS as UF_ENTITY_IDS, UserFields

ENTITIES = ("company", "contact", "lead", "deal")
ENTITY_TYPE_IDS = {1: "lead", 2: "deal", 3: "contact", 4: "company"}
# The multi-fields of leads, contacts and companies (crm/data-types.md, "crm_multifield"); deals and
# smart-process items have none (universal/object-fields.md).
MULTI_FIELDS = ("PHONE", "EMAIL", "WEB", "IM")
MULTI_ENTITIES = ("lead", "contact", "company")
DATE_FIELDS = ("DATE_CREATE", "DATE_MODIFY")
# Fields a list returns for select "*" / no select (multi-fields only when named, as on the portal).
BASE_FIELDS = {
    "company": ("ID", "TITLE", "COMPANY_TYPE", "INDUSTRY", "ASSIGNED_BY_ID", "CREATED_BY_ID", "MODIFY_BY_ID",
                "DATE_CREATE", "DATE_MODIFY", "ORIGINATOR_ID", "ORIGIN_ID", "COMMENTS"),
    "contact": ("ID", "NAME", "LAST_NAME", "POST", "COMPANY_ID", "ASSIGNED_BY_ID", "CREATED_BY_ID", "MODIFY_BY_ID",
                "DATE_CREATE", "DATE_MODIFY", "ORIGINATOR_ID", "ORIGIN_ID", "SOURCE_ID", "COMMENTS"),
    "lead": ("ID", "TITLE", "NAME", "LAST_NAME", "STATUS_ID", "SOURCE_ID", "OPPORTUNITY", "CURRENCY_ID",
             "CONTACT_ID", "COMPANY_ID", "ASSIGNED_BY_ID", "CREATED_BY_ID", "MODIFY_BY_ID", "DATE_CREATE",
             "DATE_MODIFY", "ORIGINATOR_ID", "ORIGIN_ID", "COMMENTS"),
    "deal": ("ID", "TITLE", "STAGE_ID", "CATEGORY_ID", "OPPORTUNITY", "CURRENCY_ID", "CONTACT_ID", "COMPANY_ID",
             "LEAD_ID", "ASSIGNED_BY_ID", "CREATED_BY_ID", "MODIFY_BY_ID", "DATE_CREATE", "DATE_MODIFY",
             "ORIGINATOR_ID", "ORIGIN_ID", "COMMENTS"),
}
# A contact's COMPANY_IDS is written by crm.contact.add/update but is no field of its list/get
# (crm/contacts/crm-contact-fields.md, COMPANY_IDS): the server keeps it out of their select.
LIST_BINDINGS = {"deal": ("CONTACT_IDS", "CONTACT_ID"), "contact": ("COMPANY_IDS", "COMPANY_ID")}
ALL_FIELDS = {e: set(BASE_FIELDS[e]) | (set(MULTI_FIELDS) if e in MULTI_ENTITIES else set()) | (
    {LIST_BINDINGS[e][0]} if e in LIST_BINDINGS else set()) for e in ENTITIES}
INT_FIELDS = {"ID", "COMPANY_ID", "CONTACT_ID", "LEAD_ID", "ASSIGNED_BY_ID", "CREATED_BY_ID", "MODIFY_BY_ID",
              "CATEGORY_ID"}
MONEY_FIELDS = {"OPPORTUNITY"}  # compared as numbers in filters, rendered with two decimals
# Links rendered as "0" when empty, as the vendor's list example shows ("COMPANY_ID": "0",
# bitrix-tools/b24-rest-docs api-reference/crm/leads/crm-lead-list.md); a deal's LEAD_ID stays null
# (api-reference/crm/deals/crm-deal-get.md).
ZERO_LINKS = {"COMPANY_ID", "CONTACT_ID"}

# --- crm.item.* (the universal methods): names and shapes ----------------------------------------
# Names: camelCase of the stored UPPER_CASE name (ASSIGNED_BY_ID → assignedById: bitrix-tools/
# b24-rest-docs api-reference/crm/universal/index.md, "Особенности имен полей"), except the common
# system fields (api-reference/crm/universal/object-fields.md, "Общие поля": id, createdTime,
# updatedTime, createdBy, updatedBy) and two fields that object-fields.md names by their role: a
# lead's status is its stage, ``stageId`` (table "Лид"; there is no statusId), a company's type is
# ``typeId`` (table "Компания"; there is no companyType).
ITEM_NAMES = {"ID": "id", "DATE_CREATE": "createdTime", "DATE_MODIFY": "updatedTime", "CREATED_BY_ID": "createdBy",
              "MODIFY_BY_ID": "updatedBy", "CONTACT_IDS": "contactIds"}
ITEM_NAMES_OF = {"lead": {"STATUS_ID": "stageId"}, "company": {"COMPANY_TYPE": "typeId"}}
ITEM_ENTITY_TYPE_IDS = {e: t for t, e in ENTITY_TYPE_IDS.items()}
# What an item is rendered from (CrmStore.render): every field the store keeps.
ITEM_SOURCE = ("*", "UF_*", *MULTI_FIELDS, "CONTACT_IDS", "COMPANY_IDS")
# Bindings the store keeps as one link and crm.item names as a list (object-fields.md: a lead's
# ``contactIds``); the link is the list's first entry (a lead's CONTACT_ID is "the first bound
# contact": api-reference/crm/leads/crm-lead-fields.md). A contact's companies are a real list,
# COMPANY_IDS (``LIST_BINDINGS``), as a deal's contacts are.
ITEM_BINDINGS = {"lead": ("contactIds", "CONTACT_ID")}

# --- smart processes (crm.type.*, see dynamic.py) -------------------------------------------------
# Their items are kept like the classic records, in a table per type named ``dynamic_<entityTypeId>``,
# with the fields object-fields.md lists for "Смарт-процесс" that the sandbox models (xmlId, title,
# stageId, categoryId, opportunity, currencyId, companyId, contactIds, opened) and the common ones.
# There is no originatorId/originId among them: those exist for leads, deals, contacts, companies.
DYNAMIC_PREFIX = "dynamic_"
DYNAMIC_BASE = ("ID", "XML_ID", "TITLE", "STAGE_ID", "CATEGORY_ID", "OPPORTUNITY", "CURRENCY_ID", "COMPANY_ID",
                "CONTACT_ID", "ASSIGNED_BY_ID", "CREATED_BY_ID", "MODIFY_BY_ID", "DATE_CREATE", "DATE_MODIFY",
                "OPENED")


def dynamic_entity(entity_type_id: int) -> str:
    """The table of a smart process's items; its field lists are registered on first use."""
    entity = f"{DYNAMIC_PREFIX}{int(entity_type_id)}"
    BASE_FIELDS.setdefault(entity, DYNAMIC_BASE)
    ALL_FIELDS.setdefault(entity, set(DYNAMIC_BASE) | {"CONTACT_IDS"})
    LIST_BINDINGS.setdefault(entity, ("CONTACT_IDS", "CONTACT_ID"))
    return entity


def entity_type_id(entity: str) -> int:
    """crm.item's entityTypeId of a table: 1–4 for the classic entities, the type's for a smart process."""
    if entity.startswith(DYNAMIC_PREFIX):
        return int(entity[len(DYNAMIC_PREFIX):])
    return ITEM_ENTITY_TYPE_IDS[entity]
# Links that read 0 when empty (crm-item-get.md's example: "companyId": 0, "contactId": 0; a deal's
# categoryId defaults to 0, the general funnel: import/crm-item-import.md, table "Сделка").
ITEM_ZERO_LINKS = {"COMPANY_ID", "CONTACT_ID", "CATEGORY_ID"}
ITEM_DOUBLE_FIELDS = {"OPPORTUNITY"}  # `double` in object-fields.md
# Multi-fields are not crm.item fields: they travel as ``fm`` in crm.item.add/update/get/list
# (object-fields.md, "fm": {id, typeId, valueType, value}) and as PHONE/EMAIL lists of
# {VALUE, VALUE_TYPE} in crm.item.import/batchImport (import/crm-item-import.md, "fields"). The
# lower-case ``phone``/``email`` of object-fields.md are read-only strings: the first value of that
# type, like ``phoneWork`` etc. (crm-item-get.md, below the example); (typeId, valueType or any).
ITEM_FM_ALIASES = {"phone": ("PHONE", None), "email": ("EMAIL", None), "phoneMobile": ("PHONE", "MOBILE"),
                   "phoneWork": ("PHONE", "WORK"), "phoneMailing": ("PHONE", "MAILING"),
                   "emailHome": ("EMAIL", "HOME"), "emailWork": ("EMAIL", "WORK"), "emailMailing": ("EMAIL", "MAILING")}


def to_item_name(field: str, entity: str) -> str:
    """``COMPANY_ID`` → ``companyId``; a lead's ``STATUS_ID`` → ``stageId``, a company's
    ``COMPANY_TYPE`` → ``typeId`` (the crm.item.* spelling, see ``ITEM_NAMES``)."""
    own = ITEM_NAMES_OF.get(entity, {})
    if field in own:
        return own[field]
    if field in ITEM_NAMES:
        return ITEM_NAMES[field]
    head, *rest = field.lower().split("_")
    return head + "".join(p.capitalize() for p in rest)


_FROM_ITEM: dict[tuple[str, str], str | None] = {}


def _upper_snake(item_name: str) -> str:
    """``stageId`` → ``STAGE_ID``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", item_name).upper()


def from_item_name(name: str, entity: str) -> str | None:
    """``companyId`` → ``COMPANY_ID`` for a field the entity has; None for a name crm.item.* does
    not know (``statusId``, ``companyType``) and for the multi-fields, which are no crm.item field.

    A crm.item name also works in UPPER_CASE (``ID``, ``STAGE_ID`` — not a lead's ``STATUS_ID``): the
    docs' Python example of crm.item.list (crm-item-list.md, ``as_list_fast``) pages with ``ID`` in
    order and filter, and the portal upper-cases the keys it is given (bitrix24-core-corp
    modules/crm/lib/controller/item.php, convertKeysToUpper, which keeps a known UPPER_CASE name)."""
    key = (entity, name)
    if key not in _FROM_ITEM:
        fields = ALL_FIELDS[entity] - set(MULTI_FIELDS)
        found = next((f for f in fields if to_item_name(f, entity) == name), None)
        if found is None and name == name.upper():
            found = next((f for f in fields if _upper_snake(to_item_name(f, entity)) == name), None)
        _FROM_ITEM[key] = found
    return _FROM_ITEM[key]


def render_item(entity: str, row: dict, select: Iterable[str] | None = None,
                uf_names: dict[str, str] | None = None) -> dict:
    """A record as crm.item.* returns it, from its classic rendering (``CrmStore.render`` with
    ``ITEM_SOURCE``): camelCase names, integer IDs (object-fields.md), ``fm`` for the multi-fields.

    ``select`` is crm.item.list's: ``fm`` "is not a field and cannot be asked for by name; pass
    select ['*'] to get it" (api-reference/crm/universal/crm-item-list.md, "select"), so it comes only
    with no select or ``["*"]``; other names pick fields (``id`` always). crm.item.get/add/update
    return the whole item, ``fm`` included (crm-item-get.md: "fm is always returned"). Custom
    fields come already in the crm.item style (``CrmStore.render(…, item=True)``) and are named by
    ``uf_names`` (FIELD_NAME → ``ufCrm…``, or the original name with ``useOriginalUfNames``)."""
    item: dict[str, Any] = {}
    for f, v in row.items():
        if f in MULTI_FIELDS:
            continue
        if f.startswith("UF_"):
            item[(uf_names or {}).get(f, f)] = v
            continue
        if f in ("CONTACT_IDS", "COMPANY_IDS"):
            v = [int(x) for x in v or []]
        elif f in INT_FIELDS:
            v = int(v) if v not in (None, "") else (0 if f in ITEM_ZERO_LINKS else None)
        elif f in ITEM_DOUBLE_FIELDS and v not in (None, ""):
            try:
                v = float(v)
            except ValueError:
                pass
        item[to_item_name(f, entity)] = v
    if entity in ITEM_BINDINGS:
        many, one = ITEM_BINDINGS[entity]
        link = item.get(to_item_name(one, entity))
        item[many] = [link] if link else []
    fm = None
    if entity in MULTI_ENTITIES:  # deals and smart processes have none (object-fields.md)
        fm = [{"id": int(x["ID"]), "typeId": m, "valueType": x.get("VALUE_TYPE"), "value": x.get("VALUE")}
              for m in MULTI_FIELDS for x in row.get(m) or []]
        item["hasPhone"] = "Y" if any(e["typeId"] == "PHONE" for e in fm) else "N"
        item["hasEmail"] = "Y" if any(e["typeId"] == "EMAIL" for e in fm) else "N"
        for alias, (type_id, value_type) in ITEM_FM_ALIASES.items():
            item[alias] = next((e["value"] for e in fm
                                if e["typeId"] == type_id and value_type in (None, e["valueType"])), "")
    item["entityTypeId"] = entity_type_id(entity)
    wanted = [str(s) for s in select or []]
    if not wanted or wanted == ["*"]:
        if fm is not None:
            item["fm"] = fm
        return item
    if "*" in wanted:
        return item
    keep = set(wanted) | {"id"}
    return {k: v for k, v in item.items() if k in keep}


def parse_date(value: Any, tz: dt.tzinfo = dt.timezone.utc) -> dt.datetime:
    """ISO 8601 with offset (the portal's format); a naive value is taken in ``tz`` (UTC unless
    told). The portal itself reads a value without an offset in its own time zone: the REST layer
    turns dates with ``strtotime`` under the server's time zone (``CRestUtil::unConvertDateTime``,
    avshatalov48/bitrix-core-business modules/rest/classes/general/rest_util.php), so the store
    passes its ``tz`` for filters and written fields."""
    if isinstance(value, dt.datetime):
        d = value
    else:
        d = dt.datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    return d if d.tzinfo else d.replace(tzinfo=tz)


_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _now() -> dt.datetime:
    """The current time as the portal stores it: to the second (its MySQL ``DATETIME`` columns keep
    no fractions), so a time read back through the API compares equal to the stored one."""
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


class CrmStore:
    """The CRM tables of one portal, safe for concurrent requests (one lock; requests are short)."""

    def __init__(self, *, tz: dt.tzinfo = dt.timezone(dt.timedelta(hours=3))) -> None:
        self.tz = tz  # the portal's time zone: dates are rendered in it, as the portal does
        self.lock = threading.RLock()
        self.tables: dict[str, dict[int, dict]] = {e: {} for e in ENTITIES}
        self.ids: dict[str, list[int]] = {e: [] for e in ENTITIES}
        self.next_id: dict[str, int] = {e: 1 for e in ENTITIES}
        self.users: dict[int, dict] = {}
        # telephony.externalLine.*: NUMBER → {"ID", "NUMBER", "NAME", "CRM_AUTO_CREATE"}; a fresh box has none
        self.external_lines: dict[str, dict] = {}
        self.sip_lines: dict[str, dict] = {}  # the telephony module's SIP PBX connections, "sip<N>" → line
        self.next_line_id = 1
        # tasks.task.* / task.commentitem.*: ID → task; each task's "comments" is a list of comment dicts
        # {"ID", "AUTHOR_ID", "POST_DATE", "POST_MESSAGE"} (IDs come from one portal-wide sequence)
        self.tasks: dict[int, dict] = {}
        self.next_task_id = 1
        self.next_comment_id = 1
        self.multi_seq = 1
        self.newest: dict[str, dt.datetime | None] = {e: None for e in ENTITIES}  # max DATE_CREATE ever
        self.rows_listed = 0  # rows returned by list calls: benchmarks measure any client with it
        # per table, (DATE_MODIFY as a timestamp, ID) in order, built at the first ``>DATE_MODIFY`` list
        # and kept in step by every write: the index a real portal's database has on that column
        self._modified: dict[str, list[tuple[float, int]]] = {}
        self.userfields = UserFields(tz)  # custom-field definitions (userfields.py)
        self.uf_entity: dict[str, str] = dict(UF_ENTITY_IDS)  # table → ENTITY_ID of its custom fields
        # smart processes (dynamic.py): entityTypeId → the type as crm.type.get answers it
        self.types: dict[int, dict] = {}
        from .timeline import TimelineStore  # here: timeline.py builds on this module's helpers
        self.timeline = TimelineStore(self)  # activities, timeline comments, products, product rows

    def add_table(self, entity: str, uf_entity_id: str) -> None:
        """A table for a smart process's items (``dynamic_entity``) whose custom fields belong to
        ``uf_entity_id`` (``CRM_<type id>``)."""
        with self.lock:
            self.tables.setdefault(entity, {})
            self.ids.setdefault(entity, [])
            self.next_id.setdefault(entity, 1)
            self.newest.setdefault(entity, None)
            self.uf_entity[entity] = uf_entity_id

    def uf_fields(self, entity: str) -> dict[str, dict]:
        """FIELD_NAME → definition of the table's custom fields."""
        return self.userfields.of(self.uf_entity[entity])

    # --- writing ------------------------------------------------------------------------------
    def _normalise(self, entity: str, fields: dict, *, partial: bool) -> dict:
        out: dict[str, Any] = {}
        ufs = self.uf_fields(entity) if any(str(k).startswith("UF_") for k in fields) else {}
        for key, value in fields.items():
            if key in ufs:
                out[key] = self.userfields.value(ufs[key], value)
                continue
            if key not in ALL_FIELDS[entity] or key == "ID":
                continue  # the portal ignores unknown and read-only fields
            if key in DATE_FIELDS:
                out[key] = parse_date(value, self.tz)  # no offset: the portal's time zone
            elif key in MULTI_FIELDS:
                out[key] = value
            elif key in ("CONTACT_IDS", "COMPANY_IDS"):
                out[key] = [int(v) for v in (value or []) if int(v) > 0]
            elif key in INT_FIELDS:
                out[key] = int(value) if value not in (None, "", "0", 0) else None
            elif key in MONEY_FIELDS:
                # a money column (decimal(18,2)): "12500" is kept as "12500.00", as the portal shows it
                out[key] = None if value in (None, "") else f"{_number(value):.2f}"
            else:
                out[key] = None if value is None else str(value)
        return out

    @staticmethod
    def _bind_contacts(entity: str, rec: dict, changes: dict) -> None:
        """Keep a deal's ``CONTACT_ID`` one of its ``CONTACT_IDS`` bindings, as the portal does:
        ``CONTACT_IDS`` (when given) replaces the bindings and its first contact becomes the
        primary one, ``CONTACT_ID``; a ``CONTACT_ID`` given alone becomes the only binding.
        ``CONTACT_ID`` is documented as deprecated in favour of the bindings
        (bitrix-tools/b24-rest-docs api-reference/crm/deals/crm-deal-get.md, CONTACT_ID;
        api-reference/crm/deals/contacts/crm-deal-contact-items-get.md). A contact's ``COMPANY_IDS``
        and ``COMPANY_ID`` ("основная компания", crm/contacts/crm-contact-add.md) and a smart-process
        item's contacts follow the same rule (``LIST_BINDINGS``)."""
        if entity not in LIST_BINDINGS:
            return
        many, one = LIST_BINDINGS[entity]
        if many in changes:
            ids = list(dict.fromkeys(changes[many]))
        elif one in changes:
            ids = [changes[one]] if changes[one] else []
        else:
            return
        changes[many] = ids
        changes[one] = ids[0] if ids else None
        rec.update({k: changes[k] for k in (many, one)})

    def set_bindings(self, entity: str, record_id: int, ids: list[int], *, now: dt.datetime | None = None) -> None:
        """Replace a record's list binding (``LIST_BINDINGS``), the first being the primary one."""
        with self.lock:
            rec = self.tables[entity].get(int(record_id))
            if rec is None:
                raise StoreError("", "Not found")
            changes = {LIST_BINDINGS[entity][0]: [int(i) for i in ids]}
            self._bind_contacts(entity, rec, changes)
            self._set_modified(entity, rec, now or _now())

    def _multi(self, current: list[dict], given: Any) -> list[dict]:
        """Multi-field semantics of add/update: entries with ID update (or DELETE='Y' remove) an
        existing value; entries without ID are added."""
        result = [dict(v) for v in current]
        for entry in given or []:
            if not isinstance(entry, dict) or not entry.get("VALUE") and not entry.get("ID"):
                continue
            if entry.get("ID"):
                for i, v in enumerate(result):
                    if str(v["ID"]) == str(entry["ID"]):
                        if str(entry.get("DELETE", "")).upper() == "Y":
                            del result[i]
                        else:
                            v.update({k: str(entry[k]) for k in ("VALUE", "VALUE_TYPE") if k in entry})
                        break
            else:
                result.append({"ID": str(self.multi_seq), "VALUE_TYPE": str(entry.get("VALUE_TYPE", "WORK")),
                               "VALUE": str(entry["VALUE"])})
                self.multi_seq += 1
        return result

    def add(self, entity: str, fields: dict, *, now: dt.datetime | None = None, keep_times: bool = False,
            record_id: int | None = None) -> int:
        """Insert a record; returns its ID. ``keep_times``: honour DATE_CREATE/DATE_MODIFY (import);
        ``record_id``: seeding only (a restored backup keeps its IDs)."""
        now = now or _now()
        rec = self._normalise(entity, fields, partial=False)
        with self.lock:
            if record_id is None:
                record_id = self.next_id[entity]
            if record_id in self.tables[entity]:
                raise StoreError("ERROR_CORE", f"ID {record_id} exists")
            self.next_id[entity] = max(self.next_id[entity], record_id + 1)
            for m in MULTI_FIELDS:
                if m in rec:
                    rec[m] = self._multi([], rec[m])
            self._bind_contacts(entity, rec, dict(rec))
            if entity in LIST_BINDINGS:
                rec.setdefault(LIST_BINDINGS[entity][0], [])
            if not keep_times or "DATE_CREATE" not in rec:
                rec["DATE_CREATE"] = now
            if not keep_times or "DATE_MODIFY" not in rec:
                rec["DATE_MODIFY"] = rec["DATE_CREATE"] if keep_times else now
            rec["ID"] = record_id
            if self.newest[entity] is None or rec["DATE_CREATE"] > self.newest[entity]:
                self.newest[entity] = rec["DATE_CREATE"]
            self.tables[entity][record_id] = rec
            if entity in self._modified:
                bisect.insort(self._modified[entity], (rec["DATE_MODIFY"].timestamp(), record_id))
            ids = self.ids[entity]
            if not ids or ids[-1] < record_id:
                ids.append(record_id)
            else:
                bisect.insort(ids, record_id)
        return record_id

    def update(self, entity: str, record_id: int, fields: dict, *, now: dt.datetime | None = None) -> None:
        now = now or _now()
        changes = self._normalise(entity, fields, partial=True)
        changes.pop("DATE_CREATE", None)
        changes.pop("DATE_MODIFY", None)
        with self.lock:
            rec = self.tables[entity].get(int(record_id))
            if rec is None:
                raise StoreError("NOT_FOUND", f"{entity} with ID {record_id} not found")
            for m in MULTI_FIELDS:
                if m in changes:
                    changes[m] = self._multi(rec.get(m, []), changes[m])
            self._bind_contacts(entity, changes, changes)
            rec.update(changes)
            self._set_modified(entity, rec, now)

    def set_deal_contacts(self, deal_id: int, items: list[dict], *, now: dt.datetime | None = None) -> None:
        """``crm.deal.contact.items.set``: replace the bindings; the item with ``IS_PRIMARY=Y`` (else
        the first) becomes ``CONTACT_ID``; ``SORT`` orders them (default: the given order)."""
        with self.lock:
            rec = self.tables["deal"].get(int(deal_id))
            if rec is None:
                raise StoreError("", "Not found.")
            ordered = sorted(enumerate(items), key=lambda p: (int(p[1].get("SORT") or (p[0] + 1) * 10), p[0]))
            ids = list(dict.fromkeys(int(i["CONTACT_ID"]) for _, i in ordered if int(i.get("CONTACT_ID") or 0) > 0))
            primary = next((int(i["CONTACT_ID"]) for _, i in ordered
                            if str(i.get("IS_PRIMARY", "")).upper() == "Y" and int(i.get("CONTACT_ID") or 0) > 0), None)
            if primary is not None:
                ids.remove(primary)
                ids.insert(0, primary)
            rec["CONTACT_IDS"] = ids
            rec["CONTACT_ID"] = ids[0] if ids else None
            self._set_modified("deal", rec, now or _now())

    def delete(self, entity: str, record_id: int) -> None:
        with self.lock:
            rec = self.tables[entity].pop(int(record_id), None)
            if rec is None:
                raise StoreError("NOT_FOUND", f"{entity} with ID {record_id} not found")
            self._unindex(entity, rec)
            i = bisect.bisect_left(self.ids[entity], int(record_id))
            del self.ids[entity][i]
            self.timeline.forget_owner(entity, int(record_id))  # as the portal deletes "all related objects"

    def get(self, entity: str, record_id: int) -> dict | None:
        return self.tables[entity].get(int(record_id))

    def edited_by_hand(self, entity: str) -> None:
        """A test or a tool changed records of ``entity`` in place, not through the store: its
        DATE_MODIFY index is built anew at the next list."""
        with self.lock:
            self._modified.pop(entity, None)

    def _set_modified(self, entity: str, rec: dict, when: dt.datetime) -> None:
        """Set a record's DATE_MODIFY (under the lock), its index entry with it."""
        self._unindex(entity, rec)
        rec["DATE_MODIFY"] = when
        if entity in self._modified:
            bisect.insort(self._modified[entity], (when.timestamp(), rec["ID"]))

    def _unindex(self, entity: str, rec: dict) -> None:
        index = self._modified.get(entity)
        if index is not None and rec.get("DATE_MODIFY") is not None:
            entry = (rec["DATE_MODIFY"].timestamp(), rec["ID"])
            i = bisect.bisect_left(index, entry)
            if i < len(index) and index[i] == entry:
                del index[i]

    def _modified_since(self, entity: str, since: dt.datetime) -> list[int]:
        """The IDs whose DATE_MODIFY is ``since`` or later, ascending (under the lock)."""
        index = self._modified.get(entity)
        if index is None:
            index = self._modified[entity] = sorted((r["DATE_MODIFY"].timestamp(), rid)
                                                    for rid, r in self.tables[entity].items())
        return sorted(rid for _, rid in index[bisect.bisect_left(index, (since.timestamp(),)):])

    # --- users, tasks, telephony --------------------------------------------------------------
    def add_user(self, fields: dict) -> int:
        """Invite a user (``user.add``); returns the new ID. The e-mail must be valid and unused
        (compared case-insensitively, as the portal's database collation does)."""
        email = str(fields.get("EMAIL") or "").strip()
        if not _EMAIL_RE.match(email):
            raise StoreError("ERROR_ARGUMENT", "wrong_email")
        with self.lock:
            if any(str(u.get("EMAIL") or "").lower() == email.lower() for u in self.users.values()):
                raise StoreError("ERROR_ARGUMENT", "Пользователь с таким email уже существует")
            user_id = max(self.users, default=0) + 1
            user = {k: v for k, v in fields.items() if k not in ("ID", "ACTIVE")}
            departments = fields.get("UF_DEPARTMENT")
            if departments is not None and not isinstance(departments, list):
                departments = list(departments.values()) if isinstance(departments, dict) else [departments]
            user.update({"ID": str(user_id), "ACTIVE": True, "EMAIL": email,
                         "NAME": str(fields.get("NAME") or ""), "LAST_NAME": str(fields.get("LAST_NAME") or ""),
                         "UF_DEPARTMENT": [int(d) for d in departments or []],
                         "USER_TYPE": "extranet" if str(fields.get("EXTRANET", "")).upper() == "Y" else "employee"})
            self.users[user_id] = user
        return user_id

    def add_task(self, title: str, created: dt.datetime, created_by: int,
                 comments: Iterable[tuple] = (), task_id: int | None = None, *,
                 responsible_id: int | None = None) -> int:
        """Add a task with its comments; returns its ID. Each comment is ``(author_id, post_date,
        text)`` or, to keep IDs when seeding a restored backup, ``(comment_id, author_id, post_date,
        text)``."""
        created = parse_date(created)
        with self.lock:
            if task_id is None:
                task_id = self.next_task_id
            if task_id in self.tasks:
                raise StoreError("ERROR_CORE", f"task {task_id} exists")
            self.next_task_id = max(self.next_task_id, task_id + 1)
            self.tasks[task_id] = {"ID": task_id, "TITLE": str(title), "CREATED_BY": int(created_by),
                                   "RESPONSIBLE_ID": int(responsible_id or created_by), "CREATED_DATE": created,
                                   "CHANGED_DATE": created, "STATUS": 2, "comments": []}
            for c in comments:
                if len(c) == 4:
                    self.add_comment(task_id, c[1], c[2], c[3], comment_id=c[0])
                else:
                    self.add_comment(task_id, *c)
        return task_id

    def add_comment(self, task_id: int, author_id: int, post_date: dt.datetime, text: str, *,
                    comment_id: int | None = None) -> int:
        """Add a comment to a task; returns the comment's ID."""
        post_date = parse_date(post_date)
        with self.lock:
            task = self.tasks.get(int(task_id))
            if task is None:
                raise StoreError("NOT_FOUND", f"task {task_id} not found")
            if comment_id is None:
                comment_id = self.next_comment_id
            self.next_comment_id = max(self.next_comment_id, comment_id + 1)
            task["comments"].append({"ID": int(comment_id), "AUTHOR_ID": int(author_id), "POST_DATE": post_date,
                                     "POST_MESSAGE": str(text)})
            task["CHANGED_DATE"] = max(task["CHANGED_DATE"], post_date)
        return comment_id

    def delete_comment(self, task_id: int, comment_id: int) -> None:
        """Remove one comment (tests inject "the box shows fewer comments" with it)."""
        with self.lock:
            task = self.tasks.get(int(task_id))
            kept = [c for c in (task or {}).get("comments", []) if c["ID"] != int(comment_id)]
            if task is None or len(kept) == len(task["comments"]):
                raise StoreError("NOT_FOUND", f"comment {comment_id} of task {task_id} not found")
            task["comments"] = kept

    def add_sip_line(self, title: str, server: str = "127.0.0.1") -> str:
        """Connect a SIP PBX (what the admin does in Telephony → Connect → Office PBX); returns the
        line's id as ``voximplant.line.get`` lists it (``sip<N>``)."""
        with self.lock:
            line_id = f"sip{len(self.sip_lines) + 1}"
            self.sip_lines[line_id] = {"TITLE": str(title), "SERVER": str(server)}
        return line_id

    def add_external_line(self, number: str, name: str = "", crm_auto_create: str = "Y") -> int:
        """Add a telephony external line; returns its ID (``telephony.externalLine.add``)."""
        number = str(number or "").strip()
        if not number:
            raise StoreError("ERROR_CORE", "NUMBER should not be empty")
        with self.lock:
            if number in self.external_lines:
                raise StoreError("ERROR_CORE", "Line already exists")
            line_id = self.next_line_id
            self.next_line_id += 1
            self.external_lines[number] = {"ID": line_id, "NUMBER": number, "NAME": str(name or ""),
                                           "CRM_AUTO_CREATE": "N" if str(crm_auto_create).upper() == "N" else "Y"}
        return line_id

    def delete_external_line(self, number: str) -> None:
        number = str(number or "").strip()
        if not number:
            raise StoreError("ERROR_CORE", "NUMBER should not be empty")
        with self.lock:
            if self.external_lines.pop(number, None) is None:
                raise StoreError("ERROR_CORE", f"Could not find line with number {number}")

    # --- reading ------------------------------------------------------------------------------
    def render(self, entity: str, rec: dict, select: Iterable[str] | None, *, item: bool = False,
               ufs: dict[str, dict] | None = None) -> dict:
        """A record as the classic methods answer it (``item``: custom-field values as crm.item.*
        answers them, for ``render_item``). ``ufs``: the table's custom fields, when the caller
        renders many records."""
        ufs = self.uf_fields(entity) if ufs is None else ufs
        fields = _select_fields(entity, select, ufs)
        out = {}
        for f in fields:
            v = rec.get(f)
            if f in ufs:
                v = self.userfields.render(ufs[f], v, item=item)
            elif f in DATE_FIELDS and v is not None:
                v = v.astimezone(self.tz).isoformat(timespec="seconds")
            elif f in MULTI_FIELDS:
                if not v:
                    continue  # the portal omits empty multi-fields
                v = [dict(x, TYPE_ID=f) for x in v]
            elif f in ("CONTACT_IDS", "COMPANY_IDS"):
                v = [str(x) for x in (v or [])]
            elif v is None and f in ZERO_LINKS:
                v = "0"  # an empty link reads "0", not null
            elif v is not None and f in INT_FIELDS:
                v = str(v)
            out[f] = v
        return out

    def list(self, entity: str, *, filter: dict | None, order: dict | None, select: list | None, start: int,
             count_cost_s: float = 0.0, page_size: int = 50,
             nested: bool = False, item: bool = False) -> tuple[list[dict], int | None, float]:
        """One page of a list call: (rows, total or None when start=-1, simulated cost in seconds).

        With ``start >= 0`` the portal counts every matching row (``total``); that costs
        ``count_cost_s`` per row, which is what makes offset paging slow on big tables.
        ``nested``: the filter may hold sub-filters under numeric keys and ``logic: OR``
        (``crm.item.list`` only; the classic ``crm.lead.list`` has no OR). ``item``: see ``render``.
        """
        ufs = self.uf_fields(entity)
        predicates, id_floor = _compile_filter(entity, filter or {}, self.tz, nested=nested,
                                               uf={n: self.userfields.converter(d) for n, d in ufs.items()})

        def draw(r: dict) -> dict:
            return self.render(entity, r, select, item=item, ufs=ufs)

        order = {str(k).upper(): str(v).upper() for k, v in (order or {}).items()} or {"ID": "ASC"}
        with self.lock:
            table = self.tables[entity]
            ids = self.ids[entity]
            id_only = list(order) == ["ID"]
            named = named_ids(filter or {}, self.tz)
            if named is not None:
                # ``ID``/``=ID``/``@ID`` name the records: read them like a primary-key lookup (the
                # same rows, the store's own speed); the predicates still decide, the ID's included
                ids = sorted(i for i in named if i in table)
            elif (since := modified_since(filter or {}, self.tz)) is not None:
                # ``>DATE_MODIFY``: read the range of the column's index (a superset: the predicates decide)
                ids = self._modified_since(entity, since)
            ceiling = id_ceiling(filter or {})  # ``<ID``/``<=ID``: the walk ends there, as an index range does
            hi = bisect.bisect_right(ids, ceiling) if ceiling is not None else len(ids)
            if id_only:
                desc = order["ID"] == "DESC"
                lo = bisect.bisect_right(ids, id_floor) if id_floor is not None else 0
                walk = reversed(ids[lo:hi]) if desc else (ids[i] for i in range(lo, hi))
                if start < 0:
                    rows = []
                    for rid in walk:
                        rec = table[rid]
                        if all(p(rec) for p in predicates):
                            rows.append(rec)
                            if len(rows) == page_size:
                                break
                    self.rows_listed += len(rows)
                    return [draw(r) for r in rows], None, 0.0
                if not predicates and not desc:
                    # counting an unfiltered range needs no scan here; its cost is simulated below
                    total = len(ids) - lo
                    page = [table[rid] for rid in ids[lo + start: lo + start + page_size]]
                    self.rows_listed += len(page)
                    return [draw(r) for r in page], total, total * count_cost_s
                matching = [table[rid] for rid in walk if all(p(table[rid]) for p in predicates)]
            else:
                lo = bisect.bisect_right(ids, id_floor) if id_floor is not None else 0
                matching = [table[rid] for rid in ids[lo:hi] if all(p(table[rid]) for p in predicates)]
                for key, direction in reversed(list(order.items())):
                    matching.sort(key=lambda r, k=key: _sort_key(_comparable(r, k)), reverse=direction == "DESC")
            total = len(matching)
            page = matching[max(start, 0): max(start, 0) + page_size]
            self.rows_listed += len(page)
            cost = total * count_cost_s if start >= 0 else 0.0
            return [draw(r) for r in page], (total if start >= 0 else None), cost

    def count(self, entity: str) -> int:
        return len(self.tables[entity])


def _sort_key(v):
    if v is None:
        return (0, "")
    if isinstance(v, (int, float)):
        return (1, v)
    if isinstance(v, dt.datetime):
        return (1, v.timestamp())
    return (2, str(v))


def _select_fields(entity: str, select, ufs: dict | None = None) -> tuple[str, ...]:
    """The fields a select names: ``*`` is every field but the custom fields and the multi-fields,
    ``UF_*`` every custom field, multi-fields only by name; no select is ``*`` + ``UF_*``
    (crm/contacts/crm-contact-list.md, crm/deals/crm-deal-list.md, "select")."""
    ufs = ufs or {}
    if not select:
        return BASE_FIELDS[entity] + tuple(ufs)
    fields: list[str] = []
    for s in select:
        s = str(s).upper()
        if s == "*":
            fields.extend(f for f in BASE_FIELDS[entity] if f not in fields)
        elif s == "UF_*":
            fields.extend(f for f in ufs if f not in fields)
        elif (s in ALL_FIELDS[entity] or s in ufs) and s not in fields:
            fields.append(s)
    if "ID" not in fields:
        fields.insert(0, "ID")  # the portal always returns ID
    return tuple(fields)


# Filter key prefixes, longest first (bitrix-tools/b24-rest-docs api-reference/crm/leads/crm-lead-list.md
# and api-reference/crm/universal/crm-item-list.md, "filter"): comparisons, IN / NOT IN, LIKE with the
# value as a substring (`%`, `!%`) or as a pattern holding `%` (`=%`, `%=`, `!=%`, `!%=`), equality.
_PREFIXES = ("!=%", "!%=", "!@", "!%", "!=", "=%", "%=", ">=", "<=", "!", ">", "<", "@", "=", "%")
_NEGATED = {"!": "=", "!=": "=", "!@": "@", "!%": "%", "!=%": "=%", "!%=": "=%"}


def _number(value) -> Decimal:
    try:
        return Decimal(str(value).strip().replace(",", "."))
    except InvalidOperation:
        raise ValueError(f"not a number: {value!r}") from None


def _comparable(rec: dict, field: str):
    """A record's value as filters compare it: money as a number, an empty link as 0."""
    v = rec.get(field)
    if field in MONEY_FIELDS:
        return None if v in (None, "") else _number(v)
    if field in INT_FIELDS and field != "ID":
        return v or 0
    return v


def _php_list(value) -> list:
    """A filter value given as an array: JSON list, or PHP-style keys 0, 1, … from a query string."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return list(value.values())
    return [value]


def _like(pattern: str) -> re.Pattern:
    """SQL LIKE → regex: ``%`` any run, ``_`` one character; case-insensitive as the portal's
    MySQL collation compares text."""
    out = "".join(".*" if ch == "%" else "." if ch == "_" else re.escape(ch) for ch in pattern)
    return re.compile(out, re.IGNORECASE | re.DOTALL)


def _compile_filter(entity: str, flt: dict, tz: dt.tzinfo = dt.timezone.utc, *, nested: bool = False,
                    uf: dict | None = None, _top: bool = True):
    """Filter keys with the portal's prefixes → predicates (all must hold); also the lower bound for
    ``>ID``/``>=ID`` (used to bisect into the sorted IDs). A value without a UTC offset is a time in
    the portal's zone ``tz``. With ``nested``, numeric keys hold sub-filters and ``logic: OR`` joins
    a level's conditions by OR (crm.item.list's filter, api-reference/crm/universal/crm-item-list.md).
    ``uf``: the table's custom fields (FIELD_NAME → how a filter value of it is read); a multiple
    field matches when one of its values does."""
    uf = uf or {}
    if not isinstance(flt, dict):
        raise StoreError("INVALID_ARG_VALUE", "filter must be an object")
    logic = "AND"
    if nested:
        logic = next((str(v).upper() for k, v in flt.items() if str(k).lower() == "logic"), "AND")
    predicates = []
    id_floor: int | None = None
    for raw_key, value in flt.items():
        key = str(raw_key)
        if nested and key.lower() == "logic":
            continue
        if nested and key.isdigit():
            if not isinstance(value, dict):
                raise StoreError("INVALID_ARG_VALUE", f"sub-filter {key!r} must be an object")
            sub, _ = _compile_filter(entity, value, tz, nested=True, uf=uf, _top=False)
            predicates.append(lambda r, s=tuple(sub): all(p(r) for p in s))
            continue
        op = next((p for p in _PREFIXES if key.startswith(p)), "")
        field = key[len(op):].upper()
        if field not in ALL_FIELDS[entity] and field not in uf:
            raise StoreError("INVALID_ARG_VALUE", f"unknown filter field {field!r}")
        try:
            pred = _condition(field, op, value, tz, uf.get(field))
        except (ValueError, TypeError, ArithmeticError):
            raise StoreError("INVALID_ARG_VALUE", f"bad filter value for {key}") from None
        if _top and field == "ID" and op in (">", ">=") and logic == "AND" and not isinstance(value, (list, dict)) \
                and str(value).strip() not in ("", "None"):
            floor = int(str(value).strip()) - (op == ">=")
            id_floor = floor if id_floor is None else max(id_floor, floor)
            continue
        predicates.append(pred)
    if logic == "OR":
        return ([lambda r, s=tuple(predicates): any(p(r) for p in s)] if predicates else []), None
    return predicates, id_floor


def _top_conditions(flt: Any) -> list[tuple[str, str, Any]] | None:
    """A filter's top-level conditions as (prefix, FIELD, value), or None when they are not all
    required (``logic: OR``) or the filter is no object: what a key lookup or range may narrow by."""
    if not isinstance(flt, dict) or any(str(k).lower() == "logic" and str(v).upper() == "OR" for k, v in flt.items()):
        return None
    out = []
    for raw_key, value in flt.items():
        key = str(raw_key)
        op = next((p for p in _PREFIXES if key.startswith(p)), "")
        out.append((op, key[len(op):].upper(), value))
    return out


def named_ids(flt: dict, tz: dt.tzinfo) -> set[int] | None:
    """The IDs a top-level ``ID``/``=ID``/``@ID`` condition allows (every such condition must hold),
    a superset of what the whole filter matches; None when the filter names no IDs this way (or
    joins its conditions by OR, or a value is not read as an ID: then the filter decides alone)."""
    read, named = _converter("ID", tz), None
    for op, field, value in _top_conditions(flt) or ():
        if op not in ("", "=", "@") or field != "ID":
            continue
        values = _php_list(value) if (op == "@" or isinstance(value, (list, dict))) else [value]
        try:
            ids = {read(v) for v in values if v not in ("", None)}
        except (ValueError, TypeError):
            return None
        named = ids if named is None else named & ids
    return named


def id_floor(flt: Any) -> int | None:
    """The lowest ID a top-level ``>ID``/``>=ID`` lets through, minus one (None: no such bound, an OR,
    or a value not read as a number; then the conditions decide alone)."""
    return _id_bound(flt, {">": 0, ">=": -1}, max)


def id_ceiling(flt: Any) -> int | None:
    """The highest ID a top-level ``<ID``/``<=ID`` lets through (None as for :func:`id_floor`)."""
    return _id_bound(flt, {"<": -1, "<=": 0}, min)


def _id_bound(flt: Any, shift: dict[str, int], tightest) -> int | None:
    bounds = []
    for op, field, value in _top_conditions(flt) or ():
        if field == "ID" and op in shift:
            try:
                bounds.append(int(str(value).strip()) + shift[op])
            except (TypeError, ValueError):
                return None
    return tightest(bounds) if bounds else None


def modified_since(flt: dict, tz: dt.tzinfo) -> dt.datetime | None:
    """The latest bound of a top-level ``>DATE_MODIFY``/``>=DATE_MODIFY`` condition (every record the
    filter allows was modified then or later); None without one, under OR, or with a value the
    filter reads otherwise (then the filter decides alone)."""
    read, bounds = _converter("DATE_MODIFY", tz), []
    for op, field, value in _top_conditions(flt) or ():
        if op not in (">", ">=") or field != "DATE_MODIFY":
            continue
        if isinstance(value, (list, dict)) or value in ("", None):
            return None
        try:
            bounds.append(read(value))
        except (ValueError, TypeError):
            return None
    return max(bounds) if bounds else None


def _condition(field: str, op: str, value, tz: dt.tzinfo, conv=None):
    """One ``{prefix}{FIELD}: value`` condition → predicate over a stored record (``conv``: how
    the value is read, for a custom field)."""
    negate = op in _NEGATED
    base = _NEGATED.get(op, op)
    conv = conv or _converter(field, tz)
    if base in ("%", "=%", "%="):
        if base == "%":  # the value is a substring: its own % and _ are plain characters
            pattern = re.compile(".*" + re.escape(str(value)) + ".*", re.IGNORECASE | re.DOTALL)
        else:
            pattern = _like(str(value))
        if field in MULTI_FIELDS:
            def test(r, p=pattern):
                return any(p.fullmatch(str(e.get("VALUE", ""))) for e in r.get(field) or [])
        else:
            def test(r, p=pattern):
                v = r.get(field)
                if isinstance(v, dt.datetime):
                    v = v.astimezone(tz).isoformat(timespec="seconds")
                return v is not None and bool(p.fullmatch(str(v)))
    elif base in ("", "=", "@"):
        values = _php_list(value) if (base == "@" or isinstance(value, (list, dict))) else [value]
        empty = any(v in ("", None) for v in values)
        wanted = {conv(v) for v in values if v not in ("", None)}
        if field in MULTI_FIELDS:  # PHONE / EMAIL: the exact value of one of the record's entries
            def test(r, w=wanted, e=empty):
                have = {str(x.get("VALUE", "")) for x in r.get(field) or []}
                return bool(have & w) or (e and not have)
        else:
            def test(r, w=wanted, e=empty):
                v = _comparable(r, field)
                if isinstance(v, list):  # a multiple custom field or a list binding: any of its values
                    return bool(w.intersection(v)) or (e and not v)
                return v in w or (e and v in (None, "", 0))
    elif base in (">", ">=", "<", "<="):
        if isinstance(value, (list, dict)):
            raise ValueError("a comparison takes one value")
        target = conv(value)
        cmp = {">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
               "<": lambda a, b: a < b, "<=": lambda a, b: a <= b}[base]
        if field in MULTI_FIELDS:
            def test(r, t=target, c=cmp):
                return any(c(str(x.get("VALUE", "")), t) for x in r.get(field) or [])
        else:
            def test(r, t=target, c=cmp):
                v = _comparable(r, field)
                try:
                    return v is not None and t is not None and c(v, t)
                except TypeError:
                    return False
    else:  # pragma: no cover - every prefix is handled above
        raise ValueError(op)
    return (lambda r, t=test: not t(r)) if negate else test


def _converter(field: str, tz: dt.tzinfo = dt.timezone.utc):
    """How a filter value of ``field`` is read: dates in the portal's zone unless they carry an
    offset, money as a number (the column is decimal), links and IDs as integers."""
    if field in DATE_FIELDS:
        return lambda v: parse_date(v, tz)
    if field in MONEY_FIELDS:
        return _number
    if field in INT_FIELDS:
        return lambda v: int(str(v).strip()) if str(v).strip() not in ("", "None") else 0
    return lambda v: None if v is None else str(v)

"""The sandbox portal's timeline and catalogue: activities (calls, e-mails, meetings), timeline
comments, products and deal product rows, with the REST methods that serve them.

Kept apart from :class:`~sandbox.portal.store.CrmStore` (which holds the four entities) and attached
to it as ``CrmStore.timeline``; it shares the CRM store's lock, so an owner's deletion and the
removal of its activities are one step. Written from the vendor's REST docs
(bitrix-tools/b24-rest-docs) and, where they are silent, the vendor's REST proxy
(bitrix24-core-corp modules/crm/classes/general/restservice.php, ``CCrmActivityRestProxy``):

- ``crm.activity.*`` (api-reference/crm/timeline/activities/activity-base/): classic UPPER_CASE
  fields, IDs and enums as strings on the wire; CREATED, LAST_UPDATED, AUTHOR_ID, EDITOR_ID are set
  by the portal (read-only in crm-activity-fields.md; there is no import mode for activities);
  ``COMMUNICATIONS``, ``FILES`` and ``BINDINGS`` come only when named in ``select``
  (crm-activity-list.md); the default order is START_TIME ascending (``innerGetList``).
- A call through the cloud's telephony is TYPE_ID 2 with PROVIDER_ID ``VOXIMPLANT_CALL`` /
  PROVIDER_TYPE_ID ``CALL`` (the example of crm-activity-get.md) and ORIGIN_ID ``VI_<call id>``
  (the voximplant CRM helper's ``'origin_id' => 'VI_'.$callId``): its duration is END_TIME −
  START_TIME (0 for a missed call), DIRECTION 1 incoming / 2 outgoing (data-types.md,
  ``crm_enum_activitydirection``), the phone is its one ``COMMUNICATIONS`` entry, and the record is
  a file of the activity: ``FILES`` ``[{"id", "url"}]`` with the portal's
  ``/bitrix/tools/crm_show_file.php?fileId=…&ownerTypeId=6&ownerId=<activity>`` link, exactly the
  shape crm-activity-list.md ("Получение вложений") shows. The sandbox does not serve that URL.
- ``crm.timeline.comment.*`` (api-reference/crm/timeline/comments/).
- ``crm.product.list/get/add/update`` (api-reference/crm/outdated/products/), ``crm.deal.productrows.get/set``
  (api-reference/crm/deals/) and ``crm.item.productrow.list`` (api-reference/crm/universal/product-rows/).
- Deleting a lead, deal, contact or company deletes "all related objects: activities, history,
  timeline records" (crm-lead-delete.md, crm-deal-delete.md, crm-contact-delete.md): its comments
  and product rows go; an activity bound to it alone goes, one bound to other records too loses
  that binding only (:meth:`TimelineStore.forget_owner`).
"""

from __future__ import annotations

import bisect
import datetime as dt
import re
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from .errors import StoreError
from .store import (
    _NEGATED,
    _PREFIXES,
    ENTITY_TYPE_IDS,
    _like,
    _php_list,
    _sort_key,
    id_ceiling,
    id_floor,
    named_ids,
    parse_date,
)

if TYPE_CHECKING:
    from .store import CrmStore

PAGE = 50
MEETING, CALL, TASK, EMAIL = 1, 2, 3, 4
# crm_enum_activitytype (api-reference/crm/data-types.md, "Перечисления дел"): 0 is "undefined"
ACTIVITY_TYPES = {1: "Meeting", 2: "Call", 3: "Task", 4: "E-mail", 5: "Calendar event", 6: "Provider activity"}
# What crm.activity.add creates: calls, meetings and e-mails only (CCrmActivityRestProxy::innerAdd); a
# task is made with tasks.task.add (crm-activity-add.md, TYPE_ID).
REST_ADDABLE_TYPES = {MEETING, CALL, EMAIL}
# The provider each of those types gets (the vendor's Activity\Provider classes: Call, Meeting, Email;
# VOXIMPLANT_CALL/CALL is the example of crm-activity-get.md).
PROVIDERS = {CALL: ("VOXIMPLANT_CALL", "CALL"), MEETING: ("CRM_MEETING", "MEETING"), EMAIL: ("CRM_EMAIL", "EMAIL")}
STATUS_WAITING, STATUS_COMPLETED = 1, 2  # crm_enum_activitystatus
DIRECTION_INCOMING, DIRECTION_OUTGOING = 1, 2  # crm_enum_activitydirection
ACTIVITY_FILE_OWNER_TYPE = 6  # ownerTypeId of an activity's file link (crm-activity-list.md, "Получение вложений")

# crm.activity.fields (crm-activity-fields.md): name → (type, flags, title); flags R required,
# O read-only, I immutable, M multiple, D deprecated. Rendered in this order (that of the docs' get).
ACTIVITY_FIELD_INFO: dict[str, tuple[str, str, str]] = {
    "ID": ("integer", "O", "ID"), "OWNER_ID": ("integer", "I", "ID владельца"),
    "OWNER_TYPE_ID": ("crm_enum_ownertype", "I", "Тип владельца"), "TYPE_ID": ("crm_enum_activitytype", "RI", "Тип"),
    "PROVIDER_ID": ("string", "", "ID провайдера"), "PROVIDER_TYPE_ID": ("string", "", "Тип провайдера"),
    "PROVIDER_GROUP_ID": ("string", "", "Тип коннектора"),
    "ASSOCIATED_ENTITY_ID": ("integer", "O", "ID связанной с делом сущности"), "SUBJECT": ("string", "R", "Тема"),
    "CREATED": ("datetime", "O", "Дата создания"), "LAST_UPDATED": ("datetime", "O", "Дата изменения"),
    "START_TIME": ("datetime", "", "Начало"), "END_TIME": ("datetime", "", "Срок"),
    "DEADLINE": ("datetime", "", "Срок исполнения"), "COMPLETED": ("char", "", "Выполнено"),
    "STATUS": ("crm_enum_activitystatus", "", "Статус"), "RESPONSIBLE_ID": ("user", "R", "Ответственный"),
    "PRIORITY": ("crm_enum_activitypriority", "", "Важность"),
    "NOTIFY_TYPE": ("crm_enum_activitynotifytype", "", "Тип уведомлений"),
    "NOTIFY_VALUE": ("integer", "", "Параметр уведомления"), "DESCRIPTION": ("string", "", "Описание"),
    "DESCRIPTION_TYPE": ("crm_enum_contenttype", "", "Тип описания"),
    "DIRECTION": ("crm_enum_activitydirection", "", "Направление"), "LOCATION": ("string", "", "Место"),
    "SETTINGS": ("object", "", "Настройки"), "ORIGINATOR_ID": ("string", "", "Внешний источник"),
    "ORIGIN_ID": ("string", "", "Внешний код"), "AUTHOR_ID": ("user", "O", "Создал"),
    "EDITOR_ID": ("user", "O", "Изменил"), "PROVIDER_PARAMS": ("object", "", "Параметры провайдера"),
    "PROVIDER_DATA": ("string", "", "Данные провайдера"), "RESULT_MARK": ("integer", "", "RESULT_MARK"),
    "RESULT_VALUE": ("double", "", "RESULT_VALUE"), "RESULT_SUM": ("double", "", "RESULT_SUM"),
    "RESULT_CURRENCY_ID": ("string", "", "RESULT_CURRENCY_ID"), "RESULT_STATUS": ("integer", "", "RESULT_STATUS"),
    "RESULT_STREAM": ("integer", "", "RESULT_STREAM"), "RESULT_SOURCE_ID": ("string", "", "RESULT_SOURCE_ID"),
    "AUTOCOMPLETE_RULE": ("integer", "", "Автозаполнение"),
    "BINDINGS": ("crm_activity_binding", "OM", "Привязки"),
    "COMMUNICATIONS": ("crm_activity_communication", "RM", "Канал коммуникации"),
    "FILES": ("diskfile", "M", "Файлы"), "WEBDAV_ELEMENTS": ("diskfile", "MD", "Добавленные файлы"),
    "IS_INCOMING_CHANNEL": ("char", "O", "IS_INCOMING_CHANNEL"),
}
# Returned only when named in select (crm-activity-list.md: "Чтобы получить поля COMMUNICATIONS и FILES
# укажите их в select"; BINDINGS and IS_INCOMING_CHANNEL are absent from the docs' list answer too).
ACTIVITY_ON_REQUEST = ("COMMUNICATIONS", "FILES", "BINDINGS", "IS_INCOMING_CHANNEL")
ACTIVITY_BASE = tuple(f for f in ACTIVITY_FIELD_INFO if f not in ACTIVITY_ON_REQUEST and f != "WEBDAV_ELEMENTS")
ACTIVITY_KINDS = {**{f: "str" for f in ACTIVITY_BASE},
                  **{f: "int" for f in ("ID", "OWNER_ID", "OWNER_TYPE_ID", "TYPE_ID", "ASSOCIATED_ENTITY_ID",
                                        "STATUS", "RESPONSIBLE_ID", "PRIORITY", "NOTIFY_TYPE", "NOTIFY_VALUE",
                                        "DESCRIPTION_TYPE", "DIRECTION", "AUTHOR_ID", "EDITOR_ID", "RESULT_MARK",
                                        "RESULT_STATUS", "RESULT_STREAM", "AUTOCOMPLETE_RULE")},
                  **{f: "date" for f in ("CREATED", "LAST_UPDATED", "START_TIME", "END_TIME", "DEADLINE")},
                  **{f: "num" for f in ("RESULT_VALUE", "RESULT_SUM")}}
# What the portal fills in a new activity (the docs' get example shows these values).
ACTIVITY_DEFAULTS = {"PROVIDER_GROUP_ID": None, "ASSOCIATED_ENTITY_ID": 0, "COMPLETED": "N", "PRIORITY": 2,
                     "NOTIFY_TYPE": 0, "NOTIFY_VALUE": 0, "DESCRIPTION": "", "DESCRIPTION_TYPE": 1, "DIRECTION": 0,
                     "LOCATION": "", "SETTINGS": {}, "ORIGINATOR_ID": None, "ORIGIN_ID": None, "PROVIDER_PARAMS": {},
                     "PROVIDER_DATA": None, "RESULT_MARK": 0, "RESULT_VALUE": None, "RESULT_SUM": None,
                     "RESULT_CURRENCY_ID": None, "RESULT_STATUS": 0, "RESULT_STREAM": 0, "RESULT_SOURCE_ID": None,
                     "AUTOCOMPLETE_RULE": 0, "IS_INCOMING_CHANNEL": "N"}
# Never written by add/update: read-only fields, and DEADLINE, which "is not set directly: START_TIME for
# a call and a meeting, END_TIME for a task" (crm-activity-fields.md).
ACTIVITY_PORTAL_SET = {"ID", "CREATED", "LAST_UPDATED", "AUTHOR_ID", "EDITOR_ID", "ASSOCIATED_ENTITY_ID", "BINDINGS",
                       "DEADLINE", "IS_INCOMING_CHANNEL", "WEBDAV_ELEMENTS"}
ACTIVITY_IMMUTABLE = {"OWNER_ID", "OWNER_TYPE_ID", "TYPE_ID"}  # isImmutable: kept on update

# crm.timeline.comment.fields (crm-timeline-comment-fields.md)
COMMENT_FIELD_INFO = {"ID": ("integer", "O", "ID"), "CREATED": ("datetime", "O", "Дата добавления"),
                      "ENTITY_ID": ("integer", "RI", "ID элемента, к которому привязан комментарий"),
                      "ENTITY_TYPE": ("string", "RI", "Тип элемента, к которому привязан комментарий"),
                      "AUTHOR_ID": ("integer", "I", "Автор"), "COMMENT": ("string", "", "Текст комментария"),
                      "FILES": ("attached_diskfile", "M", "Список файлов")}
COMMENT_KINDS = {"ID": "int", "CREATED": "date", "ENTITY_ID": "int", "ENTITY_TYPE": "str", "AUTHOR_ID": "int",
                 "COMMENT": "str"}
COMMENT_ORDER = ("ID", "CREATED", "AUTHOR_ID")  # "Поддерживаются только поля ID, CREATED, AUTHOR_ID"

# crm.product.* (api-reference/crm/outdated/products/crm-product-fields.md)
PRODUCT_FIELDS = ("ID", "CATALOG_ID", "PRICE", "CURRENCY_ID", "NAME", "CODE", "DESCRIPTION", "DESCRIPTION_TYPE",
                  "ACTIVE", "SECTION_ID", "SORT", "VAT_ID", "VAT_INCLUDED", "MEASURE", "XML_ID", "DATE_CREATE",
                  "TIMESTAMP_X", "CREATED_BY", "MODIFIED_BY")
PRODUCT_KINDS = {**{f: "str" for f in PRODUCT_FIELDS},
                 **{f: "int" for f in ("ID", "CATALOG_ID", "SECTION_ID", "SORT", "VAT_ID", "MEASURE", "CREATED_BY",
                                       "MODIFIED_BY")},
                 "PRICE": "num", "DATE_CREATE": "date", "TIMESTAMP_X": "date"}
PRODUCT_CATALOG_ID = 1  # the portal's one CRM product catalogue
# A row of a catalogue product takes the product's unit (crm-deal-productrows-set.md, MEASURE_CODE /
# MEASURE_NAME); the catalogue's products are counted in pieces, the unit of the docs' examples.
PIECE = (796, "шт")

# Product rows: the stored (classic) names and crm.item.productrow's names (crm-item-productrow-list.md,
# data-types.md "crm_item_product_row"); the owner's short type code (data-types.md, "Тип объекта CRM").
ROW_NAMES = {"ID": "id", "OWNER_ID": "ownerId", "OWNER_TYPE": "ownerType", "PRODUCT_ID": "productId",
             "PRODUCT_NAME": "productName", "PRICE": "price", "PRICE_ACCOUNT": "priceAccount",
             "PRICE_EXCLUSIVE": "priceExclusive", "PRICE_NETTO": "priceNetto", "PRICE_BRUTTO": "priceBrutto",
             "QUANTITY": "quantity", "DISCOUNT_TYPE_ID": "discountTypeId", "DISCOUNT_RATE": "discountRate",
             "DISCOUNT_SUM": "discountSum", "TAX_RATE": "taxRate", "TAX_INCLUDED": "taxIncluded",
             "CUSTOMIZED": "customized", "MEASURE_CODE": "measureCode", "MEASURE_NAME": "measureName",
             "SORT": "sort", "XML_ID": "xmlId", "TYPE": "type", "STORE_ID": "storeId"}
ROW_KINDS = {"id": "int", "ownerId": "int", "ownerType": "str", "productId": "int", "productName": "str",
             "price": "num", "priceAccount": "num", "priceExclusive": "num", "priceNetto": "num", "priceBrutto": "num",
             "quantity": "num", "discountTypeId": "int", "discountRate": "num", "discountSum": "num", "taxRate": "num",
             "taxIncluded": "str", "customized": "str", "measureCode": "int", "measureName": "str", "sort": "int",
             "xmlId": "str", "type": "int", "storeId": "int"}
OWNER_ABBR = {"lead": "L", "deal": "D", "contact": "C", "company": "CO"}
DISCOUNT_MONETARY, DISCOUNT_PERCENTAGE = 1, 2
CENT = Decimal("0.01")

TIMELINE_METHODS = frozenset({
    "crm.activity.fields", "crm.activity.list", "crm.activity.get", "crm.activity.add", "crm.activity.update",
    "crm.activity.delete", "crm.timeline.comment.fields", "crm.timeline.comment.list", "crm.timeline.comment.get",
    "crm.timeline.comment.add", "crm.timeline.comment.update", "crm.timeline.comment.delete", "crm.product.list",
    "crm.product.get", "crm.product.add", "crm.product.update", "crm.deal.productrows.get",
    "crm.deal.productrows.set", "crm.item.productrow.list"})


def _field_info(table: dict[str, tuple[str, str, str]]) -> dict:
    """A ``*.fields`` answer (crm_rest_field_description, api-reference/crm/data-types.md)."""
    out = {}
    for name, (kind, flags, title) in table.items():
        out[name] = {"type": kind, "isRequired": "R" in flags, "isReadOnly": "O" in flags,
                     "isImmutable": "I" in flags, "isMultiple": "M" in flags, "isDynamic": False, "title": title}
        if "D" in flags:
            out[name]["isDeprecated"] = True
    return out


def _intval(raw: Any) -> int:
    """PHP's intval of a request value (0 for anything that is not a number)."""
    m = re.match(r"^\s*([+-]?\d+)", str(raw)) if raw is not None and not isinstance(raw, (list, dict)) else None
    return int(m.group(1)) if m else 0


def _money(value: Any) -> Decimal:
    try:
        return Decimal(str(value).strip().replace(",", ".")) if value not in (None, "") else Decimal(0)
    except InvalidOperation:
        raise StoreError("INVALID_ARG_VALUE", f"not a number: {value!r}") from None


def _number(d: Decimal | None) -> int | float | None:
    """A number as the portal's JSON writes a float column: 999 for 999.0, 899.1 otherwise."""
    if d is None:
        return None
    return int(d) if d == d.to_integral_value() else float(d)


def _param(p: dict, name: str) -> Any:
    """A parameter in its documented case or upper case (the classic proxy resolves both)."""
    return p.get(name, p.get(name.upper()))


def _fields_param(p: dict, *, lower_only: bool = False) -> dict:
    value = p.get("fields") if lower_only else _param(p, "fields")
    if isinstance(value, list):
        value = {str(i): v for i, v in enumerate(value)}
    if not isinstance(value, dict):
        raise StoreError("", "Parameter 'fields' must be array.") if not lower_only else \
            StoreError("100", "Required parameter 'fields' is not defined")
    return value


def _compile(flt: Any, kinds: dict[str, str], tz: dt.tzinfo) -> list[Callable[[dict], bool]]:
    """A list method's ``filter`` (the prefixes of store._PREFIXES) → predicates over stored rows.
    Keys naming no field are skipped, as the vendor's SQL builder does for the classic lists."""
    if not isinstance(flt, dict):
        raise StoreError("INVALID_ARG_VALUE", "filter must be an object")
    preds = []
    for raw_key, value in flt.items():
        key = str(raw_key)
        op = next((x for x in _PREFIXES if key.startswith(x)), "")
        name = key[len(op):]
        kind = kinds.get(name) or kinds.get(name.upper())
        if kind is None:
            continue
        name = name if name in kinds else name.upper()
        try:
            preds.append(_condition(name, op, value, kind, tz))
        except (ValueError, TypeError, ArithmeticError):
            raise StoreError("INVALID_ARG_VALUE", f"bad filter value for {key}") from None
    return preds


def _convert(kind: str, tz: dt.tzinfo) -> Callable[[Any], Any]:
    if kind == "int":
        return lambda v: int(str(v).strip()) if str(v).strip() not in ("", "None") else 0
    if kind == "date":
        return lambda v: parse_date(v, tz)
    if kind == "num":
        return lambda v: Decimal(str(v).strip().replace(",", "."))
    return str


def _condition(name: str, op: str, value: Any, kind: str, tz: dt.tzinfo) -> Callable[[dict], bool]:
    negate = op in _NEGATED
    base = _NEGATED.get(op, op)
    conv = _convert(kind, tz)

    def text(r: dict) -> str | None:
        v = r.get(name)
        if isinstance(v, dt.datetime):
            return v.astimezone(tz).isoformat(timespec="seconds")
        return None if v is None else str(v)

    if base in ("%", "=%", "%="):
        pattern = (re.compile(".*" + re.escape(str(value)) + ".*", re.IGNORECASE | re.DOTALL) if base == "%"
                   else _like(str(value)))

        def test(r: dict) -> bool:
            t = text(r)
            return t is not None and bool(pattern.fullmatch(t))
    elif base in ("", "=", "@"):
        values = _php_list(value) if (base == "@" or isinstance(value, (list, dict))) else [value]
        empty = any(v in ("", None) for v in values)
        wanted = {conv(v) for v in values if v not in ("", None)}

        def test(r: dict) -> bool:
            v = r.get(name)
            return v in wanted or (empty and v in (None, "", 0))
    else:
        if isinstance(value, (list, dict)):
            raise ValueError("a comparison takes one value")
        target = conv(value)
        cmp = {">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b,
               "<=": lambda a, b: a <= b}[base]

        def test(r: dict) -> bool:
            v = r.get(name)
            try:
                return v is not None and cmp(v, target)
            except TypeError:
                return False
    return (lambda r: not test(r)) if negate else test


def _ordered(rows: list[dict], order: Any, allowed: set[str] | dict, default: dict[str, str]) -> list[dict]:
    """Sort by ``order`` ({field: ASC|DESC}, fields outside ``allowed`` ignored), ``default`` when
    none is usable; ties by ID ascending, as the primary key reads."""
    pairs = [(str(k), str(v).upper()) for k, v in (order.items() if isinstance(order, dict) else [])]
    pairs = [(k if k in allowed else k.upper(), d) for k, d in pairs if k in allowed or k.upper() in allowed]
    rows = sorted(rows, key=lambda r: r.get("ID", r.get("id", 0)))
    for key, direction in reversed(pairs or list(default.items())):
        rows.sort(key=lambda r, k=key: _sort_key(r.get(k)), reverse=direction == "DESC")
    return rows


def _by_id_without_count(p: dict) -> bool:
    """``order: {ID: ASC}`` (or DESC) and ``start=-1``: a page is the first matches in ID order within
    the filter's ID bounds."""
    order = _param(p, "order")
    try:
        start = int(p.get("start", 0) or 0)
    except (TypeError, ValueError):
        return False
    return start < 0 and isinstance(order, dict) and len(order) == 1 and \
        str(next(iter(order))).upper() == "ID" and str(next(iter(order.values()))).upper() in ("ASC", "DESC")


def _page(rows: list, p: dict, count_cost_s: float) -> tuple[list, dict, float]:
    """A page of 50 from ``start``; the envelope's total/next; the simulated count cost. ``start=-1``
    skips the count: total 0, no next (api-reference/performance/huge-data.md)."""
    try:
        start = int(p.get("start", 0) or 0)
    except (TypeError, ValueError):
        raise StoreError("INVALID_ARG_VALUE", "start must be an integer") from None
    page = rows[max(start, 0):max(start, 0) + PAGE]
    if start < 0:
        return page, {"total": 0}, 0.0
    extra: dict = {"total": len(rows)}
    if start + len(page) < len(rows):
        extra["next"] = start + len(page)
    return page, extra, len(rows) * count_cost_s


class TimelineStore:
    """Activities, timeline comments, products and product rows of one portal (see the module doc)."""

    def __init__(self, crm: CrmStore) -> None:
        self.crm = crm
        self.lock = crm.lock  # one lock: an owner's deletion and its timeline's go together
        self.activities: dict[int, dict] = {}
        self._activity_ids: list[int] | None = None  # sorted keys of ``activities``, rebuilt after a change
        self.comments: dict[int, dict] = {}
        self._comments_by_owner: dict[tuple[str, int], list[dict]] | None = None  # rebuilt after a change
        self.products: dict[int, dict] = {}
        self.rows: dict[tuple[str, int], list[dict]] = {}  # (owner type code, owner ID) → rows
        self.next_id = {"activity": 1, "comment": 1, "product": 1, "row": 1, "communication": 1, "file": 1}

    def _new_id(self, kind: str, wanted: int | None = None) -> int:
        new_id = self.next_id[kind] if wanted is None else int(wanted)
        self.next_id[kind] = max(self.next_id[kind], new_id + 1)
        return new_id

    # --- owners ---------------------------------------------------------------------------------
    def owner(self, type_id: int, owner_id: int) -> dict | None:
        """The CRM record an activity or comment is bound to (leads, deals, contacts, companies)."""
        entity = ENTITY_TYPE_IDS.get(int(type_id))
        return None if entity is None else self.crm.tables[entity].get(int(owner_id))

    def forget_owner(self, entity: str, record_id: int) -> None:
        """The owner is deleted: its comments and product rows go, its activities go unless they
        are bound to another record too, which then keeps them (and becomes the owner)."""
        type_id = {e: t for t, e in ENTITY_TYPE_IDS.items()}.get(entity)
        if type_id is None:
            return  # a smart process's item: no timeline kept for those here
        key = {"OWNER_TYPE_ID": type_id, "OWNER_ID": int(record_id)}
        with self.lock:
            for act_id in [a for a, act in self.activities.items() if key in act["BINDINGS"]]:
                act = self.activities[act_id]
                act["BINDINGS"] = [b for b in act["BINDINGS"] if b != key]
                if not act["BINDINGS"]:
                    del self.activities[act_id]
                    self._activity_ids = None
                elif (act["OWNER_TYPE_ID"], act["OWNER_ID"]) == (type_id, int(record_id)):
                    act.update(act["BINDINGS"][0])
            for com_id in [c for c, com in self.comments.items()
                           if (com["ENTITY_TYPE"], com["ENTITY_ID"]) == (entity, int(record_id))]:
                del self.comments[com_id]
                self._comments_by_owner = None
            self.rows.pop((OWNER_ABBR[entity], int(record_id)), None)

    # --- activities -----------------------------------------------------------------------------
    def put_activity(self, fields: dict, *, activity_id: int | None = None, now: dt.datetime | None = None,
                     user_id: int = 1) -> int:
        """Store an activity whose fields are already checked (``crm.activity.add``, or seeding a
        backup: then ``activity_id``, CREATED and LAST_UPDATED may be given and are kept)."""
        now = now or dt.datetime.now(dt.UTC)
        with self.lock:
            act = dict(ACTIVITY_DEFAULTS)
            act.update({k: v for k, v in fields.items() if k in ACTIVITY_FIELD_INFO})
            act["ID"] = self._new_id("activity", activity_id)
            if act["ID"] in self.activities:
                raise StoreError("ERROR_CORE", f"activity {act['ID']} exists")
            act.setdefault("CREATED", now)
            act.setdefault("LAST_UPDATED", act["CREATED"])
            act.setdefault("AUTHOR_ID", user_id)
            act.setdefault("EDITOR_ID", act["AUTHOR_ID"])
            provider = PROVIDERS.get(act["TYPE_ID"])
            if provider and not act.get("PROVIDER_ID"):
                act["PROVIDER_ID"], act["PROVIDER_TYPE_ID"] = provider
            act["COMMUNICATIONS"] = [dict(c, ID=self._new_id("communication")) for c in act.get("COMMUNICATIONS") or []]
            if not act.get("BINDINGS"):
                act["BINDINGS"] = _bindings(act.get("OWNER_TYPE_ID"), act.get("OWNER_ID"), act["COMMUNICATIONS"])
            if not act.get("OWNER_ID") and act["BINDINGS"]:
                act.update(act["BINDINGS"][0])  # the owner is the first binding when none was given
            act["FILES"] = [self._new_id("file", f) for f in act.get("FILES") or []]
            _derive(act)
            if act["ID"] not in self.activities:
                self._activity_ids = None
            self.activities[act["ID"]] = act
        return act["ID"]

    def render_activity(self, act: dict, select: list[str] | None, base_url: str) -> dict:
        wanted = [str(s).upper() for s in select or []]
        names = list(ACTIVITY_BASE) if not wanted or "*" in wanted else []
        names += [f for f in wanted if f in ACTIVITY_FIELD_INFO and f not in names and f != "WEBDAV_ELEMENTS"]
        if "ID" not in names:
            names.insert(0, "ID")
        out: dict[str, Any] = {}
        for f in names:
            v = act.get(f)
            if f == "COMMUNICATIONS":
                v = [self._render_communication(c) for c in v]
            elif f == "BINDINGS":
                v = [{"OWNER_TYPE_ID": str(b["OWNER_TYPE_ID"]), "OWNER_ID": str(b["OWNER_ID"])} for b in v]
            elif f == "FILES":
                v = [{"id": fid, "url": f"{base_url}/bitrix/tools/crm_show_file.php?fileId={fid}"
                                        f"&ownerTypeId={ACTIVITY_FILE_OWNER_TYPE}&ownerId={act['ID']}&auth="}
                     for fid in v]
            elif f in ("SETTINGS", "PROVIDER_PARAMS"):
                v = v or []  # PHP's empty array
            elif isinstance(v, dt.datetime):
                v = v.astimezone(self.crm.tz).isoformat(timespec="seconds")
            elif isinstance(v, (int, Decimal)) and not isinstance(v, bool):
                v = str(v)
            out[f] = v
        return out

    def _render_communication(self, c: dict) -> dict:
        out = {"ID": str(c["ID"]), "TYPE": c["TYPE"], "VALUE": c["VALUE"], "ENTITY_ID": str(c["ENTITY_ID"]),
               "ENTITY_TYPE_ID": str(c["ENTITY_TYPE_ID"])}
        rec = self.owner(c["ENTITY_TYPE_ID"], c["ENTITY_ID"])
        if rec is not None and c["ENTITY_TYPE_ID"] == 3:  # a contact's settings, as the docs' example shows
            company = self.crm.tables["company"].get(rec.get("COMPANY_ID") or 0) or {}
            out["ENTITY_SETTINGS"] = {"HONORIFIC": rec.get("HONORIFIC"), "NAME": rec.get("NAME") or "",
                                      "SECOND_NAME": rec.get("SECOND_NAME") or "",
                                      "LAST_NAME": rec.get("LAST_NAME") or "",
                                      "COMPANY_TITLE": company.get("TITLE") or "",
                                      "COMPANY_ID": str(rec["COMPANY_ID"]) if rec.get("COMPANY_ID") else ""}
        return out

    # --- comments ------------------------------------------------------------------------------
    def put_comment(self, entity: str, entity_id: int, text: str, author_id: int, *,
                    created: dt.datetime | None = None, comment_id: int | None = None) -> int:
        with self.lock:
            new_id = self._new_id("comment", comment_id)
            if new_id in self.comments:
                raise StoreError("ERROR_CORE", f"comment {new_id} exists")
            self._comments_by_owner = None
            self.comments[new_id] = {"ID": new_id, "ENTITY_TYPE": entity, "ENTITY_ID": int(entity_id),
                                     "CREATED": parse_date(created or dt.datetime.now(dt.UTC)),
                                     "COMMENT": str(text), "AUTHOR_ID": int(author_id)}
        return new_id

    def render_comment(self, com: dict, select: list[str] | None) -> dict:
        wanted = [str(s).upper() for s in select or [] if str(s).upper() in COMMENT_FIELD_INFO]
        out: dict[str, Any] = {}
        for f in ("ID", "ENTITY_ID", "ENTITY_TYPE", "CREATED", "COMMENT", "AUTHOR_ID", "FILES"):
            if wanted and f not in wanted and f != "ID":
                continue
            v = com.get(f)
            if f == "FILES":
                v = {}  # no attached files: the docs' example shows an empty object
            elif isinstance(v, dt.datetime):
                v = v.astimezone(self.crm.tz).isoformat(timespec="seconds")
            elif isinstance(v, int):
                v = str(v)
            out[f] = v
        return out

    # --- products and product rows --------------------------------------------------------------
    def put_product(self, fields: dict, *, product_id: int | None = None, now: dt.datetime | None = None,
                    user_id: int = 1) -> int:
        now = parse_date(now or dt.datetime.now(dt.UTC))
        with self.lock:
            new_id = self._new_id("product", product_id)
            prod = {"ID": new_id, "CATALOG_ID": PRODUCT_CATALOG_ID, "PRICE": None, "CURRENCY_ID": None, "NAME": "",
                    "CODE": None, "DESCRIPTION": None, "DESCRIPTION_TYPE": "text", "ACTIVE": "Y", "SECTION_ID": None,
                    "SORT": 100, "VAT_ID": None, "VAT_INCLUDED": "N", "MEASURE": None, "XML_ID": None,
                    "DATE_CREATE": now, "TIMESTAMP_X": now, "CREATED_BY": user_id, "MODIFIED_BY": user_id}
            prod.update(_product_values(fields))
            prod["XML_ID"] = prod["XML_ID"] or str(new_id)
            self.products[new_id] = prod
        return new_id

    def update_product(self, product_id: int, fields: dict, *, user_id: int = 1) -> None:
        """``crm.product.update``: the given writable fields change; the portal stamps TIMESTAMP_X
        and MODIFIED_BY. A PRICE comes with its CURRENCY_ID: "Необходимо обязательно указать
        CURRENCY_ID для установки цены" (crm-product-update.md), so a PRICE alone is not set."""
        values = _product_values(fields)
        if "PRICE" in values and "CURRENCY_ID" not in values:
            del values["PRICE"]
        with self.lock:
            prod = self.products.get(product_id)
            if prod is None:
                raise StoreError("", "Not found")
            prod.update(values)
            prod["TIMESTAMP_X"], prod["MODIFIED_BY"] = parse_date(dt.datetime.now(dt.UTC)), user_id

    def render_product(self, prod: dict, select: list[str] | None) -> dict:
        wanted = [str(s).upper() for s in select or []]
        names = [f for f in PRODUCT_FIELDS if not wanted or "*" in wanted or f in wanted or f == "ID"]
        out = {}
        for f in names:
            v = prod.get(f)
            if isinstance(v, dt.datetime):
                v = v.astimezone(self.crm.tz).isoformat(timespec="seconds")
            elif isinstance(v, (int, Decimal)):
                v = str(v)
            out[f] = v
        return out

    def set_rows(self, owner_type: str, owner_id: int, rows: list, *, now: dt.datetime | None = None) -> None:
        """``crm.*.productrows.set``: every row is replaced by ``rows`` ("Существующие позиции, не
        переданные в метод, будут удалены", crm-deal-productrows-set.md). A deal's amount is computed
        from its rows: IS_MANUAL_OPPORTUNITY is "N" by default, "сумма рассчитывается автоматически"
        (crm-deal-add.md), and this store keeps no manual mode; so OPPORTUNITY becomes Σ PRICE ×
        QUANTITY and the deal counts as modified. An empty set leaves the amount as it was."""
        with self.lock:
            built = [self._row(owner_type, int(owner_id), r if isinstance(r, dict) else {}) for r in rows]
            self.rows[(owner_type, int(owner_id))] = built
            if owner_type == "D" and built:
                total = sum((r["PRICE"] * r["QUANTITY"] for r in built), Decimal(0)).quantize(CENT, ROUND_HALF_UP)
                self.crm.update("deal", int(owner_id), {"OPPORTUNITY": str(total)}, now=now)

    def _row(self, owner_type: str, owner_id: int, given: dict) -> dict:
        """One product row with the portal's defaults and derived prices (crm-deal-productrows-set.md,
        "Список доступных полей"). PRICE is the final unit price (discount and tax applied): the
        example rows read PRICE_EXCLUSIVE = PRICE / (1 + tax), PRICE_NETTO = PRICE_EXCLUSIVE before
        the discount, PRICE_BRUTTO = PRICE_NETTO with tax (crm-item-productrow-list.md)."""
        g = {str(k).upper(): v for k, v in given.items()}
        discount_type = _intval(g["DISCOUNT_TYPE_ID"]) if "DISCOUNT_TYPE_ID" in g else DISCOUNT_PERCENTAGE
        if "DISCOUNT_TYPE_ID" in g:
            if discount_type == DISCOUNT_PERCENTAGE and g.get("DISCOUNT_RATE") in (None, ""):
                raise StoreError("ERROR_CORE", "Discount Rate (DISCOUNT_RATE) is required if Percentage Discount "
                                               "Type (DISCOUNT_TYPE_ID) is defined<br>")
            if discount_type == DISCOUNT_PERCENTAGE and _money(g["DISCOUNT_RATE"]) == 100 \
                    and g.get("DISCOUNT_SUM") in (None, ""):
                raise StoreError("ERROR_CORE", "Discount Sum (DISCOUNT_SUM) is required if Percentage Discount "
                                               "Type (DISCOUNT_TYPE_ID) is defined and Discount Rate "
                                               "(DISCOUNT_RATE) is 100%<br>")
            if discount_type == DISCOUNT_MONETARY and g.get("DISCOUNT_SUM") in (None, ""):
                raise StoreError("ERROR_CORE", "Discount Sum (DISCOUNT_SUM) is required if Monetary Discount "
                                               "Type (DISCOUNT_TYPE_ID) is defined<br>")
        tax = _money(g["TAX_RATE"]) if g.get("TAX_RATE") not in (None, "") else None
        tax_factor = 1 + (tax or Decimal(0)) / 100
        price = _money(g.get("PRICE")) if g.get("PRICE") not in (None, "") else \
            _money(g.get("PRICE_EXCLUSIVE")) * tax_factor
        exclusive = price / tax_factor
        if discount_type == DISCOUNT_MONETARY or _money(g.get("DISCOUNT_RATE")) >= 100:
            discount_sum = _money(g.get("DISCOUNT_SUM"))
            netto = exclusive + discount_sum
            rate = (discount_sum / netto * 100) if netto else Decimal(0)
        else:
            rate = _money(g.get("DISCOUNT_RATE"))
            netto = exclusive / (1 - rate / 100)
            discount_sum = netto - exclusive
        product = self.products.get(_intval(g.get("PRODUCT_ID")))
        row_id = self._new_id("row")
        name = product["NAME"] if product else (str(g["PRODUCT_NAME"]) if g.get("PRODUCT_NAME") else f"[{row_id}]")
        measure = PIECE if product else (0, "")
        return {"ID": row_id, "OWNER_ID": owner_id, "OWNER_TYPE": owner_type,
                "PRODUCT_ID": _intval(g.get("PRODUCT_ID")), "PRODUCT_NAME": name, "ORIGINAL_PRODUCT_NAME": name,
                "PRODUCT_DESCRIPTION": g.get("PRODUCT_DESCRIPTION"), "PRICE": price.quantize(CENT, ROUND_HALF_UP),
                "PRICE_EXCLUSIVE": exclusive.quantize(CENT, ROUND_HALF_UP),
                "PRICE_NETTO": netto.quantize(CENT, ROUND_HALF_UP), "PRICE_BRUTTO": (netto * tax_factor).quantize(
                    CENT, ROUND_HALF_UP), "QUANTITY": _money(g.get("QUANTITY", 1)),
                "DISCOUNT_TYPE_ID": discount_type, "DISCOUNT_RATE": rate.quantize(CENT, ROUND_HALF_UP),
                "DISCOUNT_SUM": discount_sum.quantize(CENT, ROUND_HALF_UP), "TAX_RATE": tax,
                "TAX_INCLUDED": "Y" if str(g.get("TAX_INCLUDED", "N")).upper() == "Y" else "N", "CUSTOMIZED": "Y",
                "MEASURE_CODE": _intval(g["MEASURE_CODE"]) if "MEASURE_CODE" in g else measure[0],
                "MEASURE_NAME": str(g["MEASURE_NAME"]) if "MEASURE_NAME" in g else measure[1],
                "SORT": _intval(g.get("SORT", 0)), "XML_ID": None, "TYPE": 1, "STORE_ID": 0}

    @staticmethod
    def render_row(row: dict) -> dict:
        """A row as crm.deal.productrows.get writes it (its example: IDs as strings, prices as
        numbers, PRICE_ACCOUNT as a string with two decimals)."""
        out = {}
        for k, v in row.items():
            if k in ("ID", "OWNER_ID"):
                v = str(v)
            elif k == "PRICE_ACCOUNT":
                continue
            elif isinstance(v, Decimal):
                v = _number(v)
            out[k] = v
        out["PRICE_ACCOUNT"] = f"{row['PRICE']:.2f}"
        return out

    @staticmethod
    def item_row(row: dict) -> dict:
        """A row as crm.item.productrow.* writes it (camelCase, numbers; crm-item-productrow-list.md)."""
        out = {name: (_number(row[k]) if isinstance(row.get(k), Decimal) else row.get(k)) for k, name in ROW_NAMES.items()
               if k != "PRICE_ACCOUNT"}
        out["priceAccount"] = _number(row["PRICE"])
        return {name: out[name] for name in ROW_NAMES.values()}

    # --- the REST methods ------------------------------------------------------------------------
    def call(self, method: str, p: dict, *, user_id: int, base_url: str, count_cost_s: float) -> tuple[dict, float]:
        """Serve one of ``TIMELINE_METHODS`` → (envelope without time, simulated count cost).
        Raises StoreError with the portal's error code and text."""
        api = _Api(self, user_id, base_url, count_cost_s)
        return getattr(api, method.replace(".", "_"))(p)


def _bindings(owner_type_id: Any, owner_id: Any, communications: list[dict]) -> list[dict]:
    """The owner, then each communication's record, once each (``innerAdd`` + ``prepareCommunications``)."""
    out: list[dict] = []
    pairs = [(owner_type_id, owner_id)] + [(c["ENTITY_TYPE_ID"], c["ENTITY_ID"]) for c in communications]
    for type_id, rec_id in pairs:
        b = {"OWNER_TYPE_ID": _intval(type_id), "OWNER_ID": _intval(rec_id)}
        if b["OWNER_TYPE_ID"] > 0 and b["OWNER_ID"] > 0 and b not in out:
            out.append(b)
    return out


def _derive(act: dict) -> None:
    """Fields the portal keeps in step: STATUS follows COMPLETED; DEADLINE is START_TIME (END_TIME
    for a task) (crm-activity-fields.md, DEADLINE)."""
    act["COMPLETED"] = "Y" if str(act.get("COMPLETED") or "N").upper() == "Y" else "N"
    act["STATUS"] = STATUS_COMPLETED if act["COMPLETED"] == "Y" else STATUS_WAITING
    act["DEADLINE"] = act.get("END_TIME") if act.get("TYPE_ID") == TASK else act.get("START_TIME")


class _Api:
    """The REST methods over a TimelineStore (one instance per call)."""

    def __init__(self, store: TimelineStore, user_id: int, base_url: str, count_cost_s: float) -> None:
        self.s, self.user_id, self.base_url, self.count_cost_s = store, int(user_id), base_url, count_cost_s
        self.tz = store.crm.tz

    # crm.activity.* ----------------------------------------------------------------------------
    def crm_activity_fields(self, p: dict) -> tuple[dict, float]:
        return {"result": _field_info(ACTIVITY_FIELD_INFO)}, 0.0

    def crm_activity_list(self, p: dict) -> tuple[dict, float]:
        flt = _param(p, "filter") or {}
        flt = dict(flt) if isinstance(flt, dict) else flt
        bindings = flt.pop("BINDINGS", None) if isinstance(flt, dict) else None
        preds = _compile(flt, ACTIVITY_KINDS, self.tz)
        if bindings is None and _by_id_without_count(p):
            return self._activity_page_by_id(p, flt, preds), 0.0
        named = named_ids(flt, self.tz)  # ``@ID`` and the like: read like a key lookup
        with self.s.lock:
            acts = self.s.activities
            rows = [a for a in (acts.values() if named is None else (acts[i] for i in sorted(named) if i in acts))
                    if all(pr(a) for pr in preds)]
            if bindings is not None:
                rows = _by_bindings(rows, _php_list(bindings))
            rows = _ordered(rows, _param(p, "order"), ACTIVITY_KINDS, {"START_TIME": "ASC"})
            page, extra, cost = _page(rows, p, self.count_cost_s)
            select = [str(s) for s in _php_list(_param(p, "select") or [])]
            return {"result": [self.s.render_activity(a, select, self.base_url) for a in page], **extra}, cost

    def _activity_page_by_id(self, p: dict, flt: dict, preds: list) -> dict:
        """The same page as the general path (IDs in order within the filter's ``>ID``/``<=ID`` bounds, no
        count), read like a primary-key range: the store's own speed, not a change in what the portal answers."""
        floor, ceiling = id_floor(flt), id_ceiling(flt)
        desc = str(next(iter(_param(p, "order").values()))).upper() == "DESC"
        with self.s.lock:
            if self.s._activity_ids is None:
                self.s._activity_ids = sorted(self.s.activities)
            ids = self.s._activity_ids
            lo = bisect.bisect_right(ids, floor) if floor is not None else 0
            hi = bisect.bisect_right(ids, ceiling) if ceiling is not None else len(ids)
            page = []
            for aid in (reversed(ids[lo:hi]) if desc else ids[lo:hi]):
                act = self.s.activities[aid]
                if all(pr(act) for pr in preds):
                    page.append(act)
                    if len(page) == PAGE:
                        break
            select = [str(s) for s in _php_list(_param(p, "select") or [])]
            return {"result": [self.s.render_activity(a, select, self.base_url) for a in page], "total": 0}

    def _activity_id(self, p: dict) -> int:
        act_id = _intval(_param(p, "id"))
        if act_id <= 0:
            raise StoreError("", "ID is not defined or invalid.")
        return act_id

    def crm_activity_get(self, p: dict) -> tuple[dict, float]:
        with self.s.lock:
            act = self.s.activities.get(self._activity_id(p))
            if act is None:
                raise StoreError("", "Activity is not found.")
            return {"result": self.s.render_activity(act, None, self.base_url)}, 0.0

    def _communications(self, owner_type: int, owner_id: int, type_id: int, given: Any) -> list[dict]:
        """``prepareCommunications``: an entry without its record takes the owner; one without value
        or record is dropped, as is a non-PHONE entry of a call or a non-EMAIL one of an e-mail; a
        missing TYPE is PHONE for a call, EMAIL for an e-mail."""
        out = []
        for c in _php_list(given or []):
            if not isinstance(c, dict):
                continue
            value = str(c.get("VALUE") or "")
            ent_type, ent_id = _intval(c.get("ENTITY_TYPE_ID")), _intval(c.get("ENTITY_ID"))
            if value and (ent_type <= 0 or ent_id <= 0):
                ent_type, ent_id = owner_type, owner_id
            if ent_type <= 0 or ent_id <= 0 or not value:
                continue
            kind = str(c.get("TYPE") or "")
            if not kind:
                kind = {CALL: "PHONE", EMAIL: "EMAIL"}.get(type_id, "")
            elif (type_id == CALL and kind != "PHONE") or (type_id == EMAIL and kind != "EMAIL"):
                continue
            out.append({"TYPE": kind, "VALUE": value, "ENTITY_ID": ent_id, "ENTITY_TYPE_ID": ent_type})
        return out

    def _activity_values(self, given: dict) -> dict:
        """Writable fields of add/update in the stored types (dates in the portal's zone if naive)."""
        out: dict[str, Any] = {}
        for key, value in given.items():
            key = str(key).upper()
            if key not in ACTIVITY_FIELD_INFO or key in ACTIVITY_PORTAL_SET or key == "COMMUNICATIONS":
                continue
            kind = ACTIVITY_KINDS.get(key, "obj")
            if key == "FILES":
                out[key] = [_intval(f.get("FILE_ID")) for f in _php_list(value) if isinstance(f, dict)
                            and _intval(f.get("FILE_ID")) > 0]
            elif key in ("SETTINGS", "PROVIDER_PARAMS"):
                out[key] = value if isinstance(value, dict) else {}
            elif value in (None, "") and kind in ("date", "num"):
                out[key] = None
            elif kind == "int":
                out[key] = _intval(value)
            elif kind == "date":
                out[key] = parse_date(value, self.tz)
            elif kind == "num":
                out[key] = _money(value)
            else:
                out[key] = None if value is None else str(value)
        return out

    def crm_activity_add(self, p: dict) -> tuple[dict, float]:
        """``crm.activity.add`` as ``CCrmActivityRestProxy::innerAdd`` checks it, in its order:
        responsible (else the owner's, else the caller), type (call, meeting, e-mail only),
        communications (required; one only for a call or a meeting), bindings (owner + each
        communication's record). Each bound record must exist: the portal checks the right to change
        every binding, which a missing record cannot grant, so the sandbox never stores a dangling
        binding. SUBJECT is required (crm-activity-fields.md)."""
        given = _fields_param(p)
        f = {str(k).upper(): v for k, v in given.items()}
        owner_type, owner_id = _intval(f.get("OWNER_TYPE_ID")), _intval(f.get("OWNER_ID"))
        responsible = _intval(f.get("RESPONSIBLE_ID"))
        if responsible <= 0 and owner_type > 0 and owner_id > 0:
            responsible = _intval((self.s.owner(owner_type, owner_id) or {}).get("ASSIGNED_BY_ID"))
        responsible = responsible if responsible > 0 else self.user_id
        type_id = _intval(f.get("TYPE_ID"))
        if type_id not in ACTIVITY_TYPES:
            raise StoreError("", "The field TYPE_ID is not defined or invalid.")
        if type_id not in REST_ADDABLE_TYPES:
            raise StoreError("", f'The activity type "{ACTIVITY_TYPES[type_id]}" is not supported in current context.')
        comms = self._communications(owner_type, owner_id, type_id, f.get("COMMUNICATIONS"))
        if not comms:
            raise StoreError("", "The field COMMUNICATIONS is not defined or invalid.")
        if type_id in (CALL, MEETING) and len(comms) > 1:
            raise StoreError("", "The only one communication is allowed for activity of specified type.")
        bindings = _bindings(owner_type, owner_id, comms)
        if not bindings:
            raise StoreError("", "Could not build binding. Please ensure that owner info and communications "
                                 "are defined correctly.")
        with self.s.lock:
            if any(self.s.owner(b["OWNER_TYPE_ID"], b["OWNER_ID"]) is None for b in bindings):
                raise StoreError("", "Access denied.")
            if not str(f.get("SUBJECT") or "").strip():
                raise StoreError("", "The field SUBJECT is not defined or empty.")
            values = self._activity_values(given)
            values.update({"TYPE_ID": type_id, "RESPONSIBLE_ID": responsible, "COMMUNICATIONS": comms,
                           "BINDINGS": bindings, "OWNER_TYPE_ID": owner_type, "OWNER_ID": owner_id})
            return {"result": self.s.put_activity(values, user_id=self.user_id)}, 0.0

    def crm_activity_update(self, p: dict) -> tuple[dict, float]:
        """``crm.activity.update``: the given fields change; owner and type are immutable; new
        COMMUNICATIONS replace the old ones and rebuild the bindings (``innerUpdate``)."""
        act_id = self._activity_id(p)
        given = _fields_param(p)
        with self.s.lock:
            act = self.s.activities.get(act_id)
            if act is None:
                raise StoreError("", "Activity is not found.")
            values = {k: v for k, v in self._activity_values(given).items() if k not in ACTIVITY_IMMUTABLE}
            if "SUBJECT" in values and not str(values["SUBJECT"] or "").strip():
                raise StoreError("", "The field SUBJECT is not defined or empty.")
            raw_comms = next((v for k, v in given.items() if str(k).upper() == "COMMUNICATIONS"), None)
            if raw_comms is not None:
                comms = self._communications(act["OWNER_TYPE_ID"], act["OWNER_ID"], act["TYPE_ID"],
                                            raw_comms)
                if not comms:
                    raise StoreError("", "The field COMMUNICATIONS is not defined or invalid.")
                bindings = _bindings(act["OWNER_TYPE_ID"], act["OWNER_ID"], comms)
                if any(self.s.owner(b["OWNER_TYPE_ID"], b["OWNER_ID"]) is None for b in bindings):
                    raise StoreError("", "Access denied.")
                values["COMMUNICATIONS"] = [dict(c, ID=self.s._new_id("communication")) for c in comms]
                values["BINDINGS"] = bindings
            if "FILES" in values:
                values["FILES"] = [self.s._new_id("file", fid) for fid in values["FILES"]]
            act.update(values)
            act["LAST_UPDATED"] = dt.datetime.now(dt.UTC)
            act["EDITOR_ID"] = self.user_id
            _derive(act)
        return {"result": True}, 0.0

    def crm_activity_delete(self, p: dict) -> tuple[dict, float]:
        act_id = self._activity_id(p)
        with self.s.lock:
            self.s._activity_ids = None
            if self.s.activities.pop(act_id, None) is None:
                raise StoreError("", "Activity is not found.")
        return {"result": True}, 0.0

    # crm.timeline.comment.* ---------------------------------------------------------------------
    def crm_timeline_comment_fields(self, p: dict) -> tuple[dict, float]:
        return {"result": _field_info(COMMENT_FIELD_INFO)}, 0.0

    def crm_timeline_comment_list(self, p: dict) -> tuple[dict, float]:
        """Comments of one record: ENTITY_ID and ENTITY_TYPE are required in the filter
        (crm-timeline-comment-list.md); order by ID, CREATED or AUTHOR_ID only."""
        flt = _param(p, "filter")
        flt = flt if isinstance(flt, dict) else {}
        keys = {str(k).upper() for k in flt}
        if not {"ENTITY_ID", "ENTITY_TYPE"} <= keys:
            raise StoreError("100", "Required filter fields: ENTITY_ID, ENTITY_TYPE")
        flt = {k: (str(v).lower() if str(k).upper() == "ENTITY_TYPE" and not isinstance(v, (list, dict)) else v)
               for k, v in flt.items()}
        preds = _compile(flt, COMMENT_KINDS, self.tz)
        with self.s.lock:
            rows = [c for c in self._comments_of(flt) if all(pr(c) for pr in preds)]
            rows = _ordered(rows, _param(p, "order"), set(COMMENT_ORDER), {"ID": "ASC"})
            page, extra, cost = _page(rows, p, self.count_cost_s)
            select = [str(s) for s in _php_list(_param(p, "select") or [])]
            return {"result": [self.s.render_comment(c, select) for c in page], **extra}, cost

    def _comments_of(self, flt: dict) -> list[dict]:
        """The comments a filter naming one owner can match (the index of the store's speed; the
        predicates still decide), else all of them."""
        owner = {str(k).upper(): v for k, v in flt.items() if str(k).upper() in ("ENTITY_TYPE", "ENTITY_ID")}
        if len(owner) < 2 or isinstance(owner["ENTITY_ID"], (list, dict)) or \
                isinstance(owner["ENTITY_TYPE"], (list, dict)) or not str(owner["ENTITY_ID"]).strip().isdigit():
            return list(self.s.comments.values())
        if self.s._comments_by_owner is None:
            index: dict[tuple[str, int], list[dict]] = {}
            for c in self.s.comments.values():
                index.setdefault((c["ENTITY_TYPE"], c["ENTITY_ID"]), []).append(c)
            self.s._comments_by_owner = index
        return self.s._comments_by_owner.get((str(owner["ENTITY_TYPE"]), int(str(owner["ENTITY_ID"]).strip())), [])

    def _comment(self, p: dict, *, missing: tuple[str, str]) -> dict:
        com_id = _intval(_param(p, "id"))
        if com_id <= 0:
            raise StoreError("", "ID is not defined or invalid.") if missing[0] == "" else \
                StoreError("100", "Required parameter 'id' is not defined")
        com = self.s.comments.get(com_id)
        owner_type, owner_id = _intval(p.get("ownerTypeId")), _intval(p.get("ownerId"))
        if com is not None and owner_type > 0 and owner_id > 0 and \
                (ENTITY_TYPE_IDS.get(owner_type), owner_id) != (com["ENTITY_TYPE"], com["ENTITY_ID"]):
            com = None  # not bound to the record named
        if com is None:
            raise StoreError(*missing)
        return com

    def crm_timeline_comment_get(self, p: dict) -> tuple[dict, float]:
        with self.s.lock:
            return {"result": self.s.render_comment(self._comment(p, missing=("", "Not found.")), None)}, 0.0

    def crm_timeline_comment_add(self, p: dict) -> tuple[dict, float]:
        """``fields`` (lower case only since crm 23.100.0): ENTITY_ID, ENTITY_TYPE (lead, deal,
        contact, company), COMMENT; AUTHOR_ID may be given once (isImmutable, not read-only), else
        the caller. CREATED is read-only: the portal's clock (crm-timeline-comment-fields.md)."""
        f = {str(k).upper(): v for k, v in _fields_param(p, lower_only=True).items()}
        entity_type, entity_id = str(f.get("ENTITY_TYPE") or "").lower(), _intval(f.get("ENTITY_ID"))
        if not entity_type or entity_id <= 0:
            raise StoreError("100", "Required fields: ENTITY_ID, ENTITY_TYPE")
        if not str(f.get("COMMENT") or "").strip():
            raise StoreError("INVALID_ARG_VALUE", "Empty comment")
        with self.s.lock:
            type_id = next((t for t, e in ENTITY_TYPE_IDS.items() if e == entity_type), 0)
            if self.s.owner(type_id, entity_id) is None:
                raise StoreError("OWNER_NOT_FOUND", "Owner element not found")
            author = _intval(f.get("AUTHOR_ID")) or self.user_id
            return {"result": self.s.put_comment(entity_type, entity_id, str(f["COMMENT"]), author)}, 0.0

    def crm_timeline_comment_update(self, p: dict) -> tuple[dict, float]:
        f = {str(k).upper(): v for k, v in _fields_param(p, lower_only=True).items()}
        with self.s.lock:
            com = self._comment(p, missing=("NOT_FOUND", "Not found."))
            if "COMMENT" in f:
                if not str(f["COMMENT"] or "").strip():
                    raise StoreError("INVALID_ARG_VALUE", "Empty comment")
                com["COMMENT"] = str(f["COMMENT"])
            return {"result": com["ID"]}, 0.0

    def crm_timeline_comment_delete(self, p: dict) -> tuple[dict, float]:
        with self.s.lock:
            com = self._comment(p, missing=("NOT_FOUND", "Not found."))
            del self.s.comments[com["ID"]]
            self.s._comments_by_owner = None
        return {"result": None}, 0.0

    # crm.product.* ------------------------------------------------------------------------------
    def crm_product_list(self, p: dict) -> tuple[dict, float]:
        preds = _compile(_param(p, "filter") or {}, PRODUCT_KINDS, self.tz)
        with self.s.lock:
            rows = [x for x in self.s.products.values() if all(pr(x) for pr in preds)]
            rows = _ordered(rows, _param(p, "order"), PRODUCT_KINDS, {"ID": "ASC"})
            page, extra, cost = _page(rows, p, self.count_cost_s)
            select = [str(s) for s in _php_list(_param(p, "select") or [])]
            return {"result": [self.s.render_product(x, select) for x in page], **extra}, cost

    def crm_product_get(self, p: dict) -> tuple[dict, float]:
        prod_id = _intval(_param(p, "id"))
        if prod_id <= 0:
            raise StoreError("", "ID is not defined or invalid.")
        with self.s.lock:
            prod = self.s.products.get(prod_id)
            if prod is None:
                raise StoreError("", "Not found")
            return {"result": self.s.render_product(prod, None)}, 0.0

    def crm_product_add(self, p: dict) -> tuple[dict, float]:
        """NAME is the one required field (crm-product-fields.md, "NAME*")."""
        f = {str(k).upper(): v for k, v in _fields_param(p).items()}
        if not str(f.get("NAME") or "").strip():
            raise StoreError("", "The field NAME is required.")
        return {"result": self.s.put_product(f, user_id=self.user_id)}, 0.0

    def crm_product_update(self, p: dict) -> tuple[dict, float]:
        """``id`` + ``fields`` → true (api-reference/crm/outdated/products/crm-product-update.md);
        NAME stays required (crm-product-fields.md, "NAME*")."""
        prod_id = _intval(_param(p, "id"))
        if prod_id <= 0:
            raise StoreError("", "ID is not defined or invalid.")
        f = {str(k).upper(): v for k, v in _fields_param(p).items()}
        if "NAME" in f and not str(f["NAME"] or "").strip():
            raise StoreError("", "The field NAME is required.")
        self.s.update_product(prod_id, f, user_id=self.user_id)
        return {"result": True}, 0.0

    # product rows -------------------------------------------------------------------------------
    def _deal_id(self, p: dict) -> int:
        deal_id = _intval(_param(p, "id"))
        if deal_id <= 0:
            raise StoreError("", "The parameter id is invalid or not defined.")
        if self.s.crm.get("deal", deal_id) is None:
            raise StoreError("", "Not found")
        return deal_id

    def crm_deal_productrows_get(self, p: dict) -> tuple[dict, float]:
        """The rows in SORT order (the docs' example lists SORT 10 before SORT 20)."""
        with self.s.lock:
            rows = sorted(self.s.rows.get(("D", self._deal_id(p)), []), key=lambda r: (r["SORT"], r["ID"]))
            return {"result": [self.s.render_row(r) for r in rows]}, 0.0

    def crm_deal_productrows_set(self, p: dict) -> tuple[dict, float]:
        with self.s.lock:
            deal_id = self._deal_id(p)
            self.s.set_rows("D", deal_id, _php_list(_param(p, "rows") or []))
        return {"result": True}, 0.0

    def _rows_of_owners(self, owner_ids: Any) -> list[list[dict]]:
        """The stored rows of the owners ``=ownerId`` names (every type; the predicates decide), found by
        key as the portal's index on the owner finds them, not by converting every row of the portal.
        A value that is no ID: every row (the predicates then refuse or match as before)."""
        ids = _php_list(owner_ids) if isinstance(owner_ids, (list, dict)) else [owner_ids]
        try:
            wanted = {int(str(i).strip()) for i in ids}
        except ValueError:
            return list(self.s.rows.values())
        return [self.s.rows[(t, i)] for i in sorted(wanted) for t in OWNER_ABBR.values() if (t, i) in self.s.rows]

    def crm_item_productrow_list(self, p: dict) -> tuple[dict, float]:
        """Rows of one or many owners: ``=ownerType`` and ``=ownerId`` must be in the filter, and
        ``=`` "works with arrays too" — the rows of many deals in one call (crm-item-productrow-list.md)."""
        flt = _param(p, "filter")
        if not isinstance(flt, dict) or not {"=ownerType", "=ownerId"} <= set(flt):
            raise StoreError("100", "Required filter fields: =ownerType, =ownerId")
        preds = _compile(flt, ROW_KINDS, self.tz)
        with self.s.lock:
            rows = [self.s.item_row(r) for rows in self._rows_of_owners(flt["=ownerId"]) for r in rows]
        rows = [r for r in rows if all(pr(r) for pr in preds)]
        rows = _ordered(rows, _param(p, "order"), ROW_KINDS, {"id": "ASC"})
        page, extra, cost = _page(rows, p, self.count_cost_s)
        return {"result": {"productRows": page}, **extra}, cost


# Set by the portal, read-only (crm-product-fields.md)
_PRODUCT_PORTAL_SET = ("ID", "DATE_CREATE", "TIMESTAMP_X", "CREATED_BY", "MODIFIED_BY")


def _product_values(fields: dict) -> dict:
    """The writable product fields of an add/update in their stored types (upper-case keys)."""
    out: dict[str, Any] = {}
    for k, v in fields.items():
        if k in PRODUCT_FIELDS and k not in _PRODUCT_PORTAL_SET:
            out[k] = (_money(v).quantize(CENT) if k == "PRICE" else
                      _intval(v) if PRODUCT_KINDS[k] == "int" else None if v is None else str(v))
    return out


def _by_bindings(rows: list[dict], specs: list) -> list[dict]:
    """``filter[BINDINGS]``: records given as {OWNER_TYPE_ID, OWNER_ID} (either alone or both). The
    portal joins the bindings table, so an activity comes once per binding that matches: "в
    результатах возможно дублирование" (crm-activity-list.md)."""
    wanted = [(_intval(s.get("OWNER_TYPE_ID")), _intval(s.get("OWNER_ID"))) for s in specs if isinstance(s, dict)]
    out = []
    for act in rows:
        for b in act["BINDINGS"]:
            if any((t <= 0 or t == b["OWNER_TYPE_ID"]) and (i <= 0 or i == b["OWNER_ID"]) for t, i in wanted):
                out.append(act)
    return out

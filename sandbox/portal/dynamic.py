"""Smart processes of the sandbox portal: ``crm.type.list/get/getByEntityTypeId/add`` and what
crm.item.* needs to serve their items (bitrix-tools/b24-rest-docs,
api-reference/crm/universal/user-defined-object-types/*.md, object-fields.md "Смарт-процесс").

- A type has its own ``id`` (1, 2, … — its custom fields are ``UF_CRM_{id}_…``, crm.item names
  ``ufCrm{id}_…``) and an ``entityTypeId``: given, it must be even and ≥ 1030 or within 128–192
  ("entityTypeId is out of allowed range"); left out, the next free even number from 1030.
- Flags are ``Y``/``N`` (``isSetOpenPermissions`` defaults to Y, the others to N); the answer is
  ``{"type": {…}}`` (crm-type-add.md), lists answer ``{"types": […]}`` with ``total``.
- Items live in the store's ``dynamic_<entityTypeId>`` table (``store.dynamic_entity``); every
  type has a default funnel (``categoryId``), its stages are ``DT<entityTypeId>_<categoryId>:NEW`` …
  when ``isStagesEnabled``; an item without a title is called ``{type title} #{id}``
  (import/crm-item-import.md, "Смарт-процесс", title). Items have no originatorId/originId (the
  object-fields.md table of smart processes has none; ``xmlId`` is the external code).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from .errors import StoreError
from .store import DYNAMIC_PREFIX, dynamic_entity

FLAGS = ("isCategoriesEnabled", "isStagesEnabled", "isBeginCloseDatesEnabled", "isClientEnabled",
         "isUseInUserfieldEnabled", "isLinkWithProductsEnabled", "isMycompanyEnabled", "isDocumentsEnabled",
         "isSourceEnabled", "isObserversEnabled", "isRecyclebinEnabled", "isAutomationEnabled", "isBizProcEnabled",
         "isSetOpenPermissions", "isPaymentsEnabled", "isCountersEnabled")
FLAG_DEFAULTS = {"isSetOpenPermissions": "Y"}
FIRST_AUTO_ENTITY_TYPE_ID = 1030


def _flag(value: Any, default: str) -> str:
    if value is None or value == "":
        return default
    return "Y" if value is True or str(value).strip().upper() in ("Y", "1", "TRUE") else "N"


def _allowed(entity_type_id: int) -> bool:
    return (entity_type_id >= FIRST_AUTO_ENTITY_TYPE_ID and entity_type_id % 2 == 0) or 128 <= entity_type_id <= 192


def add_type(store, fields: Any, *, user_id: int = 1, type_id: int | None = None, category_id: int | None = None,
             now: dt.datetime | None = None) -> dict:
    """Create a smart process; returns it as crm.type.get answers it. ``type_id``/``category_id``:
    seeding a restored backup."""
    if not isinstance(fields, dict) or not fields:
        raise StoreError("100", "Could not find value for parameter {fields}")
    title = str(fields.get("title") or "").strip()
    if not title:  # required (crm-type-add.md); the docs give no wording for its absence
        raise StoreError("INVALID_ARG_VALUE", "title is required")
    now = now or dt.datetime.now(dt.UTC)
    with store.lock:
        taken = set(store.types)
        if fields.get("entityTypeId") not in (None, ""):
            etid = int(fields["entityTypeId"])
            if not _allowed(etid) or etid in taken:
                raise StoreError("INVALID_ARG_VALUE", "entityTypeId is out of allowed range")
        else:
            etid = FIRST_AUTO_ENTITY_TYPE_ID
            while etid in taken:
                etid += 2
        type_id = type_id or max((t["id"] for t in store.types.values()), default=0) + 1
        category_id = category_id or max((t["_defaultCategoryId"] for t in store.types.values()), default=0) + 1
        stamp = now.astimezone(store.tz).isoformat(timespec="seconds")
        kind = {"id": type_id, "title": title, "code": fields.get("code"), "createdBy": user_id, "entityTypeId": etid,
                **{f: _flag(fields.get(f), FLAG_DEFAULTS.get(f, "N")) for f in FLAGS},
                "createdTime": stamp, "updatedTime": stamp, "updatedBy": user_id,
                "relations": {"parent": [], "child": []}, "linkedUserFields": {}, "customSections": [],
                "customSectionId": None, "_defaultCategoryId": category_id}
        store.types[etid] = kind
        store.add_table(dynamic_entity(etid), f"CRM_{type_id}")
    return public(kind)


def public(kind: dict) -> dict:
    return {k: v for k, v in kind.items() if not k.startswith("_")}


def type_of(store, entity: str) -> dict:
    return store.types[int(entity[len(DYNAMIC_PREFIX):])]


def entity_of(store, entity_type_id: int) -> str | None:
    """The store table of a smart process's items, or None when the portal has no such type."""
    return dynamic_entity(entity_type_id) if entity_type_id in store.types else None


def item_defaults(store, entity: str, fields: dict) -> None:
    """A new item's funnel (the type's default one) and first stage (when the type has stages)."""
    kind = type_of(store, entity)
    category = fields.get("CATEGORY_ID") or kind["_defaultCategoryId"]
    fields["CATEGORY_ID"] = category
    if kind["isStagesEnabled"] == "Y" and not fields.get("STAGE_ID"):
        fields["STAGE_ID"] = f"DT{kind['entityTypeId']}_{category}:NEW"


def default_title(store, entity: str, record_id: int) -> None:
    """``{entityTypeName} #{id}`` for an item saved without a title (crm-item-import.md)."""
    with store.lock:
        rec = store.tables[entity][record_id]
        if not rec.get("TITLE"):
            rec["TITLE"] = f"{type_of(store, entity)['title']} #{record_id}"


# --- crm.type.* ------------------------------------------------------------------------------------
def _find(store, *, by: str, value: Any) -> dict:
    try:
        wanted = int(value)
    except (TypeError, ValueError):
        wanted = 0
    kind = next((t for t in store.types.values() if t[by] == wanted), None)
    if kind is None:
        raise StoreError("0", "Смарт-процесс не найден")  # crm-type-get.md, "Возможные коды ошибок"
    return kind


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "!=": lambda a, b: a != b, ">": lambda a, b: a > b,
    "<": lambda a, b: a < b, "!@": lambda a, b: a not in b, "@": lambda a, b: a in b, "!": lambda a, b: a != b,
    "=": lambda a, b: a == b, "": lambda a, b: a == b}


def _type_list(store, p: dict) -> dict:
    """``crm.type.list``: filter with the comparison and IN prefixes on the type's fields, order,
    page 50 (crm-type-list.md); a field the type does not have is refused."""
    flt, order = p.get("filter") or {}, p.get("order") or {}
    if not isinstance(flt, dict) or not isinstance(order, dict):
        raise StoreError("INVALID_ARG_VALUE", "filter and order must be objects")
    kinds = [public(t) for t in sorted(store.types.values(), key=lambda t: t["id"])]
    known = set(kinds[0]) if kinds else {"id", "title", "entityTypeId", *FLAGS}
    for raw, value in flt.items():
        op = next(o for o in _OPS if str(raw).startswith(o))
        name = str(raw)[len(op):]
        if name not in known:
            raise StoreError("INVALID_ARG_VALUE", f"Invalid filter: field '{name}' is not allowed in filter")
        wanted = [str(v) for v in value] if op.endswith("@") and isinstance(value, list) else str(value)
        kinds = [t for t in kinds if _OPS[op](str(t.get(name)), wanted)]
    for name, direction in reversed(list(order.items())):
        if name not in known:
            raise StoreError("INVALID_ARG_VALUE", f"Invalid order: field '{name}' is not allowed in order")
        if str(direction).upper() not in ("ASC", "DESC"):
            raise StoreError("INVALID_ARG_VALUE", "Invalid order: allowed sort directions are ASC, DESC. "
                                                  f"But got '{direction}' for field '{name}'")
        kinds.sort(key=lambda t, n=name: str(t.get(n)) if not isinstance(t.get(n), int) else f"{t[n]:012d}",
                   reverse=str(direction).upper() == "DESC")
    start = max(int(p.get("start") or 0), 0)
    body: dict = {"result": {"types": kinds[start:start + 50]}, "total": len(kinds)}
    if start + 50 < len(kinds):
        body["next"] = start + 50
    return body


METHODS: dict[str, Callable[[Any, dict], dict]] = {
    "crm.type.list": _type_list,
    "crm.type.get": lambda store, p: {"result": {"type": public(_find(store, by="id", value=p.get("id")))}},
    "crm.type.getbyentitytypeid": lambda store, p: {
        "result": {"type": public(_find(store, by="entityTypeId", value=p.get("entityTypeId")))}},
    "crm.type.add": lambda store, p: {"result": {"type": add_type(store, p.get("fields"))}},
}

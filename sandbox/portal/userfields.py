"""Custom (user) fields of the sandbox portal: their definitions, the values records carry, and the
``crm.<entity>.userfield.list/get/add/update`` methods.

Facts (bitrix-tools/b24-rest-docs, api-reference/crm/leads/userfield/*.md; the contact, company and
deal pages say the same):

- ``FIELD_NAME`` always gets the ``UF_CRM_`` prefix (``NOTE`` and ``UF_NOTE`` → ``UF_CRM_NOTE``), is
  upper-cased, may hold only ``A-Z0-9_`` and at most 50 characters with the prefix (``ERROR_CORE``
  otherwise); a missing ``FIELD_NAME``/``USER_TYPE_ID`` is refused with an empty error code;
- ``MULTIPLE`` Y/N (``boolean`` fields cannot be multiple), ``SORT`` 100, ``EDIT_IN_LIST`` Y, other
  flags N by default; ``LABEL`` fills the five label fields that were not given, for every language;
- an ``enumeration``'s ``LIST`` holds ``{VALUE, SORT, DEF, XML_ID}``: items without VALUE are
  ignored, each item gets an ID (one sequence for the whole portal: the example of
  crm-lead-userfield-list.md shows 3157, 3159 … across fields), XML_IDs must be unique in the field;
  ``.update``'s LIST changes an item given with its ``ID`` (``DEL: Y`` removes it) and adds the
  others (contacts/userfield/crm-contact-userfield-update.md, "uf_enum_element"); items not named
  stay;
- ``.list`` filters by equality on the documented fields, orders by ``SORT``, ``ID`` unless told;
  labels are strings when ``filter.LANG`` is given, per-language maps otherwise (as ``.get``
  answers them); IDs and SORT are strings on the wire.

Values: an enumeration stores the item's ID as an integer and does not check that the item exists
(the core's ``EnumType::checkFields`` returns no error; ``onBeforeSave`` keeps the first of several
values of a single field: bitrix main/lib/userfield/types/enumtype.php), so an ID the field does not
have is saved as given. Classic methods answer ``UF_CRM_…`` names (booleans as true/false, the
example of crm-lead-list.md); ``crm.item.*`` answers ``ufCrm…`` names (:func:`item_name`) with
numbers as numbers and booleans as ``Y``/``N`` (crm/universal/crm-item-list.md, "filter").
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import threading
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from .errors import StoreError

# the object each classic entity's fields belong to (ENTITY_ID in the answers)
ENTITY_IDS = {"lead": "CRM_LEAD", "deal": "CRM_DEAL", "contact": "CRM_CONTACT", "company": "CRM_COMPANY"}
TYPES = ("string", "integer", "double", "boolean", "datetime", "date", "money", "url", "address", "enumeration",
         "file", "employee", "crm_status", "iblock_section", "iblock_element", "crm")
LABELS = ("EDIT_FORM_LABEL", "LIST_COLUMN_LABEL", "LIST_FILTER_LABEL", "ERROR_MESSAGE", "HELP_MESSAGE")
LANGS = ("de", "en", "ru")  # the sandbox portal's languages (a real one has about twenty)
FLAGS = {"MULTIPLE": "N", "MANDATORY": "N", "SHOW_FILTER": "N", "SHOW_IN_LIST": "N", "EDIT_IN_LIST": "Y",
         "IS_SEARCHABLE": "N"}
LIST_FILTER_FIELDS = ("ID", "FIELD_NAME", "USER_TYPE_ID", "XML_ID", "SORT", "MULTIPLE", "MANDATORY", "SHOW_FILTER",
                      "SHOW_IN_LIST", "EDIT_IN_LIST", "IS_SEARCHABLE")
LIST_ORDER_FIELDS = ("ID", "FIELD_NAME", "USER_TYPE_ID", "XML_ID", "SORT")
PREFIX = "UF_CRM_"
_NAME_RE = re.compile(r"^[A-Z0-9_]+$")


def item_name(field_name: str) -> str:
    """``UF_CRM_…`` → its crm.item.* name (api-reference/crm/universal/index.md, "Особенности имен
    полей"): after the prefix and an optional object number, digits only keep the underscore
    (``UF_CRM_10_5186744711`` → ``ufCrm10_5186744711``), letters only are camel-cased
    (``UF_CRM_10_DIGIT`` → ``ufCrm10Digit``); anything else, and a bare number, only changes the
    prefix (``UF_CRM_3_DIGIT10`` → ``ufCrm_3_DIGIT10``, ``UF_CRM_1747309879`` → ``ufCrm_1747309879``)."""
    rest = field_name[len(PREFIX):]
    m = re.fullmatch(r"(\d+)_(\d+)", rest)
    if m:
        return f"ufCrm{m[1]}_{m[2]}"
    m = re.fullmatch(r"(?:(\d+)_)?([A-Z]+(?:_[A-Z]+)*)", rest)
    if m:
        return "ufCrm" + (m[1] or "") + "".join(p.capitalize() for p in m[2].split("_"))
    return "ufCrm_" + rest


def _yn(value: Any, default: str) -> str:
    if value is None or value == "":
        return default
    return "Y" if str(value).upper() in ("Y", "1", "TRUE") or value is True else "N"


def _labels(value: Any, fallback: str) -> dict[str, str]:
    """A label as a per-language map: a string is every language's; a map leaves the others at
    ``fallback`` (the LABEL parameter)."""
    if isinstance(value, dict):
        return {lang: str(value.get(lang, fallback) or "") for lang in LANGS}
    text = fallback if value is None else str(value)
    return {lang: text for lang in LANGS}


def _int(value: Any) -> int:
    """PHP's intval of a stored value (``"12abc"`` → 12, ``"x"`` → 0)."""
    m = re.match(r"^\s*([+-]?\d+)", str(value))
    return int(m.group(1)) if m else 0


class UserFields:
    """The definitions of one portal's custom fields, by ID; safe for concurrent requests."""

    def __init__(self, tz: dt.tzinfo) -> None:
        self.tz = tz
        self.lock = threading.RLock()
        self.fields: dict[int, dict] = {}
        self.next_field_id = 1
        self.next_item_id = 1  # enumeration items: one sequence for the portal

    # --- definitions ----------------------------------------------------------------------------
    def add(self, entity_id: str, fields: dict, *, field_id: int | None = None) -> int:
        """Create a field of ``entity_id`` (``CRM_LEAD`` …, ``CRM_{type id}`` for a smart process);
        returns its ID. ``field_id`` and LIST items with an ``ID``: seeding a restored backup."""
        if not isinstance(fields, dict):
            raise StoreError("", "Parameter 'fields' must be array.")
        name = str(fields.get("FIELD_NAME") or "").strip().upper()
        if not name:
            raise StoreError("", "The 'FIELD_NAME' field is not found.")
        type_id = str(fields.get("USER_TYPE_ID") or "").strip()
        if not type_id:
            raise StoreError("", "The 'USER_TYPE_ID' field is not found.")
        if type_id not in TYPES:
            raise StoreError("ERROR_CORE", "Указан неверный пользовательский тип.")
        if not name.startswith(PREFIX):
            name = PREFIX + (name.removeprefix("UF_"))
        if not _NAME_RE.match(name):
            raise StoreError("ERROR_CORE", "Имя поля содержит недопустимые символы. Допустимыми являются: A-Z, 0-9 и _.")
        if len(name) > 50:
            raise StoreError("ERROR_CORE", "Имя поля слишком длинное (больше 50-ти символов).")
        label = str(fields.get("LABEL") or "")
        with self.lock:
            if any(f["ENTITY_ID"] == entity_id and f["FIELD_NAME"] == name for f in self.fields.values()):
                raise StoreError("ERROR_CORE", f"Пользовательское поле {name} уже существует.")
            if field_id is None:
                field_id = self.next_field_id
            self.next_field_id = max(self.next_field_id, field_id + 1)
            defn = {"ID": field_id, "ENTITY_ID": entity_id, "FIELD_NAME": name, "USER_TYPE_ID": type_id,
                    "XML_ID": fields.get("XML_ID"), "SORT": _int(fields.get("SORT") or 100),
                    "SETTINGS": dict(fields.get("SETTINGS") or {}), "LIST": []}
            defn.update({flag: _yn(fields.get(flag), default) for flag, default in FLAGS.items()})
            if type_id == "boolean":
                defn["MULTIPLE"] = "N"  # "Поля типа boolean не могут быть множественными" (…-userfield-add.md)
            defn.update({lab: _labels(fields.get(lab), label) for lab in LABELS})
            if type_id == "enumeration":
                self._set_items(defn, fields.get("LIST"))
            self.fields[field_id] = defn
        return field_id

    def update(self, field_id: int, fields: dict) -> None:
        """``.userfield.update``: flags, SORT, XML_ID, SETTINGS (merged), labels (replaced), LIST."""
        if not isinstance(fields, dict):
            raise StoreError("", "Parameter 'fields' must be array.")
        with self.lock:
            defn = self.fields[field_id]
            for flag in FLAGS:
                if flag in fields and flag != "MULTIPLE":  # MULTIPLE is not among update's fields
                    defn[flag] = _yn(fields[flag], defn[flag])
            if "SORT" in fields:
                defn["SORT"] = _int(fields["SORT"])
            if "XML_ID" in fields:
                defn["XML_ID"] = fields["XML_ID"]
            if isinstance(fields.get("SETTINGS"), dict):
                defn["SETTINGS"].update(fields["SETTINGS"])
            for lab in LABELS:
                if lab in fields:  # "полностью перезаписывает предыдущее значение"; missing languages ''
                    defn[lab] = _labels(fields[lab], "")
            if defn["USER_TYPE_ID"] == "enumeration" and "LIST" in fields:
                self._set_items(defn, fields["LIST"])

    def _set_items(self, defn: dict, given: Any) -> None:
        """Apply LIST entries: with an ID known to the field, change it (``DEL: Y`` removes it); a
        new ID only while seeding (an empty field); otherwise a new item from the sequence."""
        entries = list(given.values()) if isinstance(given, dict) else list(given or [])
        items = defn["LIST"]
        seeding = not items and all(isinstance(e, dict) and e.get("ID") for e in entries) and entries
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            known = next((i for i in items if str(i["ID"]) == str(entry.get("ID") or "")), None)
            if known is not None:
                if str(entry.get("DEL", "")).upper() == "Y":
                    items.remove(known)
                    continue
                for key in ("VALUE", "XML_ID"):
                    if entry.get(key) not in (None, ""):
                        known[key] = str(entry[key])
                if "SORT" in entry:
                    known["SORT"] = _int(entry["SORT"])
                if "DEF" in entry:
                    known["DEF"] = _yn(entry["DEF"], "N")
                continue
            value = str(entry.get("VALUE") or "").strip()
            if not value:
                continue  # "Элементы списка с пустым или отсутствующим VALUE будут проигнорированы"
            item_id = int(entry["ID"]) if seeding else self.next_item_id
            self.next_item_id = max(self.next_item_id, item_id + 1)
            xml_id = str(entry.get("XML_ID") or hashlib.md5(f"{defn['ID']}:{item_id}".encode()).hexdigest())
            if any(i["XML_ID"] == xml_id for i in items):
                raise StoreError("ERROR_CORE", f"Элемент списка со значением XML_ID={xml_id} уже существует.")
            items.append({"ID": item_id, "SORT": _int(entry.get("SORT") or 0), "VALUE": value,
                          "DEF": _yn(entry.get("DEF"), "N"), "XML_ID": xml_id})
        items.sort(key=lambda i: (i["SORT"], i["ID"]))
        if defn["MULTIPLE"] != "Y":  # a single field: the first DEF=Y item is the default
            first = next((i for i in items if i["DEF"] == "Y"), None)
            for i in items:
                i["DEF"] = "Y" if i is first else "N"

    def find(self, field_id: int, entity_id: str) -> dict:
        """The definition ``field_id`` of ``entity_id``; refusals as ``.userfield.get`` documents."""
        with self.lock:
            defn = self.fields.get(field_id)
        if defn is None:
            raise StoreError("ERROR_NOT_FOUND", f"The entity with ID '{field_id}' is not found.")
        if defn["ENTITY_ID"] != entity_id:
            raise StoreError("ACCESS_DENIED", "Access denied.")
        return defn

    def of(self, entity_id: str) -> dict[str, dict]:
        """FIELD_NAME → definition of every field of ``entity_id``, by SORT and ID."""
        with self.lock:
            defs = sorted((f for f in self.fields.values() if f["ENTITY_ID"] == entity_id),
                          key=lambda f: (f["SORT"], f["ID"]))
        return {f["FIELD_NAME"]: f for f in defs}

    def item_names(self, entity_id: str) -> dict[str, str]:
        """FIELD_NAME → its crm.item.* name; a camel name another field already has stays UPPER_CASE
        (universal/index.md: "Если преобразованное имя уже занято другим полем объекта")."""
        out: dict[str, str] = {}
        for name in self.of(entity_id):
            camel = item_name(name)
            out[name] = name if camel in out.values() else camel
        return out

    def render_definition(self, defn: dict, lang: str | None = None) -> dict:
        out = {k: defn[k] for k in ("ID", "ENTITY_ID", "FIELD_NAME", "USER_TYPE_ID", "XML_ID", "SORT", *FLAGS)}
        out["ID"], out["SORT"] = str(defn["ID"]), str(defn["SORT"])
        out["SETTINGS"] = dict(defn["SETTINGS"])
        for lab in LABELS:
            out[lab] = defn[lab].get(lang, "") if lang else dict(defn[lab])
        if defn["USER_TYPE_ID"] == "enumeration":
            out["LIST"] = [{"ID": str(i["ID"]), "SORT": str(i["SORT"]), "VALUE": i["VALUE"], "DEF": i["DEF"],
                            "XML_ID": i["XML_ID"]} for i in defn["LIST"]]
        return out

    def list(self, entity_id: str, flt: Any, order: Any) -> list[dict]:
        if not isinstance(flt, dict):
            raise StoreError("", "Parameter 'filter' must be array.")
        if not isinstance(order, dict):
            raise StoreError("", "Parameter 'order' must be array.")
        lang = next((str(v) for k, v in flt.items() if str(k).upper() == "LANG"), None)
        wanted = {str(k).upper(): str(v) for k, v in flt.items() if str(k).upper() in LIST_FILTER_FIELDS}
        defs = [d for d in self.of(entity_id).values()
                if all(str(d.get(k)) == v for k, v in wanted.items())]
        keys = [(str(k).upper(), str(v).upper()) for k, v in order.items() if str(k).upper() in LIST_ORDER_FIELDS]
        for key, direction in reversed(keys or [("SORT", "ASC"), ("ID", "ASC")]):
            defs.sort(key=lambda d, k=key: (d.get(k) is None, d.get(k) if d.get(k) is not None else ""),
                      reverse=direction == "DESC")
        return [self.render_definition(d, lang) for d in defs]

    # --- values ---------------------------------------------------------------------------------
    def value(self, defn: dict, raw: Any) -> Any:
        """A written value as the field stores it (a list for a multiple field; None when empty)."""
        if defn["MULTIPLE"] == "Y":
            values = list(raw.values()) if isinstance(raw, dict) else raw if isinstance(raw, list) else [raw]
            return [v for v in (self._one(defn, x) for x in values) if v is not None]
        if isinstance(raw, (list, dict)):
            raw = next(iter(raw.values() if isinstance(raw, dict) else raw), None)
        return self._one(defn, raw)

    def _one(self, defn: dict, raw: Any) -> Any:
        if raw is None or raw == "" or isinstance(raw, (list, dict)):
            return None
        kind = defn["USER_TYPE_ID"]
        if kind in ("integer", "employee", "enumeration"):
            return _int(raw)
        if kind == "double":
            try:
                return float(Decimal(str(raw).strip().replace(",", ".")))
            except InvalidOperation:
                return 0.0
        if kind == "boolean":
            return raw is True or str(raw).strip().upper() in ("Y", "1", "TRUE")
        if kind == "datetime":
            return _aware(raw, self.tz)
        if kind == "date":
            return dt.date.fromisoformat(str(raw).strip()[:10])
        if kind == "file":
            return None  # files need the disk module: the sandbox keeps none
        return str(raw)

    def render(self, defn: dict, stored: Any, *, item: bool) -> Any:
        """A stored value as the classic methods (``item=False``) or crm.item.* answer it."""
        if defn["MULTIPLE"] == "Y":
            return [self._render_one(defn, v, item) for v in stored or []]
        return None if stored is None else self._render_one(defn, stored, item)

    def _render_one(self, defn: dict, v: Any, item: bool) -> Any:
        if isinstance(v, dt.datetime):
            return v.astimezone(self.tz).isoformat(timespec="seconds")
        if isinstance(v, dt.date):
            return v.isoformat()
        if isinstance(v, bool):
            return ("Y" if v else "N") if item else v
        if isinstance(v, (int, float)) and not item:
            return str(v)
        return v

    def converter(self, defn: dict) -> Callable[[Any], Any]:
        """How a filter value of this field is read (a boolean filters with 1/0: crm-item-list.md)."""
        if defn["USER_TYPE_ID"] == "boolean":
            return lambda v: str(v).strip().upper() in ("1", "Y", "TRUE")
        return lambda v: self._one(defn, v)


def _aware(raw: Any, tz: dt.tzinfo) -> dt.datetime:
    d = raw if isinstance(raw, dt.datetime) else dt.datetime.fromisoformat(str(raw).strip().replace("Z", "+00:00"))
    return d if d.tzinfo else d.replace(tzinfo=tz)


# --- crm.<entity>.userfield.* ---------------------------------------------------------------------
def _field_id(p: dict) -> int:
    field_id = _int(p.get("id", p.get("ID")) or 0)
    if field_id <= 0:
        raise StoreError("", "ID is not defined or invalid.")
    return field_id


def _list(store, entity: str, p: dict) -> dict:
    rows = store.userfields.list(ENTITY_IDS[entity], p.get("filter") or {}, p.get("order") or {})
    return {"result": rows, "total": len(rows)}


def _get(store, entity: str, p: dict) -> dict:
    return {"result": store.userfields.render_definition(store.userfields.find(_field_id(p), ENTITY_IDS[entity]))}


def _add(store, entity: str, p: dict) -> dict:
    fields = p.get("fields", p.get("FIELDS"))
    if fields is None:
        raise StoreError("", "Parameter 'fields' must be array.")
    return {"result": store.userfields.add(ENTITY_IDS[entity], fields)}


def _update(store, entity: str, p: dict) -> dict:
    field_id = _field_id(p)
    store.userfields.find(field_id, ENTITY_IDS[entity])
    store.userfields.update(field_id, p.get("fields", p.get("FIELDS")))
    return {"result": True}


def _bind(handler, entity: str):
    return lambda store, p: handler(store, entity, p)


METHODS: dict[str, Callable[[Any, dict], dict]] = {
    f"crm.{entity}.userfield.{verb}": _bind(handler, entity)
    for entity in ENTITY_IDS
    for verb, handler in (("list", _list), ("get", _get), ("add", _add), ("update", _update))}

"""What cloud2box knows about the four CRM entities: fields it copies, relations, hashing."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Iterable

ENTITIES = ("company", "contact", "lead", "deal")
ORIGINATOR = "cloud2box"

# Fields copied to the box and compared by the reconciliation (besides relations and users).
DATA_FIELDS = {
    "company": ("TITLE", "COMPANY_TYPE", "INDUSTRY", "COMMENTS"),
    "contact": ("NAME", "LAST_NAME", "POST", "SOURCE_ID", "COMMENTS"),
    "lead": ("TITLE", "NAME", "LAST_NAME", "STATUS_ID", "SOURCE_ID", "OPPORTUNITY", "CURRENCY_ID", "COMMENTS"),
    "deal": ("TITLE", "STAGE_ID", "CATEGORY_ID", "OPPORTUNITY", "CURRENCY_ID", "COMMENTS"),
}
# Multi-fields (crm_multifield: api-reference/crm/data-types.md); LINK (open-channel user IDs) is the
# portal's own and is not copied.
_CONTACT_POINTS = ("PHONE", "EMAIL", "WEB", "IM")
MULTI = {"company": _CONTACT_POINTS, "contact": _CONTACT_POINTS, "lead": _CONTACT_POINTS, "deal": ()}
# field → entity it points at; remapped cloud ID → box ID
RELATIONS = {
    "company": {},
    "contact": {"COMPANY_ID": "company"},
    "lead": {"CONTACT_ID": "contact", "COMPANY_ID": "company"},
    "deal": {"CONTACT_ID": "contact", "COMPANY_ID": "company", "LEAD_ID": "lead"},
}
USER_FIELDS = ("ASSIGNED_BY_ID",)
# Bindings to several records: field → (entity it points at, crm.item's name). The upper-case list
# and get methods do not return them ("Поле CONTACT_IDS недоступно в методах crm.deal.get и
# crm.deal.list", api-reference/crm/deals/crm-deal-fields.md; COMPANY_IDS likewise for contacts):
# they are read with crm.item.list (:func:`connectors.bitrix24.delta.read_bindings`) and written
# with the upper-case add/update, which take them (crm-deal-add.md, crm-lead-add.md, crm-contact-add.md).
BINDINGS = {"company": {}, "contact": {"COMPANY_IDS": ("company", "companyIds")},
            "lead": {"CONTACT_IDS": ("contact", "contactIds")}, "deal": {"CONTACT_IDS": ("contact", "contactIds")}}
# "*" is every field "without custom and multiple ones"; "UF_*" adds the custom ones; multi-fields
# must be named (api-reference/crm/contacts/crm-contact-list.md, select).
SELECT = {e: ["*", "UF_*", *MULTI[e]] for e in ENTITIES}


def parse_date(value) -> dt.datetime | None:
    if value in (None, ""):
        return None
    d = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return d if d.tzinfo else d.replace(tzinfo=dt.timezone.utc)


def _norm(v) -> str:
    return "" if v in (None, "0", 0) else str(v).strip()


def multi_values(values) -> list[tuple[str, str]]:
    """A multi-field as sorted (type, value) pairs; the box's own value IDs do not matter."""
    return sorted((str(x.get("VALUE_TYPE", "")), str(x.get("VALUE", "")).strip())
                  for x in (values or []) if isinstance(x, dict) and x.get("VALUE"))


class UserMap(dict):
    """cloud user ID → box user ID; a user the box lacks reads as ``fallback`` (as the importer
    assigns their records)."""

    def __init__(self, mapping: dict[str, str], fallback: str) -> None:
        super().__init__(mapping)
        self.fallback = str(fallback)

    def get(self, key, default=None):  # noqa: ARG002 - every unknown user is the fallback
        return super().get(key, self.fallback)


MAIN_LINK = {"CONTACT_IDS": "CONTACT_ID", "COMPANY_IDS": "COMPANY_ID"}  # a binding list's main entry


def bindings_of(row: dict, field: str) -> list:
    """A record's binding list; a row read without it (the upper-case lists do not return it) has
    just its main link."""
    if field in row:
        return list(row.get(field) or [])
    main = _norm(row.get(MAIN_LINK[field]))
    return [main] if main else []


def uf_value(value):
    """A custom field's value, comparable: text, or sorted texts for a multiple field."""
    if isinstance(value, (list, tuple)):
        return sorted(str(v) for v in value if v not in (None, "", False))
    return "" if value in (None, False) else str(value).strip()


def comparable(entity: str, row: dict, *, relation_map: dict[str, dict[str, str]] | None = None,
               user_map: dict[str, str] | None = None, uf=None) -> dict:
    """The fields that must be equal between a cloud record and its box twin, in box terms when
    maps are given (cloud relation IDs → box IDs, cloud users → box users). ``uf``: a
    :class:`connectors.bitrix24.userfields.UserFieldMaps`; its fields are compared, the cloud's
    values converted when ``relation_map`` is given (the row is the cloud's)."""
    out: dict = {f: _norm(row.get(f)) for f in DATA_FIELDS[entity]}
    for f, target in RELATIONS[entity].items():
        v = _norm(row.get(f))
        out[f] = (relation_map or {}).get(target, {}).get(v, v) if relation_map is not None and v else v
    for f, (target, _) in BINDINGS[entity].items():
        ids = [_norm(v) for v in bindings_of(row, f) if _norm(v)]
        if relation_map is not None:
            ids = [relation_map.get(target, {}).get(v, v) for v in ids]
        out[f] = sorted(ids, key=lambda v: (len(v), v))
    for f in uf.fields(entity) if uf is not None else ():
        v = row.get(f)
        if relation_map is not None:
            v = uf.to_box(entity, f, v, users=user_map, relations=relation_map)
        out[f] = uf_value(v)
    for f in USER_FIELDS:
        v = _norm(row.get(f))
        out[f] = user_map.get(v, v) if user_map is not None and v else v
    for f in MULTI[entity]:
        out[f] = multi_values(row.get(f))
    created = parse_date(row.get("DATE_CREATE"))
    out["DATE_CREATE"] = created.astimezone(dt.timezone.utc).isoformat() if created else ""
    return out


def field_hash(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def diff(a: dict, b: dict) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def chunks(seq: list, n: int) -> Iterable[list]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]

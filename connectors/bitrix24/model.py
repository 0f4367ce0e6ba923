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
MULTI = {"company": ("PHONE", "EMAIL"), "contact": ("PHONE", "EMAIL"), "lead": ("PHONE", "EMAIL"), "deal": ()}
# field → entity it points at; remapped cloud ID → box ID
RELATIONS = {
    "company": {},
    "contact": {"COMPANY_ID": "company"},
    "lead": {"CONTACT_ID": "contact", "COMPANY_ID": "company"},
    "deal": {"CONTACT_ID": "contact", "COMPANY_ID": "company", "LEAD_ID": "lead"},
}
USER_FIELDS = ("ASSIGNED_BY_ID",)
SELECT = {e: ["*", *MULTI[e]] for e in ENTITIES}


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


def comparable(entity: str, row: dict, *, relation_map: dict[str, dict[str, str]] | None = None,
               user_map: dict[str, str] | None = None) -> dict:
    """The fields that must be equal between a cloud record and its box twin, in box terms when
    maps are given (cloud relation IDs → box IDs, cloud users → box users)."""
    out: dict = {f: _norm(row.get(f)) for f in DATA_FIELDS[entity]}
    for f, target in RELATIONS[entity].items():
        v = _norm(row.get(f))
        out[f] = (relation_map or {}).get(target, {}).get(v, v) if relation_map is not None and v else v
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

"""In-memory CRM store of the sandbox portal: leads, deals, contacts, companies, users, tasks with
their comments, and telephony external lines.

Records are kept in the classic ``crm.<entity>.*`` shape (UPPER_CASE fields, IDs as strings on the
wire) with their dates as aware datetimes; :func:`render` turns one into what the REST API returns.
IDs are kept sorted so that the fast-export path (``order[ID]=ASC`` + ``filter[>ID]``) costs a
bisect plus one page, as on the real portal's primary-key index.
"""

from __future__ import annotations

import bisect
import datetime as dt
import re
import threading
from typing import Any, Iterable

ENTITIES = ("company", "contact", "lead", "deal")
ENTITY_TYPE_IDS = {1: "lead", 2: "deal", 3: "contact", 4: "company"}
MULTI_FIELDS = ("PHONE", "EMAIL")
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
ALL_FIELDS = {e: set(BASE_FIELDS[e]) | ({"PHONE", "EMAIL"} if e != "deal" else set()) | (
    {"CONTACT_IDS"} if e == "deal" else set()) for e in ENTITIES}
INT_FIELDS = {"ID", "COMPANY_ID", "CONTACT_ID", "LEAD_ID", "ASSIGNED_BY_ID", "CREATED_BY_ID", "MODIFY_BY_ID",
              "CATEGORY_ID"}

# crm.item.* speaks camelCase; these differ from the mechanical conversion.
ITEM_NAMES = {"DATE_CREATE": "createdTime", "DATE_MODIFY": "updatedTime", "CREATED_BY_ID": "createdBy",
              "MODIFY_BY_ID": "updatedBy", "CONTACT_IDS": "contactIds", "ID": "id"}


def to_item_name(field: str) -> str:
    """``COMPANY_ID`` → ``companyId`` (the crm.item.* spelling)."""
    if field in ITEM_NAMES:
        return ITEM_NAMES[field]
    head, *rest = field.lower().split("_")
    return head + "".join(p.capitalize() for p in rest)


_FROM_ITEM = {}


def from_item_name(name: str, entity: str) -> str | None:
    """``companyId`` → ``COMPANY_ID`` for a field the entity has; None for an unknown field."""
    key = (entity, name)
    if key not in _FROM_ITEM:
        _FROM_ITEM[key] = next((f for f in ALL_FIELDS[entity] if to_item_name(f) == name), None)
    return _FROM_ITEM[key]


def parse_date(value: Any) -> dt.datetime:
    """ISO 8601 with offset (the portal's format); a naive value is taken as UTC."""
    if isinstance(value, dt.datetime):
        d = value
    else:
        d = dt.datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    return d if d.tzinfo else d.replace(tzinfo=dt.timezone.utc)


_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class StoreError(Exception):
    """A request the portal would refuse (wire error code + description)."""

    def __init__(self, code: str, description: str) -> None:
        self.code, self.description = code, description
        super().__init__(f"{code}: {description}")


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

    # --- writing ------------------------------------------------------------------------------
    def _normalise(self, entity: str, fields: dict, *, partial: bool) -> dict:
        out: dict[str, Any] = {}
        for key, value in fields.items():
            if key not in ALL_FIELDS[entity] or key == "ID":
                continue  # the portal ignores unknown and read-only fields
            if key in DATE_FIELDS:
                out[key] = parse_date(value)
            elif key in MULTI_FIELDS:
                out[key] = value
            elif key == "CONTACT_IDS":
                out[key] = [int(v) for v in (value or [])]
            elif key in INT_FIELDS:
                out[key] = int(value) if value not in (None, "", "0", 0) else None
            else:
                out[key] = None if value is None else str(value)
        return out

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
        now = now or dt.datetime.now(dt.timezone.utc)
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
            if not keep_times or "DATE_CREATE" not in rec:
                rec["DATE_CREATE"] = now
            if not keep_times or "DATE_MODIFY" not in rec:
                rec["DATE_MODIFY"] = rec["DATE_CREATE"] if keep_times else now
            rec["ID"] = record_id
            if self.newest[entity] is None or rec["DATE_CREATE"] > self.newest[entity]:
                self.newest[entity] = rec["DATE_CREATE"]
            self.tables[entity][record_id] = rec
            ids = self.ids[entity]
            if not ids or ids[-1] < record_id:
                ids.append(record_id)
            else:
                bisect.insort(ids, record_id)
        return record_id

    def update(self, entity: str, record_id: int, fields: dict, *, now: dt.datetime | None = None) -> None:
        now = now or dt.datetime.now(dt.timezone.utc)
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
            rec.update(changes)
            rec["DATE_MODIFY"] = now

    def delete(self, entity: str, record_id: int) -> None:
        with self.lock:
            if self.tables[entity].pop(int(record_id), None) is None:
                raise StoreError("NOT_FOUND", f"{entity} with ID {record_id} not found")
            i = bisect.bisect_left(self.ids[entity], int(record_id))
            del self.ids[entity][i]

    def get(self, entity: str, record_id: int) -> dict | None:
        return self.tables[entity].get(int(record_id))

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
    def render(self, entity: str, rec: dict, select: Iterable[str] | None) -> dict:
        fields = _select_fields(entity, select)
        out = {}
        for f in fields:
            v = rec.get(f)
            if f in DATE_FIELDS and v is not None:
                v = v.astimezone(self.tz).isoformat(timespec="seconds")
            elif f in MULTI_FIELDS:
                if not v:
                    continue  # the portal omits empty multi-fields
                v = [dict(x, TYPE_ID=f) for x in v]
            elif f == "CONTACT_IDS":
                v = [str(x) for x in (v or [])]
            elif v is not None and f in INT_FIELDS:
                v = str(v)
            out[f] = v
        return out

    def list(self, entity: str, *, filter: dict | None, order: dict | None, select: list | None, start: int,
             count_cost_s: float = 0.0, page_size: int = 50) -> tuple[list[dict], int | None, float]:
        """One page of a list call: (rows, total or None when start=-1, simulated cost in seconds).

        With ``start >= 0`` the portal counts every matching row (``total``); that costs
        ``count_cost_s`` per row, which is what makes offset paging slow on big tables.
        """
        predicates, id_floor = _compile_filter(entity, filter or {})
        order = {str(k).upper(): str(v).upper() for k, v in (order or {}).items()} or {"ID": "ASC"}
        with self.lock:
            table = self.tables[entity]
            ids = self.ids[entity]
            id_only = list(order) == ["ID"]
            if id_only:
                desc = order["ID"] == "DESC"
                lo = bisect.bisect_right(ids, id_floor) if id_floor is not None else 0
                walk = reversed(ids[lo:]) if desc else (ids[i] for i in range(lo, len(ids)))
                if start < 0:
                    rows = []
                    for rid in walk:
                        rec = table[rid]
                        if all(p(rec) for p in predicates):
                            rows.append(rec)
                            if len(rows) == page_size:
                                break
                    self.rows_listed += len(rows)
                    return [self.render(entity, r, select) for r in rows], None, 0.0
                if not predicates and not desc:
                    # counting an unfiltered range needs no scan here; its cost is simulated below
                    total = len(ids) - lo
                    page = [table[rid] for rid in ids[lo + start: lo + start + page_size]]
                    self.rows_listed += len(page)
                    return [self.render(entity, r, select) for r in page], total, total * count_cost_s
                matching = [table[rid] for rid in walk if all(p(table[rid]) for p in predicates)]
            else:
                matching = [r for r in table.values() if all(p(r) for p in predicates)]
                for key, direction in reversed(list(order.items())):
                    matching.sort(key=lambda r, k=key: _sort_key(r.get(k)), reverse=direction == "DESC")
            total = len(matching)
            page = matching[max(start, 0): max(start, 0) + page_size]
            self.rows_listed += len(page)
            cost = total * count_cost_s if start >= 0 else 0.0
            return [self.render(entity, r, select) for r in page], (total if start >= 0 else None), cost

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


def _select_fields(entity: str, select) -> tuple[str, ...]:
    if not select:
        return BASE_FIELDS[entity]
    fields: list[str] = []
    for s in select:
        s = str(s).upper()
        if s == "*":
            fields.extend(f for f in BASE_FIELDS[entity] if f not in fields)
        elif s in ALL_FIELDS[entity] and s not in fields:
            fields.append(s)
    if "ID" not in fields:
        fields.insert(0, "ID")  # the portal always returns ID
    return tuple(fields)


_PREFIXES = (">=", "<=", "!=", ">", "<", "!", "@", "=", "%")


def _compile_filter(entity: str, flt: dict):
    """Filter keys with the portal's prefixes → predicates; also the lower bound for ``>ID``/``>=ID``
    (used to bisect into the sorted IDs)."""
    predicates = []
    id_floor: int | None = None
    for raw_key, value in flt.items():
        key = str(raw_key)
        op = next((p for p in _PREFIXES if key.startswith(p)), "")
        field = key[len(op):].upper()
        if field not in ALL_FIELDS[entity]:
            raise StoreError("INVALID_ARG_VALUE", f"unknown filter field {field!r}")
        conv = _converter(field)
        try:
            if op == "@":
                values = value if isinstance(value, list) else list(value.values()) if isinstance(value, dict) \
                    else [value]
                wanted = {conv(v) for v in values}
                predicates.append(lambda r, f=field, w=wanted: r.get(f) in w)
                continue
            target = conv(value) if value not in ("", None) else None
        except (ValueError, TypeError):
            raise StoreError("INVALID_ARG_VALUE", f"bad filter value for {key}") from None
        if field == "ID" and op in (">", ">=") and target is not None:
            id_floor = target if op == ">" else target - 1
            continue
        if op in ("", "="):
            predicates.append(lambda r, f=field, t=target: r.get(f) == t)
        elif op in ("!", "!="):
            predicates.append(lambda r, f=field, t=target: r.get(f) != t)
        elif op == "%":
            predicates.append(lambda r, f=field, t=str(value).lower(): t in str(r.get(f) or "").lower())
        else:
            cmp = {">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
                   "<": lambda a, b: a < b, "<=": lambda a, b: a <= b}[op]
            predicates.append(lambda r, f=field, t=target, c=cmp: r.get(f) is not None and t is not None
                              and c(r.get(f), t))
    return predicates, id_floor


def _converter(field: str):
    if field in DATE_FIELDS:
        return parse_date
    if field in INT_FIELDS:
        return lambda v: int(v) if v not in (None, "") else None
    return lambda v: None if v is None else str(v)

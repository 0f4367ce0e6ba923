"""Contact ↔ company bindings of the sandbox portal: ``crm.contact.company.items.get/set/delete``,
``crm.contact.company.add/delete`` and ``crm.company.contact.items.get/set``
(bitrix-tools/b24-rest-docs api-reference/crm/contacts/company/*.md, crm/companies/contacts/*.md).

A contact keeps its companies as an ordered list, ``COMPANY_IDS`` in the store, whose first entry
is the primary binding and the contact's ``COMPANY_ID`` (the same rule as a deal's contacts, see
``CrmStore._bind_contacts``). Bindings answer ``[{COMPANY_ID|CONTACT_ID, SORT, ROLE_ID: 0,
IS_PRIMARY}]`` with integer IDs, the primary first; ``IS_PRIMARY: Y`` in ``set`` (else the first
item) chooses the primary one; removing the primary binding makes the next one primary
(crm-contact-company-delete.md). From a company's side, the contacts are those bound to it, by ID.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import StoreError


def _owner(p: dict) -> int:
    raw = p.get("id", p.get("ID"))
    try:
        owner = int(str(raw).strip()) if raw not in (None, "") else 0
    except ValueError:
        owner = 0
    if owner <= 0:
        raise StoreError("", "The parameter ownerEntityID is invalid or not defined.")
    return owner


def _record(store, entity: str, record_id: int) -> dict:
    rec = store.get(entity, record_id)
    if rec is None:
        raise StoreError("", "Not found")
    return rec


def _answer(ids: list[int], key: str) -> dict:
    return {"result": [{key: i, "SORT": (n + 1) * 10, "ROLE_ID": 0, "IS_PRIMARY": "Y" if n == 0 else "N"}
                       for n, i in enumerate(ids)]}


def _ordered(items: Any, key: str) -> list[int]:
    """``items`` of a ``set`` → IDs, the primary first: the first ``IS_PRIMARY: Y`` one, else the
    first given (…-items-set.md); a given ``SORT`` orders the rest."""
    if not isinstance(items, (list, dict)):
        raise StoreError("", "The parameter items must be array.")
    rows = [i for i in (items.values() if isinstance(items, dict) else items) if isinstance(i, dict)]
    ordered = sorted(enumerate(rows), key=lambda p: (int(p[1].get("SORT") or (p[0] + 1) * 10), p[0]))
    ids = list(dict.fromkeys(int(i[key]) for _, i in ordered if int(i.get(key) or 0) > 0))
    primary = next((int(i[key]) for i in rows if str(i.get("IS_PRIMARY", "")).upper() == "Y"
                    and int(i.get(key) or 0) > 0), None)
    if primary is not None:
        ids.remove(primary)
        ids.insert(0, primary)
    return ids


def _contact_items(store, verb: str, p: dict) -> dict:
    contact_id = _owner(p)
    if verb == "set":
        ids = _ordered(p.get("items", p.get("ITEMS")), "COMPANY_ID")
        store.set_bindings("contact", contact_id, ids)
        return {"result": True}
    rec = _record(store, "contact", contact_id)
    if verb == "delete":
        store.set_bindings("contact", contact_id, [])
        return {"result": True}
    return _answer(list(rec.get("COMPANY_IDS") or []), "COMPANY_ID")


def _contact_company(store, verb: str, p: dict) -> dict:
    """``crm.contact.company.add`` (false when already bound) and ``.delete``."""
    contact_id = _owner(p)
    fields = p.get("fields", p.get("FIELDS"))
    if not isinstance(fields, dict):
        raise StoreError("", "The parameter 'fields' must be array.")
    try:
        company_id = int(fields.get("COMPANY_ID") or 0)
    except (TypeError, ValueError):
        company_id = 0
    if company_id <= 0:
        raise StoreError("", "The parameter 'fields' is not valid.")
    with store.lock:
        ids = list(_record(store, "contact", contact_id).get("COMPANY_IDS") or [])
        if verb == "add":
            if company_id in ids:
                return {"result": False}
            primary = str(fields.get("IS_PRIMARY", "")).upper() == "Y"
            ids = [company_id, *ids] if primary else [*ids, company_id]
        elif company_id in ids:
            ids.remove(company_id)
        else:
            return {"result": False}
        store.set_bindings("contact", contact_id, ids)
    return {"result": True}


def _company_items(store, verb: str, p: dict) -> dict:
    """A company's contacts: bound to it or not, each contact keeps its other companies."""
    company_id = _owner(p)
    _record(store, "company", company_id)
    with store.lock:
        bound = sorted(rid for rid, rec in store.tables["contact"].items() if company_id in (rec.get("COMPANY_IDS") or []))
        if verb == "get":
            return _answer(bound, "CONTACT_ID")
        wanted = _ordered(p.get("items", p.get("ITEMS")), "CONTACT_ID")
        for contact_id in set(bound) - set(wanted):
            ids = [i for i in store.tables["contact"][contact_id]["COMPANY_IDS"] if i != company_id]
            store.set_bindings("contact", contact_id, ids)
        for contact_id in wanted:
            rec = _record(store, "contact", contact_id)
            ids = list(rec.get("COMPANY_IDS") or [])
            if company_id not in ids:
                store.set_bindings("contact", contact_id, [*ids, company_id])
    return {"result": True}


def _bind(handler, verb: str) -> Callable[[Any, dict], dict]:
    return lambda store, p: handler(store, verb, p)


METHODS: dict[str, Callable[[Any, dict], dict]] = {
    "crm.contact.company.items.get": _bind(_contact_items, "get"),
    "crm.contact.company.items.set": _bind(_contact_items, "set"),
    "crm.contact.company.items.delete": _bind(_contact_items, "delete"),
    "crm.contact.company.add": _bind(_contact_company, "add"),
    "crm.contact.company.delete": _bind(_contact_company, "delete"),
    "crm.company.contact.items.get": _bind(_company_items, "get"),
    "crm.company.contact.items.set": _bind(_company_items, "set"),
}

"""Custom fields (``UF_CRM_…``) of the four CRM entities: definitions made on the box, values in box terms.

The restored box has every definition the backup had, with the same IDs and list-value IDs. What the
cloud added after the backup — a new field, a new value of a list field — is missing on the box, and
the box gives a new list value its own ID from its own sequence. So before any record is written:

- every cloud definition the box lacks is created with ``crm.<entity>.userfield.add`` (type,
  multiple, mandatory, settings, labels, list values);
- every list value (``enumeration``) the box lacks is added with ``crm.<entity>.userfield.update``
  (``LIST`` items without an ``ID`` are added; the method "overwrites only the values passed":
  bitrix-tools/b24-rest-docs api-reference/crm/leads/userfield/crm-lead-userfield-update.md);
- list values are then mapped **by their text** (``VALUE``), cloud ID → box ID, never by ID.

A record's values are converted with :meth:`UserFieldMaps.to_box`: list IDs through that map, users
(``employee``) through the user map, links to CRM records (``crm``: ``L_12``, ``C_5``, ``CO_3``,
``D_7``, or a bare ID when the field links one entity type) through the records' ID maps. Values
of ``file`` fields are not moved (a file is not a value the REST API can copy: it would have to be
downloaded from the cloud and uploaded); those fields are listed in ``not_moved``.

Definitions are read with ``crm.<entity>.userfield.list``, which includes ``LIST`` for list fields
(…/crm-lead-userfield-list.md, the answer example); record values come with ``select`` ``UF_*``
(…/crm-lead-list.md: ``*`` is every field "without custom and multiple ones").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from connectors.errors import FatalError

from .rest import Bitrix24Client

log = logging.getLogger("cloud2box.bitrix24")

NOT_COPIED_TYPES = frozenset({"file"})
# Properties of a definition that userfield.add takes as they are (…/crm-lead-userfield-add.md).
_DEFINITION_KEYS = ("USER_TYPE_ID", "XML_ID", "SORT", "MULTIPLE", "MANDATORY", "SHOW_FILTER", "SHOW_IN_LIST",
                    "EDIT_IN_LIST", "IS_SEARCHABLE", "SETTINGS", "EDIT_FORM_LABEL", "LIST_COLUMN_LABEL",
                    "LIST_FILTER_LABEL", "ERROR_MESSAGE", "HELP_MESSAGE")
# Prefixes of a ``crm`` field's values (CCrmOwnerTypeAbbr): which entity each ID belongs to.
CRM_LINK_PREFIXES = {"L": "lead", "D": "deal", "C": "contact", "CO": "company"}
_SETTING_OF = {"LEAD": "lead", "DEAL": "deal", "CONTACT": "contact", "COMPANY": "company"}


def is_uf(name: str) -> bool:
    return name.startswith("UF_CRM_")


def read_definitions(client: Bitrix24Client, entity: str) -> dict[str, dict]:
    """FIELD_NAME → definition (with ``LIST`` for list fields). Bounded: 1000 pages of 50."""
    out: dict[str, dict] = {}
    start = 0
    for _ in range(1000):
        body = client.call(f"crm.{entity}.userfield.list", {"order": {"ID": "ASC"}, "start": start})
        for d in body.get("result") or []:
            out[str(d["FIELD_NAME"])] = d
        if "next" not in body:
            return out
        start = int(body["next"])
    raise FatalError(f"{client.name}: crm.{entity}.userfield.list did not end", fix="check the portal")


def _values(definition: dict) -> list[dict]:
    return [v for v in definition.get("LIST") or [] if isinstance(v, dict) and str(v.get("VALUE") or "")]


@dataclass
class UserFieldMaps:
    """What the box needs to take the cloud's custom field values, per entity."""

    types: dict[str, dict[str, str]] = field(default_factory=dict)        # entity → field → USER_TYPE_ID
    crm_targets: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # entity → crm field → entities
    enum: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)  # entity → field → cloud → box ID
    created: list[str] = field(default_factory=list)          # "lead UF_CRM_X" definitions made on the box
    values_added: list[str] = field(default_factory=list)     # "lead UF_CRM_X: value" list values added
    not_moved: list[str] = field(default_factory=list)        # "lead UF_CRM_X (file)": values not copied
    problems: list[str] = field(default_factory=list)         # a value the box still lacks (reported)

    def fields(self, entity: str) -> list[str]:
        """The custom fields whose values move (file fields excluded)."""
        return sorted(f for f, t in self.types.get(entity, {}).items() if t not in NOT_COPIED_TYPES)

    def to_box(self, entity: str, name: str, value, *, users: dict[str, str] | None = None,
               relations: dict[str, dict[str, str]] | None = None):
        """The cloud's ``value`` of field ``name`` in box terms (lists stay lists)."""
        if isinstance(value, (list, tuple)):
            return [self.to_box(entity, name, v, users=users, relations=relations) for v in value]
        text = "" if value is None or value is False else str(value)
        if not text:
            return ""
        kind = self.types.get(entity, {}).get(name)
        if kind == "enumeration":
            return self.enum.get(entity, {}).get(name, {}).get(text, text)
        if kind == "employee" and users is not None:
            return users.get(text, text)
        if kind == "crm" and relations is not None:
            return self._crm_link(entity, name, text, relations)
        return value

    def _crm_link(self, entity: str, name: str, text: str, relations: dict[str, dict[str, str]]) -> str:
        prefix, sep, rid = text.rpartition("_")
        if sep and prefix in CRM_LINK_PREFIXES:
            target = CRM_LINK_PREFIXES[prefix]
            return f"{prefix}_{relations.get(target, {}).get(rid, rid)}"
        targets = self.crm_targets.get(entity, {}).get(name, [])
        if len(targets) == 1 and text.isdigit():  # a bare ID: the field links one entity type only
            return relations.get(targets[0], {}).get(text, text)
        return text


def sync_definitions(cloud_definitions: dict[str, dict[str, dict]], box: Bitrix24Client, *,
                     create: bool = True) -> UserFieldMaps:
    """Given the cloud's definitions per entity (:func:`read_definitions`, taken by the export), read
    the box's, make what it lacks (``create``; the reconciliation only reads), and map list values by
    their text. Idempotent: a second run finds everything made."""
    maps = UserFieldMaps()
    for entity, cloud_defs in cloud_definitions.items():
        box_defs = read_definitions(box, entity)
        maps.types[entity] = {}
        maps.enum[entity] = {}
        maps.crm_targets[entity] = {}
        for name, d in cloud_defs.items():
            kind = str(d.get("USER_TYPE_ID") or "")
            maps.types[entity][name] = kind
            if kind in NOT_COPIED_TYPES:
                maps.not_moved.append(f"{entity} {name} ({kind})")
                continue
            if kind == "crm":
                settings = d.get("SETTINGS") or {}
                maps.crm_targets[entity][name] = [e for k, e in _SETTING_OF.items() if str(settings.get(k)) == "Y"]
            if name not in box_defs and create:
                box_defs[name] = _create(box, entity, name, d)
                maps.created.append(f"{entity} {name}")
            if kind == "enumeration" and name in box_defs:
                box_defs[name] = _complete_list(box, entity, name, d, box_defs[name], maps, create=create)
                maps.enum[entity][name] = _enum_map(entity, name, d, box_defs[name], maps)
    return maps


def _create(box: Bitrix24Client, entity: str, name: str, definition: dict) -> dict:
    fields = {k: definition[k] for k in _DEFINITION_KEYS if definition.get(k) not in (None, "")}
    fields["FIELD_NAME"] = name
    if _values(definition):
        fields["LIST"] = [{k: v[k] for k in ("VALUE", "SORT", "DEF", "XML_ID") if v.get(k) not in (None, "")}
                          for v in _values(definition)]
    box.call(f"crm.{entity}.userfield.add", {"fields": fields}, idempotent=False)
    log.info("%s: custom field %s (%s) created on the box", entity, name, definition.get("USER_TYPE_ID"))
    made = read_definitions(box, entity).get(name)
    if made is None:
        raise FatalError(f"the box portal: custom field {name} of {entity} was not created",
                         fix="check that the box's webhook may manage CRM settings (scope crm, admin rights)")
    return made


def _complete_list(box: Bitrix24Client, entity: str, name: str, cloud_def: dict, box_def: dict,
                   maps: UserFieldMaps, *, create: bool) -> dict:
    have = {str(v.get("VALUE")) for v in _values(box_def)}
    missing = [v for v in _values(cloud_def) if str(v.get("VALUE")) not in have]
    if not missing or not create:
        return box_def
    box.call(f"crm.{entity}.userfield.update", {
        "id": box_def["ID"],
        "fields": {"LIST": [{k: v[k] for k in ("VALUE", "SORT", "DEF", "XML_ID") if v.get(k) not in (None, "")}
                            for v in missing]}}, idempotent=False)  # a lost answer: the step re-reads and goes on
    maps.values_added.extend(f"{entity} {name}: {v.get('VALUE')}" for v in missing)
    return read_definitions(box, entity).get(name, box_def)


def _enum_map(entity: str, name: str, cloud_def: dict, box_def: dict, maps: UserFieldMaps) -> dict[str, str]:
    box_by_value: dict[str, str] = {}
    for v in _values(box_def):
        box_by_value.setdefault(str(v["VALUE"]), str(v["ID"]))
    out = {}
    for v in _values(cloud_def):
        box_id = box_by_value.get(str(v["VALUE"]))
        if box_id is None:
            maps.problems.append(f"{entity} {name}: value {v['VALUE']!r} is not on the box")
            continue
        out[str(v["ID"])] = box_id
    return out

"""Custom fields, WEB/IM, multiple bindings and refused creation times, moved by the delta.

The cloud's post-cutoff data is made here through the portal's REST API (the vendor's methods and
names, as a user's integration would), so these tests do not depend on what the generator seeds."""

from __future__ import annotations

import csv
import datetime as dt

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.bitrix24.delta import export_delta
from connectors.bitrix24.importer import import_delta, map_users, write_retimed_csv
from connectors.bitrix24.model import comparable, uf_value
from connectors.bitrix24.reconcile import reconcile
from connectors.bitrix24.userfields import UserFieldMaps

from .crm_helpers import clients, idmap, make_pair


def rest(webhook: str, method: str, params: dict) -> dict:
    body = requests.post(f"{webhook}{method}.json", json=params, timeout=30).json()
    assert "error" not in body, (method, body)
    return body["result"]


def definitions(webhook: str, entity: str) -> dict[str, dict]:
    return {d["FIELD_NAME"]: d for d in rest(webhook, f"crm.{entity}.userfield.list", {})}


def values_by_id(definition: dict) -> dict[str, str]:
    return {str(v["ID"]): v["VALUE"] for v in definition.get("LIST") or []}


@pytest.fixture
def pair():
    p = make_pair(companies=12, contacts=20, leads=30, deals=12)
    yield p
    p.close()


def _move(pair, tmp_path):
    cloud, box = clients(pair)
    m = idmap(tmp_path)
    delta = export_delta(cloud, box, pair.cutoff)
    users = map_users(cloud, box)
    report = import_delta(box, delta, m, user_map=users, fallback_user_id=1)
    rec = reconcile(box, delta, m, user_map=users, fallback_user_id=1, cloud=cloud)
    return delta, report, rec, m, box


def _post_cutoff_work(pair) -> dict:
    """What a sales team did in the cloud after the backup, through REST."""
    cw, bw = pair.cloud_webhook, pair.box_webhook
    # A list field both portals have (made before the backup), whose values differ in ID: the box made
    # another list field first, so its sequence of list-value IDs is ahead.
    rest(bw, "crm.lead.userfield.add", {"fields": {"FIELD_NAME": "BOX_ONLY", "USER_TYPE_ID": "enumeration",
                                                    "LIST": [{"VALUE": f"v{i}"} for i in range(5)]}})
    for webhook in (cw, bw):
        rest(webhook, "crm.lead.userfield.add", {"fields": {"FIELD_NAME": "SIZE", "USER_TYPE_ID": "enumeration",
                                                             "LIST": [{"VALUE": "S"}, {"VALUE": "M"}]}})
    size = definitions(cw, "lead")["UF_CRM_SIZE"]
    rest(cw, "crm.lead.userfield.update", {"id": size["ID"], "fields": {"LIST": [{"VALUE": "XL"}]}})  # after the backup
    # Fields made in the cloud only, after the backup.
    rest(cw, "crm.lead.userfield.add", {"fields": {"FIELD_NAME": "CHANNELS", "USER_TYPE_ID": "enumeration",
                                                    "MULTIPLE": "Y",
                                                    "LIST": [{"VALUE": "phone"}, {"VALUE": "mail"}, {"VALUE": "chat"}]}})
    rest(cw, "crm.lead.userfield.add", {"fields": {"FIELD_NAME": "NOTE", "USER_TYPE_ID": "string"}})
    by_value = {f: {v["VALUE"]: v["ID"] for v in d.get("LIST") or []} for f, d in definitions(cw, "lead").items()}
    lead = rest(cw, "crm.lead.add", {"fields": {
        "TITLE": "with custom fields", "UF_CRM_SIZE": by_value["UF_CRM_SIZE"]["XL"],
        "UF_CRM_CHANNELS": [by_value["UF_CRM_CHANNELS"]["mail"], by_value["UF_CRM_CHANNELS"]["chat"]],
        "UF_CRM_NOTE": "=1+1 is not a formula here",
        "WEB": [{"VALUE": "https://shop.example", "VALUE_TYPE": "WORK"}],
        "IM": [{"VALUE": "@buyer", "VALUE_TYPE": "TELEGRAM"}]}})
    company_new = rest(cw, "crm.company.add", {"fields": {"TITLE": "made after the backup"}})
    old_company = min(pair.dataset.backup["company"])
    contact = rest(cw, "crm.contact.add", {"fields": {"NAME": "Multi", "COMPANY_ID": company_new,
                                                      "COMPANY_IDS": [company_new, old_company]}})
    old_contact = min(pair.dataset.backup["contact"])
    deal = rest(cw, "crm.deal.add", {"fields": {"TITLE": "two contacts", "CONTACT_IDS": [contact, old_contact]}})
    return {"lead": lead, "company": company_new, "old_company": old_company, "contact": contact,
            "old_contact": old_contact, "deal": deal}


def _box_twin(box_webhook: str, entity: str, cloud_id) -> dict:
    rows = rest(box_webhook, f"crm.{entity}.list", {"filter": {"ORIGINATOR_ID": "cloud2box", "ORIGIN_ID": cloud_id},
                                                    "select": ["*", "UF_*", "PHONE", "EMAIL", "WEB", "IM"]})
    assert len(rows) == 1, rows
    return rows[0]


def _item(box_webhook: str, entity_type_id: int, item_id) -> dict:
    return rest(box_webhook, "crm.item.get", {"entityTypeId": entity_type_id, "id": item_id})["item"]


def test_custom_fields_web_im_and_bindings_arrive_in_box_terms(pair, tmp_path):
    made = _post_cutoff_work(pair)
    delta, report, rec, m, _box = _move(pair, tmp_path)
    assert rec.ok, rec.evidence()
    assert report.failures == []
    uf = report.userfields_summary()
    assert {"lead UF_CRM_CHANNELS", "lead UF_CRM_NOTE"} <= set(uf["definitions_created"])  # the generator's too
    assert "lead UF_CRM_SIZE: XL" in uf["list_values_added"]

    bw = pair.box_webhook
    box_defs = definitions(bw, "lead")
    lead = _box_twin(bw, "lead", made["lead"])
    assert values_by_id(box_defs["UF_CRM_SIZE"])[str(lead["UF_CRM_SIZE"])] == "XL"  # by value, not by ID
    assert sorted(values_by_id(box_defs["UF_CRM_CHANNELS"])[str(v)] for v in lead["UF_CRM_CHANNELS"]) == ["chat", "mail"]
    assert lead["UF_CRM_NOTE"] == "=1+1 is not a formula here"
    assert [(x["VALUE"], x["VALUE_TYPE"]) for x in lead["WEB"]] == [("https://shop.example", "WORK")]
    assert [(x["VALUE"], x["VALUE_TYPE"]) for x in lead["IM"]] == [("@buyer", "TELEGRAM")]

    company_box = m.get("company")[str(made["company"])]
    contact = _box_twin(bw, "contact", made["contact"])
    assert sorted(map(str, _item(bw, 3, contact["ID"])["companyIds"])) == sorted([company_box, str(made["old_company"])])
    deal = _box_twin(bw, "deal", made["deal"])
    assert sorted(map(str, _item(bw, 2, deal["ID"])["contactIds"])) == sorted([contact["ID"], str(made["old_contact"])])

    cloud, box = clients(pair)
    again = import_delta(box, export_delta(cloud, box, pair.cutoff), m, user_map=map_users(cloud, box))
    assert again.written == 0, again.summary()
    assert again.userfields_summary()["definitions_created"] == []


def test_reconciliation_fails_when_a_custom_value_differs_on_the_box(pair, tmp_path):
    made = _post_cutoff_work(pair)
    _move(pair, tmp_path)
    bw = pair.box_webhook
    twin = _box_twin(bw, "lead", made["lead"])
    rest(bw, "crm.lead.update", {"id": twin["ID"], "fields": {"UF_CRM_NOTE": "changed on the box"}})
    cloud, box = clients(pair)
    m = idmap(tmp_path)
    delta = export_delta(cloud, box, pair.cutoff)
    rec = reconcile(box, delta, m, user_map=map_users(cloud, box), fallback_user_id=1)
    assert not rec.ok
    bad = [x for x in rec.entities["lead"].mismatches if x["cloud_id"] == str(made["lead"])]
    assert bad and "UF_CRM_NOTE" in bad[0]["fields"]


def test_records_older_than_the_boxs_newest_move_with_the_box_time(pair, tmp_path):
    """A record made on the box after every cloud record (the 2.8 test data, or the team working on
    the box before a sweep) makes the box refuse the cloud's creation times: everything still moves,
    dated by the box, and the cloud's times are listed."""
    newest = rest(pair.box_webhook, "crm.lead.add", {"fields": {"TITLE": "made on the box just now"}})
    created = {str(c.record_id) for c in pair.dataset.changes if c.entity == "lead" and c.kind == "add"}
    delta, report, rec, m, _box = _move(pair, tmp_path)
    assert report.failures == []
    assert rec.ok, rec.evidence()
    assert set(report.entities["lead"].times_not_kept) == created
    assert set(rec.entities["lead"].creation_time_not_kept) == created
    cloud_times = report.entities["lead"].cloud_times
    assert all(cloud_times[c] for c in created)
    path = write_retimed_csv(report, tmp_path / "out")
    with path.open(newline="", encoding="utf-8") as fh:
        listed = {r["CLOUD_ID"]: r["CLOUD_DATE_CREATE"] for r in csv.DictReader(fh) if r["ENTITY"] == "lead"}
    assert listed == {c: cloud_times[c] for c in created}
    assert (path.stat().st_mode & 0o777) == 0o600
    box_newest = rest(pair.box_webhook, "crm.lead.get", {"id": newest})["DATE_CREATE"]
    for cid in created:
        twin = _box_twin(pair.box_webhook, "lead", cid)
        assert dt.datetime.fromisoformat(twin["DATE_CREATE"]) >= dt.datetime.fromisoformat(box_newest)


_ids = st.integers(min_value=1, max_value=10_000).map(str)


@settings(max_examples=60, deadline=None)
@given(enum=st.dictionaries(_ids, _ids, min_size=1, max_size=8), data=st.data())
def test_list_values_map_to_box_ids_whatever_their_shape(enum, data):
    """A single or multiple list value, given as IDs, becomes the box's IDs; unknown IDs stay as they are
    (the reconciliation then shows them), and the comparison ignores the order of a multiple value."""
    maps = UserFieldMaps(types={"lead": {"UF_CRM_X": "enumeration"}}, enum={"lead": {"UF_CRM_X": enum}})
    chosen = data.draw(st.lists(st.sampled_from(sorted(enum)), max_size=5))
    assert maps.to_box("lead", "UF_CRM_X", chosen) == [enum[c] for c in chosen]
    one = data.draw(st.sampled_from(sorted(enum)))
    assert maps.to_box("lead", "UF_CRM_X", one) == enum[one]
    assert uf_value(list(reversed(chosen))) == uf_value(chosen)
    row = {"TITLE": "t", "UF_CRM_X": chosen}
    want = comparable("lead", row, relation_map={}, user_map={}, uf=maps)
    have = comparable("lead", {"TITLE": "t", "UF_CRM_X": [enum[c] for c in reversed(chosen)]}, uf=maps)
    assert want == have


@settings(max_examples=60, deadline=None)
@given(link=st.sampled_from(["L", "D", "C", "CO"]), rid=_ids, box_id=_ids)
def test_crm_links_are_remapped_by_their_prefix(link, rid, box_id):
    entity = {"L": "lead", "D": "deal", "C": "contact", "CO": "company"}[link]
    maps = UserFieldMaps(types={"deal": {"UF_CRM_REF": "crm"}}, crm_targets={"deal": {"UF_CRM_REF": []}})
    assert maps.to_box("deal", "UF_CRM_REF", f"{link}_{rid}", relations={entity: {rid: box_id}}) == f"{link}_{box_id}"
    assert maps.to_box("deal", "UF_CRM_REF", f"{link}_{rid}", relations={}) == f"{link}_{rid}"  # a backup record

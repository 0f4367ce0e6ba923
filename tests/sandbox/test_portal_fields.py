"""The sandbox portal's custom fields, WEB/IM multi-fields, contact ↔ company bindings and smart
processes, over real HTTP (facts and doc paths: sandbox/portal/userfields.py, relations.py,
dynamic.py, store.py)."""

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox.portal import Portal, PortalLimits, PortalServer, generate, start_pair
from sandbox.portal.custom_data import (
    CONTACT_LANGUAGES,
    DEAL_DELIVERY,
    LEAD_INTEREST,
    SHIPMENT_CARRIER,
)
from sandbox.portal.store import CrmStore
from sandbox.portal.userfields import item_name

_SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
def srv():
    with PortalServer(Portal(CrmStore(), limits=PortalLimits.free(rate=1000, burst=1000))) as server:
        yield server


def call(srv, method: str, **params):
    r = requests.post(f"{srv.webhook}{method}.json", json=params, timeout=5)
    assert r.status_code == 200, r.text
    return r.json()["result"]


def refused(srv, method: str, **params) -> dict:
    r = requests.post(f"{srv.webhook}{method}.json", json=params, timeout=5)
    assert r.status_code >= 400, r.text
    return r.json()


# --- definitions -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name, camel", [  # the table of api-reference/crm/universal/index.md
    ("UF_CRM_3_DIGIT", "ufCrm3Digit"), ("UF_CRM_3_1747309727", "ufCrm3_1747309727"),
    ("UF_CRM_3_DIGIT10", "ufCrm_3_DIGIT10"), ("UF_CRM_3_DIGIT_10", "ufCrm_3_DIGIT_10"),
    ("UF_CRM_1747309879", "ufCrm_1747309879"), ("UF_CRM_10_5186744711", "ufCrm10_5186744711")])
def test_item_names_of_custom_fields_follow_the_docs_table(name, camel):
    assert item_name(name) == camel


_VALUES = st.lists(st.text("abcdefghij xyzäö", min_size=1, max_size=12).filter(str.strip), min_size=1, max_size=5,
                   unique_by=str.strip)


@_SETTINGS
@given(first=_VALUES, later=_VALUES, entity=st.sampled_from(["lead", "deal", "contact", "company"]))
def test_enumeration_items_get_ids_from_one_portal_sequence(srv, first, later, entity):
    """FIELD_NAME gets UF_CRM_; each LIST item gets an ID from one sequence for the whole portal;
    .update adds items; .list filters and answers the field."""
    n = len(srv.store.userfields.fields)
    field_id = call(srv, f"crm.{entity}.userfield.add", fields={
        "FIELD_NAME": f"kind{n}", "USER_TYPE_ID": "enumeration", "LABEL": "Kind",
        "LIST": [{"VALUE": v, "SORT": 10 * i} for i, v in enumerate(first)]})
    got = call(srv, f"crm.{entity}.userfield.get", id=field_id)
    assert got["FIELD_NAME"] == f"UF_CRM_KIND{n}" and got["MULTIPLE"] == "N" and got["EDIT_FORM_LABEL"]["en"] == "Kind"
    assert [i["VALUE"] for i in got["LIST"]] == [v.strip() for v in first]
    assert call(srv, f"crm.{entity}.userfield.update", id=field_id, fields={"LIST": [{"VALUE": v} for v in later]})
    items = call(srv, f"crm.{entity}.userfield.get", id=field_id)["LIST"]
    assert sorted(i["VALUE"] for i in items) == sorted([v.strip() for v in first] + [v.strip() for v in later])
    every_id = [int(i["ID"]) for f in srv.store.userfields.fields.values() for i in f["LIST"]]
    assert len(every_id) == len(set(every_id))  # unique across all fields of all entities
    listed = call(srv, f"crm.{entity}.userfield.list", filter={"FIELD_NAME": f"UF_CRM_KIND{n}", "LANG": "en"})
    assert [f["ID"] for f in listed] == [str(field_id)] and listed[0]["LIST_COLUMN_LABEL"] == "Kind"


def test_userfield_refusals_and_list_item_changes(srv):
    assert refused(srv, "crm.lead.userfield.add", fields={"USER_TYPE_ID": "string"})["error"] == ""
    assert refused(srv, "crm.lead.userfield.add", fields={"FIELD_NAME": "X"})["error_description"] == \
        "The 'USER_TYPE_ID' field is not found."
    assert refused(srv, "crm.lead.userfield.add", fields={"FIELD_NAME": "bad-name", "USER_TYPE_ID": "string"})[
        "error"] == "ERROR_CORE"
    assert refused(srv, "crm.lead.userfield.add", fields={"FIELD_NAME": "A" * 44, "USER_TYPE_ID": "string"})[
        "error"] == "ERROR_CORE"
    assert refused(srv, "crm.lead.userfield.add", fields={"FIELD_NAME": "X", "USER_TYPE_ID": "nonsense"})[
        "error"] == "ERROR_CORE"
    flag = call(srv, "crm.lead.userfield.add", fields={"FIELD_NAME": "UF_FLAG", "USER_TYPE_ID": "boolean",
                                                        "MULTIPLE": "Y"})
    assert call(srv, "crm.lead.userfield.get", id=flag)["FIELD_NAME"] == "UF_CRM_FLAG"
    assert call(srv, "crm.lead.userfield.get", id=flag)["MULTIPLE"] == "N"  # booleans cannot be multiple
    assert refused(srv, "crm.deal.userfield.get", id=flag)["error"] == "ACCESS_DENIED"  # a lead's field
    assert refused(srv, "crm.lead.userfield.get", id=999)["error"] == "ERROR_NOT_FOUND"
    kind = call(srv, "crm.lead.userfield.add", fields={"FIELD_NAME": "KIND", "USER_TYPE_ID": "enumeration",
                                                        "LIST": [{"VALUE": "a"}, {"VALUE": "b"}, {"VALUE": ""}]})
    a, b = call(srv, "crm.lead.userfield.get", id=kind)["LIST"]
    call(srv, "crm.lead.userfield.update", id=kind, fields={"LIST": [{"ID": a["ID"], "DEL": "Y"},
                                                                     {"ID": b["ID"], "VALUE": "b2"}]})
    assert [(i["ID"], i["VALUE"]) for i in call(srv, "crm.lead.userfield.get", id=kind)["LIST"]] == [(b["ID"], "b2")]


# --- values ----------------------------------------------------------------------------------------
def _fields(srv) -> dict[str, str]:
    made = {}
    for name, kind, multiple, extra in (("NOTE", "string", "N", {}), ("SIZE", "integer", "N", {}),
                                        ("RATE", "double", "N", {}), ("VIP", "boolean", "N", {}),
                                        ("SEEN", "datetime", "N", {}), ("DAY", "date", "N", {}),
                                        ("TAGS", "enumeration", "Y", {"LIST": [{"VALUE": "x"}, {"VALUE": "y"}]})):
        call(srv, "crm.contact.userfield.add", fields={"FIELD_NAME": name, "USER_TYPE_ID": kind, "MULTIPLE": multiple,
                                                       **extra})
        made[name] = f"UF_CRM_{name}"
    return made


def test_values_are_selected_as_the_list_pages_say(srv):
    """``*`` = all but custom and multi-fields, ``UF_*`` = the custom fields, no select = both
    (crm-contact-list.md); get answers everything; multiple values are arrays; an enumeration item
    the field does not have is stored as given (EnumType::checkFields checks nothing)."""
    _fields(srv)
    tags = [int(i["ID"]) for i in srv.store.userfields.of("CRM_CONTACT")["UF_CRM_TAGS"]["LIST"]]
    cid = call(srv, "crm.contact.add", fields={
        "NAME": "Ann", "UF_CRM_NOTE": "vip", "UF_CRM_SIZE": "12", "UF_CRM_RATE": "2.5", "UF_CRM_VIP": "Y",
        "UF_CRM_SEEN": "2024-03-21T15:35:00+03:00", "UF_CRM_DAY": "2024-03-21", "UF_CRM_TAGS": [tags[1], 9999],
        "UF_CRM_UNKNOWN": "dropped"})
    got = call(srv, "crm.contact.get", id=cid)
    assert (got["UF_CRM_NOTE"], got["UF_CRM_SIZE"], got["UF_CRM_RATE"], got["UF_CRM_VIP"]) == ("vip", "12", "2.5", True)
    assert got["UF_CRM_SEEN"] == "2024-03-21T15:35:00+03:00" and got["UF_CRM_DAY"] == "2024-03-21"
    assert got["UF_CRM_TAGS"] == [str(tags[1]), "9999"] and "UF_CRM_UNKNOWN" not in got
    rows = {}
    for name, select in (("none", None), ("star", ["*"]), ("uf", ["ID", "UF_*"]), ("one", ["UF_CRM_NOTE"])):
        rows[name] = call(srv, "crm.contact.list", **({"select": select} if select else {}))[0]
    assert "UF_CRM_NOTE" in rows["none"] and "UF_CRM_NOTE" not in rows["star"]
    assert set(rows["uf"]) == {"ID", *(f"UF_CRM_{n}" for n in ("NOTE", "SIZE", "RATE", "VIP", "SEEN", "DAY", "TAGS"))}
    assert set(rows["one"]) == {"ID", "UF_CRM_NOTE"}
    assert call(srv, "crm.contact.list", filter={"UF_CRM_TAGS": tags[1]}, select=["ID"]) == [{"ID": str(cid)}]
    assert call(srv, "crm.contact.list", filter={"UF_CRM_TAGS": tags[0]}, select=["ID"]) == []
    item = call(srv, "crm.item.get", entityTypeId=3, id=cid)["item"]
    assert (item["ufCrmNote"], item["ufCrmSize"], item["ufCrmRate"], item["ufCrmVip"]) == ("vip", 12, 2.5, "Y")
    assert item["ufCrmTags"] == [tags[1], 9999]
    original = call(srv, "crm.item.get", entityTypeId=3, id=cid, useOriginalUfNames="Y")["item"]
    assert original["UF_CRM_NOTE"] == "vip" and "ufCrmNote" not in original


@_SETTINGS
@given(notes=st.lists(st.text("abc xyz", min_size=1, max_size=6), min_size=1, max_size=4),
       original=st.booleans())
def test_batch_import_takes_camel_or_original_uf_names(srv, notes, original):
    if "UF_CRM_LANGS" not in srv.store.uf_fields("lead"):
        call(srv, "crm.lead.userfield.add", fields={"FIELD_NAME": "LANGS", "USER_TYPE_ID": "string", "MULTIPLE": "Y"})
    key = "UF_CRM_LANGS" if original else "ufCrmLangs"
    params = {"useOriginalUfNames": "Y"} if original else {}
    answer = call(srv, "crm.item.batchImport", entityTypeId=1, data=[{"title": "t", key: notes}], **params)
    new_id = answer["items"][0]["item"]["id"]
    item = call(srv, "crm.item.get", entityTypeId=1, id=new_id, **params)["item"]
    assert item[key] == notes
    assert call(srv, "crm.lead.get", id=new_id)["UF_CRM_LANGS"] == notes


# --- WEB / IM ---------------------------------------------------------------------------------------
_WEB = st.lists(st.builds(lambda n, t: {"VALUE": f"https://site{n}.example", "VALUE_TYPE": t},
                          st.integers(1, 999), st.sampled_from(["WORK", "HOME", "OTHER"])), max_size=3)
_IM = st.lists(st.builds(lambda n, t: {"VALUE": f"@nick{n}", "VALUE_TYPE": t},
                         st.integers(1, 999), st.sampled_from(["TELEGRAM", "SKYPE", "VIBER"])), max_size=3)


def _pairs(values: list[dict], type_id: str) -> list[tuple]:
    return sorted((type_id, v["VALUE_TYPE"], v["VALUE"]) for v in values)


@_SETTINGS
@given(entity=st.sampled_from(["lead", "contact", "company"]), web=_WEB, im=_IM)
def test_web_and_im_are_multi_fields_like_phone(srv, entity, web, im):
    """crm_multifield (crm/data-types.md): WEB and IM as PHONE/EMAIL — written as lists, read when
    named (not by ``*``), in crm.item as ``fm`` typeId WEB/IM, in the import as WEB/IM keys."""
    rid = call(srv, f"crm.{entity}.add", fields={"TITLE": "t", "NAME": "n", "WEB": web, "IM": im})
    got = call(srv, f"crm.{entity}.get", id=rid)
    assert _pairs(got.get("WEB", []), "WEB") == _pairs(web, "WEB") and _pairs(got.get("IM", []), "IM") == _pairs(im, "IM")
    listed = call(srv, f"crm.{entity}.list", filter={"ID": rid}, select=["*"])[0]
    assert "WEB" not in listed and "IM" not in listed
    named = call(srv, f"crm.{entity}.list", filter={"ID": rid}, select=["ID", "WEB", "IM"])[0]
    assert _pairs(named.get("WEB", []), "WEB") == _pairs(web, "WEB")
    type_id = {"lead": 1, "contact": 3, "company": 4}[entity]
    fm = call(srv, "crm.item.get", entityTypeId=type_id, id=rid)["item"]["fm"]
    assert sorted((e["typeId"], e["valueType"], e["value"]) for e in fm) == sorted(
        _pairs(web, "WEB") + _pairs(im, "IM"))
    imported = call(srv, "crm.item.batchImport", entityTypeId=type_id, data=[{"title": "i", "WEB": web, "IM": im}])
    twin = call(srv, f"crm.{entity}.get", id=imported["items"][0]["item"]["id"])
    assert _pairs(twin.get("IM", []), "IM") == _pairs(im, "IM")


# --- contact ↔ companies ----------------------------------------------------------------------------
def test_contact_company_bindings(srv):
    companies = [call(srv, "crm.company.add", fields={"TITLE": f"c{i}"}) for i in range(4)]
    cid = call(srv, "crm.contact.add", fields={"NAME": "n", "COMPANY_IDS": companies[:3]})
    got = call(srv, "crm.contact.get", id=cid)
    assert got["COMPANY_ID"] == str(companies[0]) and "COMPANY_IDS" not in got  # crm-contact-fields.md
    items = call(srv, "crm.contact.company.items.get", id=cid)
    assert [(i["COMPANY_ID"], i["IS_PRIMARY"]) for i in items] == [(companies[0], "Y"), (companies[1], "N"),
                                                                   (companies[2], "N")]
    assert call(srv, "crm.contact.company.add", id=cid, fields={"COMPANY_ID": companies[1]}) is False
    assert call(srv, "crm.contact.company.add", id=cid, fields={"COMPANY_ID": companies[3], "IS_PRIMARY": "Y"})
    assert call(srv, "crm.contact.get", id=cid)["COMPANY_ID"] == str(companies[3])
    assert call(srv, "crm.contact.company.delete", id=cid, fields={"COMPANY_ID": companies[3]})
    assert call(srv, "crm.contact.get", id=cid)["COMPANY_ID"] == str(companies[0])  # the next one is primary
    call(srv, "crm.contact.company.items.set", id=cid, items=[{"COMPANY_ID": companies[2]},
                                                              {"COMPANY_ID": companies[1], "IS_PRIMARY": "Y"}])
    assert [i["COMPANY_ID"] for i in call(srv, "crm.contact.company.items.get", id=cid)] == [companies[1], companies[2]]
    assert call(srv, "crm.item.get", entityTypeId=3, id=cid)["item"]["companyIds"] == [companies[1], companies[2]]
    assert [i["CONTACT_ID"] for i in call(srv, "crm.company.contact.items.get", id=companies[2])] == [cid]
    other = call(srv, "crm.contact.add", fields={"NAME": "m"})
    call(srv, "crm.company.contact.items.set", id=companies[2], items=[{"CONTACT_ID": other}])
    assert [i["CONTACT_ID"] for i in call(srv, "crm.company.contact.items.get", id=companies[2])] == [other]
    assert [i["COMPANY_ID"] for i in call(srv, "crm.contact.company.items.get", id=cid)] == [companies[1]]
    call(srv, "crm.contact.update", id=cid, fields={"COMPANY_IDS": [companies[0], companies[3]]})
    assert call(srv, "crm.contact.get", id=cid)["COMPANY_ID"] == str(companies[0])
    assert call(srv, "crm.contact.company.items.delete", id=cid)
    assert call(srv, "crm.contact.company.items.get", id=cid) == []
    assert refused(srv, "crm.contact.company.items.get", id=0)["error_description"].startswith("The parameter ownerEntityID")


# --- smart processes --------------------------------------------------------------------------------
def test_smart_process_types_and_items(srv):
    kind = call(srv, "crm.type.add", fields={"title": "Shipments", "isStagesEnabled": "Y", "isClientEnabled": "Y"})["type"]
    assert kind["entityTypeId"] >= 1030 and kind["entityTypeId"] % 2 == 0 and kind["isStagesEnabled"] == "Y"
    assert kind["isCategoriesEnabled"] == "N" and kind["isSetOpenPermissions"] == "Y"
    assert refused(srv, "crm.type.add", fields={"title": "x", "entityTypeId": 1031})["error"] == "INVALID_ARG_VALUE"
    assert call(srv, "crm.type.get", id=kind["id"])["type"] == kind
    assert call(srv, "crm.type.list", filter={"title": "Shipments"})["types"] == [kind]
    etid = kind["entityTypeId"]
    srv.store.userfields.add(f"CRM_{kind['id']}", {"FIELD_NAME": f"UF_CRM_{kind['id']}_1721812760630",
                                                   "USER_TYPE_ID": "string"})
    carrier = f"ufCrm{kind['id']}_1721812760630"
    # an import keeps creation times, in ascending order: first (import/index.md)
    imported = call(srv, "crm.item.batchImport", entityTypeId=etid, useOriginalUfNames="Y", data=[
        {"title": "old", "createdTime": "2024-01-02T10:00:00+03:00", f"UF_CRM_{kind['id']}_1721812760630": "DPD"}])
    old_id = imported["items"][0]["item"]["id"]
    item = call(srv, "crm.item.add", entityTypeId=etid, fields={"opportunity": 150, "currencyId": "EUR",
                                                                "contactIds": [5, 6], carrier: "DHL"})["item"]
    assert item["title"] == f"Shipments #{item['id']}"  # crm-item-import.md, smart process title
    assert item["stageId"].startswith(f"DT{etid}_") and item["stageId"].endswith(":NEW")
    assert item["contactIds"] == [5, 6] and item[carrier] == "DHL" and item["entityTypeId"] == etid
    assert "originatorId" not in item and "fm" not in item
    moved = call(srv, "crm.item.update", entityTypeId=etid, id=item["id"], fields={"title": "Box 1"})["item"]
    assert moved["title"] == "Box 1" and moved[carrier] == "DHL"
    listed = call(srv, "crm.item.list", entityTypeId=etid, filter={carrier: "DPD"})["items"]
    assert [(i["id"], i["createdTime"]) for i in listed] == [(old_id, "2024-01-02T10:00:00+03:00")]
    assert call(srv, "crm.item.delete", entityTypeId=etid, id=old_id) == []
    assert refused(srv, "crm.item.get", entityTypeId=etid, id=old_id)["error"] == "NOT_FOUND"
    assert refused(srv, "crm.item.list", entityTypeId=etid + 2)["error"] == "NOT_FOUND"


# --- the generated pair ------------------------------------------------------------------------------
def test_pair_cloud_has_what_the_box_lacks():
    with start_pair(limits=PortalLimits.free(rate=1000, burst=1000), leads=120, deals=40, contacts=40,
                    companies=20) as pair:
        cloud, box = pair.cloud.store, pair.box.store
        assert DEAL_DELIVERY in cloud.uf_fields("deal") and DEAL_DELIVERY not in box.uf_fields("deal")
        cloud_items = {i["VALUE"]: i["ID"] for i in cloud.uf_fields("lead")[LEAD_INTEREST]["LIST"]}
        box_items = {i["VALUE"]: i["ID"] for i in box.uf_fields("lead")[LEAD_INTEREST]["LIST"]}
        assert len(cloud_items) == 4 and len(box_items) == 3 and box_items.items() <= cloud_items.items()
        # the box's own sequence gives the missing value another ID than the cloud's
        field_id = box.uf_fields("lead")[LEAD_INTEREST]["ID"]
        call(pair.box, "crm.lead.userfield.update", id=field_id, fields={"LIST": [{"VALUE": "Training"}]})
        box_training = {i["VALUE"]: i["ID"] for i in box.uf_fields("lead")[LEAD_INTEREST]["LIST"]}["Training"]
        assert box_training != cloud_items["Training"]
        leads = call(pair.cloud, "crm.lead.list", select=["ID", "UF_*"], filter={LEAD_INTEREST: cloud_items["Training"]})
        assert leads and all(int(r["ID"]) not in box.tables["lead"] for r in leads)
        contacts = cloud.tables["contact"].values()
        assert {len(c.get("COMPANY_IDS") or []) for c in contacts} >= {1, 2} and max(
            len(c.get("COMPANY_IDS") or []) for c in contacts) <= 3
        assert any(c.get(CONTACT_LANGUAGES) for c in contacts) and any(c.get("IM") for c in contacts)
        changed = [rid for rid, c in cloud.tables["contact"].items()
                   if rid in box.tables["contact"] and c.get("COMPANY_IDS") != box.tables["contact"][rid].get("COMPANY_IDS")]
        assert changed
        cloud_ship = call(pair.cloud, "crm.item.list", entityTypeId=1030)["items"]
        box_ship = call(pair.box, "crm.item.list", entityTypeId=1030)["items"]
        assert len(cloud_ship) == len(box_ship) + 3 and all(SHIPMENT_CARRIER not in i for i in cloud_ship)
        assert {i["id"]: i["ufCrm1_1721812760630"] for i in cloud_ship}[2] == "DHL Express"
        assert call(pair.cloud, "crm.type.list")["types"] == call(pair.box, "crm.type.list")["types"]


def test_generation_is_deterministic_and_keeps_counts():
    a, b = generate(leads=60, deals=20, contacts=30, companies=10), generate(leads=60, deals=20, contacts=30, companies=10)
    assert a.backup == b.backup and a.custom.shipment_changes == b.custom.shipment_changes
    assert len(a.backup["lead"]) + sum(c.kind == "add" and c.entity == "lead" for c in a.changes) == 60

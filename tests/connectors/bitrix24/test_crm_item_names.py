"""The box gets the lead status, the company type and the phones/e-mails the cloud has: the importer
writes crm.item.batchImport with the names its page documents (bitrix-tools/b24-rest-docs
api-reference/crm/universal/import/crm-item-import.md), and we read the box back through the
classic methods (crm.lead.get, crm.company.get, crm.contact.get), a path independent of crm.item."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from connectors.bitrix24.delta import export_delta
from connectors.bitrix24.importer import ITEM_NAMES, batch_import_item, import_delta, item_name, map_users
from connectors.bitrix24.lists import php_query
from connectors.bitrix24.model import DATA_FIELDS, ENTITIES, MULTI, RELATIONS, USER_FIELDS, chunks
from connectors.bitrix24.reconcile import reconcile
from connectors.secrets import register_secret
from flows.actions import ActionContext
from flows.actions.crm_delta import transfer_crm_delta
from journal.idmap import IdMap
from journal.store import Journal
from tests.flows.actions.helpers import action_config

from .crm_helpers import clients, idmap, make_pair

CHECKED = ("company", "contact", "lead")  # the entities with a status/type or multi-fields


def test_every_field_we_write_has_the_import_pages_name():
    system = {"DATE_CREATE", "DATE_MODIFY", "CREATED_BY_ID", "MODIFY_BY_ID", "ORIGINATOR_ID", "ORIGIN_ID"}
    for entity in ENTITIES:
        for f in {*DATA_FIELDS[entity], *RELATIONS[entity], *USER_FIELDS, *MULTI[entity], *system}:
            item_name(entity, f)  # a KeyError here: look the field up in crm-item-import.md
    assert item_name("lead", "STATUS_ID") == "stageId" and item_name("company", "COMPANY_TYPE") == "typeId"
    assert item_name("deal", "STAGE_ID") == "stageId" and item_name("lead", "DATE_CREATE") == "createdTime"
    every = {n for names in ITEM_NAMES.values() for n in names.values()}
    assert not every & {"statusId", "companyType", "phone", "email", "fm", "contactId"}
    assert batch_import_item("lead", {"STATUS_ID": "JUNK", "CONTACT_ID": "7", "COMPANY_ID": "",
                                      "PHONE": [{"VALUE": "+7 1", "VALUE_TYPE": "WORK"}]}) == {
        "stageId": "JUNK", "contactIds": ["7"], "companyId": "", "PHONE": [{"VALUE": "+7 1", "VALUE_TYPE": "WORK"}]}
    assert batch_import_item("contact", {"COMPANY_ID": "0"}) == {"companyIds": []}
    # custom fields keep their own names: the import is asked for them (useOriginalUfNames=Y)
    assert item_name("lead", "UF_CRM_1721244707107") == "UF_CRM_1721244707107"
    with pytest.raises(KeyError):
        item_name("lead", "SOURCE_DESCRIPTION")  # not looked up in the import page yet


def read_classic(client, entity: str, ids) -> dict[str, dict]:
    """Records by ID through crm.<entity>.get (50 per batch)."""
    out = {}
    for group in chunks(sorted(ids, key=int), 50):
        res = client.batch({f"g{i}": f"crm.{entity}.get?" + php_query({"id": i}) for i in group})
        assert not res["result_error"], res["result_error"]
        out.update({k[1:]: v for k, v in res["result"].items()})
    return out


def multi(rec: dict, field: str) -> list[tuple[str, str]]:
    return sorted((v["VALUE_TYPE"], v["VALUE"]) for v in rec.get(field) or [])


def assert_box_matches_cloud(cloud, box, m) -> int:
    """Every moved record: status (lead), type (company), phones and e-mails as in the cloud."""
    checked = 0
    for entity in CHECKED:
        moved = m.get(entity)
        on_cloud, on_box = read_classic(cloud, entity, moved), read_classic(box, entity, moved.values())
        for cid, bid in moved.items():
            c, b = on_cloud[cid], on_box[bid]
            if entity == "lead":
                assert b["STATUS_ID"] == c["STATUS_ID"], (entity, cid)
            if entity == "company":
                assert b["COMPANY_TYPE"] == c["COMPANY_TYPE"], (entity, cid)
            for f in ("PHONE", "EMAIL"):
                assert multi(b, f) == multi(c, f), (entity, cid, f)
            checked += 1
    return checked


_VALUES = {"PHONE": (st.integers(1_000_000, 9_999_999).map(lambda n: f"+7 495 {n}"),
                     st.sampled_from(["WORK", "MOBILE", "HOME", "FAX"])),
           "EMAIL": (st.text("abcdefxyz", min_size=1, max_size=8).map(lambda s: f"{s}@corp.example"),
                     st.sampled_from(["WORK", "HOME", "MAILING"]))}
_MULTI = {f: st.lists(st.builds(lambda v, t: {"VALUE": v, "VALUE_TYPE": t}, *_VALUES[f]), max_size=3)
          for f in ("PHONE", "EMAIL")}
_RECORD = st.fixed_dictionaries({
    "entity": st.sampled_from(CHECKED),
    "STATUS_ID": st.sampled_from(["NEW", "IN_PROCESS", "PROCESSED", "JUNK", "CONVERTED", "UC_7K2M1Q"]),
    "COMPANY_TYPE": st.sampled_from(["CUSTOMER", "PARTNER", "SUPPLIER", "COMPETITOR", "OTHER"]),
    "PHONE": _MULTI["PHONE"], "EMAIL": _MULTI["EMAIL"]})


def test_moved_records_keep_status_type_and_multifields(tmp_path):
    """Whatever the records look like (any status or type, none to several phones and e-mails of
    any kind), after an import the box holds them as the cloud does; a lead whose status changes
    in the cloud later gets the new status on the next run."""
    pair = make_pair(companies=8, contacts=12, leads=24, deals=6)
    try:
        cloud, box = clients(pair, rate=500, burst=50)
        m = idmap(tmp_path)
        users = map_users(cloud, box)

        @settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(records=st.lists(_RECORD, min_size=1, max_size=4), restatus=st.booleans())
        def check(records, restatus):
            for r in records:
                fields = {"TITLE": "hypothesis", "NAME": "Hy", "ASSIGNED_BY_ID": "1",
                          "PHONE": r["PHONE"], "EMAIL": r["EMAIL"]}
                if r["entity"] == "lead":
                    fields["STATUS_ID"] = r["STATUS_ID"]
                if r["entity"] == "company":
                    fields["COMPANY_TYPE"] = r["COMPANY_TYPE"]
                pair.cloud.store.add(r["entity"], fields)
            if restatus and m.get("lead"):
                cid = min(m.get("lead"), key=int)
                old = pair.cloud.store.get("lead", int(cid))["STATUS_ID"]
                pair.cloud.store.update("lead", int(cid), {"STATUS_ID": "JUNK" if old != "JUNK" else "NEW"})
            delta = export_delta(cloud, box, pair.cutoff)
            report = import_delta(box, delta, m, user_map=users, fallback_user_id=1)
            assert not report.failures and report.method == "batchImport"
            assert assert_box_matches_cloud(cloud, box, m) >= len(records)
            assert reconcile(box, delta, m, user_map=users).ok

        check()
    finally:
        pair.close()


def test_after_step_2_11_the_box_has_each_status_type_and_phone(tmp_path):
    """The action of step 2.11 end to end, then every moved lead, company and contact read back."""
    pair = make_pair()
    try:
        journal = Journal(f"sqlite:///{tmp_path / 'journal.db'}")
        run, _ = journal.open_run(name="acme", portal="http://127.0.0.1", mode="rehearsal", timezone="UTC",
                                  config_snapshot={})
        journal.set_cutoff(run.id, pair.cutoff)
        config = action_config(crm_delta={"rate": 150, "burst": 40, "box_rate": 150, "box_burst": 40},
                               migration={"name": "acme", "portal": "http://127.0.0.1"})
        register_secret(pair.cloud_webhook)
        register_secret(pair.box_webhook)
        secrets = {"cloud_webhook": SecretStr(pair.cloud_webhook), "box_webhook": SecretStr(pair.box_webhook)}
        ctx = ActionContext(config=config, secrets=secrets, journal=journal, run_id=run.id, step_id="2.11",
                            mode="rehearsal", work_dir=tmp_path)
        result = transfer_crm_delta(ctx)
        assert result.evidence["reconciliation_ok"] and result.evidence["import_method"] == "batchImport"
        m = IdMap(journal, run.id, run_id=run.id)  # the action's map: keyed by the run
        cloud, box = clients(pair)
        moved = {e: m.get(e) for e in CHECKED}
        assert all(moved.values()), moved
        assert assert_box_matches_cloud(cloud, box, m) == sum(len(v) for v in moved.values())
        # the box really holds more than one status and type: nothing fell back to a default
        statuses = {r["STATUS_ID"] for r in read_classic(box, "lead", moved["lead"].values()).values()}
        types = {r["COMPANY_TYPE"] for r in read_classic(box, "company", moved["company"].values()).values()}
        assert len(statuses) > 1 and len(types) > 1
    finally:
        pair.close()

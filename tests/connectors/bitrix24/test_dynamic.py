"""Smart-process items: moved by type, found again by xmlId, never twice, reconciled per item."""

from __future__ import annotations

from collections import Counter

import pytest
import requests

from connectors.bitrix24 import dynamic
from connectors.bitrix24.importer import map_users

from .crm_helpers import clients, idmap, make_pair


def rest(webhook: str, method: str, params: dict) -> dict:
    body = requests.post(f"{webhook}{method}.json", json=params, timeout=30).json()
    assert "error" not in body, (method, body)
    return body["result"]


@pytest.fixture
def pair():
    p = make_pair(companies=10, contacts=15, leads=20, deals=10)
    yield p
    p.close()


def _types(webhook: str) -> dict[int, dict]:
    return {int(t["entityTypeId"]): t for t in rest(webhook, "crm.type.list", {})["types"]}


def _items(webhook: str, etid: int) -> list[dict]:
    out, start = [], 0
    for _ in range(100):
        body = requests.post(f"{webhook}crm.item.list.json", timeout=30,
                             json={"entityTypeId": etid, "start": start, "useOriginalUfNames": "Y"}).json()
        out += body["result"]["items"]
        if "next" not in body:
            return out
        start = body["next"]
    raise AssertionError("crm.item.list did not end")


def _move(pair, tmp_path, m=None, *, drop_first_write: bool = False):
    cloud, box = clients(pair)
    m = m or idmap(tmp_path)
    if drop_first_write:  # the box executes the first write request, then the connection drops
        send = box.batch

        def batch(cmd, *, halt=False, idempotent=True):
            if not idempotent and not pair.box.faults.fired["DROP_AFTER_WRITE"]:
                pair.box.faults.inject("DROP_AFTER_WRITE", method="batch")
            return send(cmd, halt=halt, idempotent=idempotent)

        box.batch = batch
    marks = {k: v["max_id"] for k, v in dynamic.dynamic_marks(box, pair.cutoff).items()}
    delta = dynamic.export_dynamic(cloud, pair.cutoff, marks)
    users = map_users(cloud, box)
    report = dynamic.import_dynamic(box, delta, m, user_map=users, quiet_s=1)
    rec = dynamic.reconcile_dynamic(box, delta, m, user_map=users)
    return delta, report, rec, m


def test_items_made_or_changed_after_the_backup_arrive_once(pair, tmp_path):
    etid = next(iter(_types(pair.cloud_webhook)))
    before = {str(i["id"]) for i in _items(pair.box_webhook, etid)}
    delta, report, rec, m = _move(pair, tmp_path)
    key = dynamic.entity_key(etid)
    d = delta.types[etid]
    created = {c for c, k in d.kind.items() if k == "created"}
    modified = {c for c, k in d.kind.items() if k == "modified"}
    assert created and modified, "the generator makes both"
    assert rec.ok, rec.evidence()
    assert report[key].created == len(created) and report[key].failures == []
    box_items = _items(pair.box_webhook, etid)
    by_key = Counter(str(i.get("xmlId") or "") for i in box_items)
    assert all(by_key[dynamic.key_of(etid, c, d.rows[c])] == 1 for c in created)
    mapped = m.get(key)
    assert set(mapped) == created and not set(mapped.values()) & before  # new box IDs, nothing overwritten
    for c in modified:  # items of the backup are updated in place, under their own IDs
        twin = next(i for i in box_items if str(i["id"]) == c)
        assert twin["title"] == d.rows[c]["title"] and twin["stageId"] == d.rows[c]["stageId"]

    again = _move(pair, tmp_path, m)[1][key]
    assert (again.created, again.updated) == (0, 0)


def test_a_lost_answer_writes_no_twin(pair, tmp_path):
    etid = next(iter(_types(pair.cloud_webhook)))
    delta, report, rec, _m = _move(pair, tmp_path, drop_first_write=True)
    assert pair.box.faults.fired["DROP_AFTER_WRITE"] == 1
    assert report[dynamic.entity_key(etid)].created == sum(k == "created" for k in delta.types[etid].kind.values())
    assert rec.ok, rec.evidence()
    keys = Counter(str(i.get("xmlId") or "") for i in _items(pair.box_webhook, etid))
    assert [k for k, n in keys.items() if k and n > 1] == []


def test_a_type_made_after_the_backup_is_reported_with_the_fix(pair, tmp_path):
    made = rest(pair.cloud_webhook, "crm.type.add", {"fields": {"title": "Returns", "entityTypeId": 1040}})
    etid = int(made["type"]["entityTypeId"])
    rest(pair.cloud_webhook, "crm.item.add", {"entityTypeId": etid, "fields": {"title": "first return"}})
    _delta, report, _rec, _m = _move(pair, tmp_path)
    failures = report[dynamic.entity_key(etid)].failures
    assert len(failures) == 1 and "'Returns' is not on the box" in failures[0] and "create it on the box" in failures[0]


def test_the_reconciliation_fails_when_an_item_differs_on_the_box(pair, tmp_path):
    etid = next(iter(_types(pair.cloud_webhook)))
    delta, _report, rec, m = _move(pair, tmp_path)
    assert rec.ok
    cloud_id, box_id = next(iter(m.get(dynamic.entity_key(etid)).items()))
    rest(pair.box_webhook, "crm.item.update", {"entityTypeId": etid, "id": box_id, "fields": {"title": "changed on the box"}})
    cloud, box = clients(pair)
    again = dynamic.reconcile_dynamic(box, delta, m, user_map=map_users(cloud, box))
    r = again.entities[dynamic.entity_key(etid)]
    assert not again.ok and r.mismatches[0]["cloud_id"] == cloud_id and r.mismatches[0]["fields"] == ["title"]

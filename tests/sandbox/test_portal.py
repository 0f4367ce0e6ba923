"""The sandbox portal over real HTTP: the vendor's behaviour the connector depends on."""

import time

import pytest
import requests

from sandbox.portal import Portal, PortalLimits, PortalServer, start_pair
from sandbox.portal.store import CrmStore


@pytest.fixture
def pair():
    p = start_pair(limits=PortalLimits(rate=500, burst=50), leads=120, deals=40, contacts=40, companies=20)
    yield p
    p.close()


def test_wrong_code_is_401_no_auth_found(pair):
    r = requests.get(f"{pair.cloud.base_url}/rest/1/wrongcode/crm.lead.list.json", timeout=5)
    assert r.status_code == 401 and r.json()["error"] == "NO_AUTH_FOUND"


def test_envelope_paging_and_count(pair):
    url = pair.cloud_webhook + "crm.lead.list.json"
    r = requests.get(url, params={"start": 0}, timeout=5).json()
    assert len(r["result"]) == 50 and r["next"] == 50 and r["total"] == pair.cloud.store.count("lead")
    assert {"operating", "operating_reset_at", "duration"} <= set(r["time"])
    r = requests.get(url, params={"start": -1, "order[ID]": "ASC", "filter[>ID]": 100, "select[]": ["ID", "PHONE"]},
                     timeout=5).json()
    assert "total" not in r and "next" not in r
    assert all(int(row["ID"]) > 100 for row in r["result"])
    assert [int(x["ID"]) for x in r["result"]] == sorted(int(x["ID"]) for x in r["result"])
    # POST form-encoded and JSON give the same answer
    form = requests.post(url, data={"start": -1, "filter[>ID]": 100, "select[0]": "ID"}, timeout=5).json()
    js = requests.post(url, json={"start": -1, "filter": {">ID": 100}, "select": ["ID"]}, timeout=5).json()
    assert form["result"] == js["result"] == [{"ID": x["ID"]} for x in r["result"]]


def test_batch_references_and_result_error(pair):
    cmd = {"a": "crm.lead.list?order[ID]=ASC&filter[>ID]=0&start=-1&select[0]=ID",
           "b": "crm.lead.list?order[ID]=ASC&filter[>ID]=$result[a][49][ID]&start=-1&select[0]=ID",
           "c": "crm.nothing.here?x=1"}
    res = requests.post(pair.cloud_webhook + "batch.json", json={"halt": 0, "cmd": cmd}, timeout=5).json()["result"]
    a, b = res["result"]["a"], res["result"]["b"]
    assert len(a) == 50 and int(b[0]["ID"]) > int(a[-1]["ID"])
    assert res["result_error"]["c"]["error"] == "ERROR_METHOD_NOT_FOUND"


def test_leaky_bucket_and_operating_limit():
    portal = Portal(CrmStore(), limits=PortalLimits(rate=0.5, burst=3))
    with PortalServer(portal) as srv:
        codes = [requests.get(srv.webhook + "user.get.json", timeout=5).status_code for _ in range(5)]
        assert codes[:3] == [200, 200, 200] and 503 in codes[3:]
        body = requests.get(srv.webhook + "profile.json", timeout=5).json()
        assert body["error"] == "QUERY_LIMIT_EXCEEDED"
    portal = Portal(CrmStore(), limits=PortalLimits(rate=100, burst=50, operating_limit_s=0.0))
    with PortalServer(portal) as srv:
        requests.get(srv.webhook + "crm.lead.list.json", timeout=5)  # uses some operating time
        r = requests.get(srv.webhook + "crm.lead.list.json", timeout=5)
        assert r.status_code == 429 and r.json()["error"] == "OPERATION_TIME_LIMIT"
        assert r.json()["time"]["operating_reset_at"] > time.time()


def test_offset_paging_pays_for_the_count(pair):
    pair.cloud.portal.limits.count_cost_s = 1e-3
    t0 = time.perf_counter()
    requests.get(pair.cloud_webhook + "crm.lead.list.json", params={"start": 0}, timeout=10)
    counted = time.perf_counter() - t0
    assert counted >= pair.cloud.store.count("lead") * 1e-3 * 0.9
    t0 = time.perf_counter()
    requests.get(pair.cloud_webhook + "crm.lead.list.json", params={"start": -1}, timeout=10)
    assert time.perf_counter() - t0 < counted  # no count with start=-1


def test_batch_import_limits_and_origin(pair):
    url = pair.box_webhook + "crm.item.batchImport.json"
    r = requests.post(url, json={"entityTypeId": 1, "data": [{"title": "x"}] * 21}, timeout=5)
    assert r.status_code == 400
    r = requests.post(url, json={"entityTypeId": 1, "data": [
        {"title": "old", "createdTime": "2020-01-01T00:00:00+00:00"},
        {"title": "new", "originatorId": "cloud2box", "originId": "777"}]}, timeout=5).json()
    items = r["result"]["items"]
    assert "error" in items[0]  # older than the box's newest record: refused
    new_id = items[1]["item"]["id"]
    rec = pair.box.store.get("lead", new_id)
    assert rec["ORIGINATOR_ID"] == "cloud2box" and rec["ORIGIN_ID"] == "777"
    found = requests.get(pair.box_webhook + "crm.lead.list.json", params={
        "filter[ORIGINATOR_ID]": "cloud2box", "filter[ORIGIN_ID]": "777", "start": -1}, timeout=5).json()["result"]
    assert [int(x["ID"]) for x in found] == [new_id]


def test_faults_from_tests(pair):
    pair.cloud.faults.inject("INTERNAL_SERVER_ERROR", times=1, method="crm.lead.list")
    assert requests.get(pair.cloud_webhook + "crm.lead.list", timeout=5).status_code == 500
    assert requests.get(pair.cloud_webhook + "crm.lead.list", timeout=5).status_code == 200

"""Conformance: Bitrix24 clients nobody here wrote, run unmodified against the sandbox over HTTPS.

fast_bitrix24 and the vendor's own Python SDK (b24pysdk) are the judges of the sandbox's REST API:
for every entity the delta moves (lead, deal, contact, company) each client lists (its fastest
way), gets, adds, updates, runs a batch whose commands reference earlier results, imports with
``crm.item.batchImport``, and recovers from the rate limit (``QUERY_LIMIT_EXCEEDED``) and the
operating-time limit (``OPERATION_TIME_LIMIT``). A failure here is either a sandbox infidelity
(fixed in the sandbox) or a documented limit of the client, asserted below with its reason.

TLS: the portal answers over HTTPS with a generated certificate (``start_pair(tls=True)``), as
real portals do; b24pysdk only builds ``https://`` URLs. b24pysdk calls ``requests.post`` and so
trusts ``REQUESTS_CA_BUNDLE``; fast_bitrix24 is given an aiohttp session whose connector trusts the
CA (its documented ``client=`` option), and, in one subprocess, reads ``SSL_CERT_FILE`` (aiohttp
builds its default verified context when it is imported, so the variable must be set before).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from b24pysdk import BitrixWebhook, Client
from b24pysdk.errors import BitrixAPIOperationTimeLimit
from fast_bitrix24 import BitrixAsync
from fast_bitrix24.server_response import ErrorInServerResponseException

from sandbox.portal import PortalLimits, start_pair

ROOT = Path(__file__).resolve().parents[2]
ENTITIES = ("lead", "deal", "contact", "company")
ENTITY_TYPE_ID = {"lead": 1, "deal": 2, "contact": 3, "company": 4}
TITLE = {"lead": "TITLE", "deal": "TITLE", "contact": "NAME", "company": "TITLE"}
ITEM_TITLE = {"lead": "title", "deal": "title", "contact": "name", "company": "title"}


@pytest.fixture(scope="module")
def pair():
    # small, fast, and a plan generous enough that the clients' own throttles never wait long
    p = start_pair(limits=PortalLimits.free(rate=200, burst=100), tls=True, companies=60, contacts=110, leads=160,
                   deals=120, tasks=0)
    yield p
    p.close()


@pytest.fixture(autouse=True)
def _clean_faults(pair):
    yield
    pair.cloud.faults.clear()
    pair.box.faults.clear()


def _ids(store, entity) -> list[int]:
    return sorted(store.tables[entity])


# --- fast_bitrix24 ---------------------------------------------------------------------------

def _fast(portal, coro_fn, **kw):
    """Run ``coro_fn(bitrix)`` with an unmodified BitrixAsync whose aiohttp session trusts the
    sandbox's CA. The session is the library's documented ``client=`` option; it must raise for
    status, as the session the library makes for itself does (srh.py: ``raise_for_status=True``)."""

    async def main():
        ctx = ssl.create_default_context(cafile=str(portal.ca_file))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx), raise_for_status=True) as s:
            bitrix = BitrixAsync(portal.webhook, verbose=False, client=s, **kw)
            return await coro_fn(bitrix)

    return asyncio.run(main())


@pytest.mark.parametrize("entity", ENTITIES)
def test_fast_bitrix24_get_all_lists_every_record(pair, entity):
    rows = _fast(pair.cloud, lambda b: b.get_all(f"crm.{entity}.list", {"select": ["ID", TITLE[entity]]}))
    assert sorted(int(r["ID"]) for r in rows) == _ids(pair.cloud.store, entity)
    # and the documented fast path: order by ID, filter by >ID, start=-1 (total 0, no next)
    first = _fast(pair.cloud, lambda b: b.call(f"crm.{entity}.list", {"order": {"ID": "ASC"}, "filter": {">ID": 0},
                                                                       "select": ["ID"], "start": -1}, raw=True))
    assert first["total"] == 0 and "next" not in first and len(first["result"]) == 50


@pytest.mark.parametrize("entity", ENTITIES)
def test_fast_bitrix24_get_by_id(pair, entity):
    ids = _ids(pair.cloud.store, entity)[:3]
    got = _fast(pair.cloud, lambda b: b.get_by_ID(f"crm.{entity}.get", ids))
    assert sorted(int(k) for k in got) == ids
    assert all(str(got[str(i)]["ID"]) == str(i) for i in ids)
    if entity == "deal":  # a deal's CONTACT_ID is one of its bindings
        for rec in got.values():
            assert rec["CONTACT_ID"] == "0" or rec["CONTACT_ID"] in rec["CONTACT_IDS"]


@pytest.mark.parametrize("entity", ENTITIES)
def test_fast_bitrix24_add_and_update(pair, entity):
    items = [{"fields": {TITLE[entity]: f"fast_bitrix24 {entity} {i}"}} for i in range(3)]
    new_ids = _fast(pair.box, lambda b: b.call(f"crm.{entity}.add", items))
    assert len(new_ids) == 3 and all(pair.box.store.get(entity, int(i)) for i in new_ids)
    ok = _fast(pair.box, lambda b: b.call(f"crm.{entity}.update",
                                          {"id": new_ids[0], "fields": {TITLE[entity]: "renamed"}}))
    assert ok is True and pair.box.store.get(entity, int(new_ids[0]))[TITLE[entity]] == "renamed"


@pytest.mark.parametrize("entity", ENTITIES)
def test_fast_bitrix24_batch_with_result_references(pair, entity):
    # fast_bitrix24 sends commands as given; call_batch returns result.result
    cmd = {"p1": f"crm.{entity}.list?order[ID]=ASC&start=-1&select[]=ID",
           "p2": f"crm.{entity}.list?order[ID]=ASC&start=-1&select[]=ID&filter[>ID]=$result[p1][49][ID]"}
    res = _fast(pair.cloud, lambda b: b.call_batch({"halt": 0, "cmd": cmd}))
    ids = _ids(pair.cloud.store, entity)
    assert [int(r["ID"]) for r in res["p1"]] == ids[:50] and [int(r["ID"]) for r in res["p2"]] == ids[50:100]


@pytest.mark.parametrize("entity", ENTITIES)
def test_fast_bitrix24_batch_import(pair, entity):
    data = [{ITEM_TITLE[entity]: f"imported {entity} {i}"} for i in range(2)]
    # call() packs the request into a batch and extracts the lone "items" list's first entry
    got = _fast(pair.box, lambda b: b.call("crm.item.batchImport",
                                           {"entityTypeId": ENTITY_TYPE_ID[entity], "data": data}))
    new_id = got["item"]["id"] if "item" in got else got["items"][0]["item"]["id"]
    assert isinstance(new_id, int) and pair.box.store.get(entity, new_id)


@pytest.mark.parametrize("entity", ENTITIES)
def test_fast_bitrix24_recovers_from_the_rate_limit(pair, entity):
    pair.cloud.faults.inject("QUERY_LIMIT_EXCEEDED", times=2)
    before = pair.cloud.faults.fired["QUERY_LIMIT_EXCEEDED"]
    rows = _fast(pair.cloud, lambda b: b.get_all(f"crm.{entity}.list", {"select": ["ID"]}))
    assert pair.cloud.faults.fired["QUERY_LIMIT_EXCEEDED"] - before == 2  # both 503s were met and retried
    assert sorted(int(r["ID"]) for r in rows) == _ids(pair.cloud.store, entity)


def test_fast_bitrix24_under_the_real_leaky_bucket():
    """No injected fault: a portal with a small plan (burst 10, 20/s) and the client's own leaky
    bucket set to it; whatever the portal refuses with 503 is retried, nothing is lost."""
    with start_pair(limits=PortalLimits.free(rate=20, burst=10), tls=True, leads=400, deals=5, contacts=5,
                    companies=5, tasks=0) as p:
        rows = _fast(p.cloud, lambda b: b.get_all("crm.lead.list", {"select": ["ID"]}),
                     request_pool_size=10, requests_per_second=20.0)
        assert sorted(int(r["ID"]) for r in rows) == _ids(p.cloud.store, "lead")


@pytest.mark.parametrize("entity", ENTITIES)
def test_fast_bitrix24_operating_limit(pair, entity):
    """fast_bitrix24 avoids OPERATION_TIME_LIMIT by throttling each method on the ``operating``
    time the portal reports (``respect_velocity_policy``), but does not retry a 429 it gets anyway
    (srh.py: only 5xx are retried): the aiohttp ClientResponseError(429) reaches the caller. Once
    ``operating_reset_at`` has passed, the same call succeeds: recovery is the caller's."""
    pair.cloud.faults.inject("OPERATION_TIME_LIMIT", times=1, method=f"crm.{entity}.list", reset_in=0.3)
    with pytest.raises(aiohttp.ClientResponseError) as err:
        _fast(pair.cloud, lambda b: b.call(f"crm.{entity}.list", {"select": ["ID"], "start": -1}, raw=True))
    assert err.value.status == 429
    time.sleep(0.3)
    again = _fast(pair.cloud, lambda b: b.call(f"crm.{entity}.list", {"select": ["ID"], "start": -1}, raw=True))
    assert len(again["result"]) == 50
    # inside a batch the limit comes back for the single command, in result_error: the client
    # raises ErrorInServerResponseException (server_response.py) for any result_error
    pair.cloud.faults.inject("OPERATION_TIME_LIMIT", times=1, method=f"crm.{entity}.get", reset_in=0.3)
    with pytest.raises(ErrorInServerResponseException) as err:
        _fast(pair.cloud, lambda b: b.get_by_ID(f"crm.{entity}.get", _ids(pair.cloud.store, entity)[:2]))
    assert "OPERATION_TIME_LIMIT" in str(err.value)


def test_fast_bitrix24_reads_ssl_cert_file(pair):
    """Unmodified and with its own session: aiohttp trusts SSL_CERT_FILE when it is set before
    aiohttp is imported (it builds its verified SSL context at import time)."""
    code = ("import asyncio, sys\nfrom fast_bitrix24 import BitrixAsync\n"
            "b = BitrixAsync(sys.argv[1], verbose=False)\n"
            "print(len(asyncio.run(b.get_all('crm.company.list', {'select': ['ID']}))))\n")
    env = dict(os.environ, SSL_CERT_FILE=str(pair.ca_file))
    out = subprocess.run([sys.executable, "-c", code, pair.cloud_webhook], env=env, capture_output=True,
                         text=True, timeout=60, cwd=ROOT, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.strip().splitlines()[-1]) == pair.cloud.store.count("company")


# --- b24pysdk (the vendor's Python SDK) ------------------------------------------------------

@pytest.fixture
def sdk(pair, monkeypatch):
    """``client(portal)`` → a b24pysdk client for an incoming webhook of that portal. requests
    trusts REQUESTS_CA_BUNDLE; retries of 503 use short delays so that the suite stays fast."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pair.ca_file))

    def client(portal):
        host = portal.webhook.split("//", 1)[1].split("/", 1)[0]
        token = f"{portal.portal.user_id}/{portal.portal.code}"
        return Client(BitrixWebhook(domain=host, webhook_token=token), max_retries=4, initial_retry_delay=0.05,
                      retry_delay_increment=0, timeout=10)

    return client


def _scope(client, entity):
    return getattr(client.crm, entity)


@pytest.mark.parametrize("entity", ENTITIES)
def test_b24pysdk_lists_every_record(pair, sdk, entity):
    c = sdk(pair.cloud)
    ids = _ids(pair.cloud.store, entity)
    slow = list(_scope(c, entity).list(select=["ID"]).as_list().result)
    assert sorted(int(r["ID"]) for r in slow) == ids
    # as_list_fast: start=-1 pages chained inside batches by $result[n][49][ID], encoded in the
    # query string (%24result%5B…): the batch decodes each command before it substitutes
    fast = list(_scope(c, entity).list(select=["ID"]).as_list_fast().result)
    assert [int(r["ID"]) for r in fast] == ids
    desc = list(_scope(c, entity).list(select=["ID"]).as_list_fast(descending=True).result)
    assert [int(r["ID"]) for r in desc] == ids[::-1]


@pytest.mark.parametrize("entity", ENTITIES)
def test_b24pysdk_lists_with_crm_item_list(pair, sdk, entity):
    """The vendor's docs use ``crm.item.list(...).as_list_fast()`` (api-reference/crm/universal/
    crm-item-list.md, Python tab); the SDK's first page orders and filters by ``ID`` (upper case)
    before it learns the answer's ``id`` key (call_list_fast.py)."""
    c = sdk(pair.cloud)
    rows = list(c.crm.item.list(entity_type_id=ENTITY_TYPE_ID[entity], select=["id"]).as_list_fast().result)
    assert [r["id"] for r in rows] == _ids(pair.cloud.store, entity)


@pytest.mark.parametrize("entity", ENTITIES)
def test_b24pysdk_get_add_update(pair, sdk, entity):
    c = sdk(pair.box)
    first = _ids(pair.box.store, entity)[0]
    got = _scope(c, entity).get(bitrix_id=first).result
    assert int(got["ID"]) == first and got["COMPANY_ID" if entity != "company" else "ID"] is not None
    new_id = _scope(c, entity).add({TITLE[entity]: f"b24pysdk {entity}"}).result
    assert isinstance(new_id, int) and pair.box.store.get(entity, new_id)
    assert _scope(c, entity).update(bitrix_id=new_id, fields={TITLE[entity]: "renamed"}).result is True
    assert pair.box.store.get(entity, new_id)[TITLE[entity]] == "renamed"


@pytest.mark.parametrize("entity", ENTITIES)
def test_b24pysdk_batch_with_result_references(pair, sdk, entity):
    c = sdk(pair.cloud)
    scope = _scope(c, entity)
    batch = c.call_batch({
        "p1": scope.list(select=["ID"], order={"ID": "ASC"}, start=-1),
        "p2": scope.list(select=["ID"], order={"ID": "ASC"}, start=-1, filter={">ID": "$result[p1][49][ID]"}),
    }).result
    ids = _ids(pair.cloud.store, entity)
    assert [int(r["ID"]) for r in batch.result["p1"]] == ids[:50]
    assert [int(r["ID"]) for r in batch.result["p2"]] == ids[50:100]
    timing = batch.result_time["p1"]  # parsed by the SDK's BitrixTimeResponse: every documented key
    assert timing.processing >= 0 and timing.date_start <= timing.date_finish and timing.duration >= 0
    assert batch.result_total == {"p1": 0, "p2": 0}  # start=-1


@pytest.mark.parametrize("entity", ENTITIES)
def test_b24pysdk_batch_import(pair, sdk, entity):
    c = sdk(pair.box)
    data = [{ITEM_TITLE[entity]: f"b24pysdk import {entity} {i}"} for i in range(3)]
    items = c.crm.item.batch_import(entity_type_id=ENTITY_TYPE_ID[entity], data=data).result["items"]
    new_ids = [i["item"]["id"] for i in items]
    assert len(new_ids) == 3 and all(isinstance(i, int) and pair.box.store.get(entity, i) for i in new_ids)


@pytest.mark.parametrize("entity", ENTITIES)
def test_b24pysdk_recovers_from_the_rate_limit(pair, sdk, entity):
    c = sdk(pair.cloud)
    pair.cloud.faults.inject("QUERY_LIMIT_EXCEEDED", times=2)
    first = _ids(pair.cloud.store, entity)[0]
    assert int(_scope(c, entity).get(bitrix_id=first).result["ID"]) == first  # 503 twice, retried


@pytest.mark.parametrize("entity", ENTITIES)
def test_b24pysdk_operating_limit(pair, sdk, entity):
    """b24pysdk retries only HTTP 503 (_base_requester.py ``_request_with_retries``): a 429
    OPERATION_TIME_LIMIT raises BitrixAPIOperationTimeLimit with the portal's answer, whose
    ``time.operating_reset_at`` tells when the method is open again; then the call succeeds."""
    c = sdk(pair.cloud)
    first = _ids(pair.cloud.store, entity)[0]
    pair.cloud.faults.inject("OPERATION_TIME_LIMIT", times=1, method=f"crm.{entity}.get", reset_in=0.3)
    with pytest.raises(BitrixAPIOperationTimeLimit) as err:
        _ = _scope(c, entity).get(bitrix_id=first).result
    reset_at = err.value.json_response["time"]["operating_reset_at"]
    time.sleep(max(0.0, reset_at - time.time()))
    assert int(_scope(c, entity).get(bitrix_id=first).result["ID"]) == first

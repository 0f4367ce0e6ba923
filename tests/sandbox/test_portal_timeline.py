"""The sandbox portal's activities, timeline comments, products and deal product rows, over real HTTP
(see sandbox/portal/timeline.py for the vendor facts each behaviour follows)."""

import datetime as dt
from decimal import Decimal

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox.portal import PortalLimits, start_pair


@pytest.fixture(scope="module")
def pair():
    p = start_pair(limits=PortalLimits.free(rate=1000, burst=1000), leads=60, deals=40, contacts=30, companies=10)
    yield p
    p.close()


def call(srv, method, body):
    r = requests.post(srv.webhook + method + ".json", json=body, timeout=10)
    return r.status_code, r.json()


def ok(srv, method, body):
    status, data = call(srv, method, body)
    assert status == 200, data
    return data


def _call_fields(deal_id, contact_id, **extra):
    return {"OWNER_TYPE_ID": 2, "OWNER_ID": deal_id, "TYPE_ID": 2, "SUBJECT": "Outgoing call",
            "COMMUNICATIONS": [{"VALUE": "+49 30 1234", "ENTITY_TYPE_ID": 3, "ENTITY_ID": contact_id}],
            "START_TIME": "2024-05-02T10:00:00+03:00", "END_TIME": "2024-05-02T10:04:30+03:00", "DIRECTION": 2,
            **extra}


def test_activity_round_trip_and_portal_set_fields(pair):
    srv = pair.cloud
    deal_id, contact_id = min(srv.store.tables["deal"]), min(srv.store.tables["contact"])
    new_id = ok(srv, "crm.activity.add", {"fields": _call_fields(
        deal_id, contact_id, CREATED="2001-01-01T00:00:00+00:00", AUTHOR_ID=99, DEADLINE="2030-01-01T00:00:00")})["result"]
    got = ok(srv, "crm.activity.get", {"id": new_id})["result"]
    assert got["PROVIDER_ID"] == "VOXIMPLANT_CALL" and got["PROVIDER_TYPE_ID"] == "CALL"
    assert got["AUTHOR_ID"] == "1" and not got["CREATED"].startswith("2001")  # read-only: the portal's
    assert got["DEADLINE"] == got["START_TIME"] == "2024-05-02T10:00:00+03:00"  # DEADLINE follows START_TIME
    assert got["STATUS"] == "1" and got["COMPLETED"] == "N" and "COMMUNICATIONS" not in got
    listed = ok(srv, "crm.activity.list", {"filter": {"ID": new_id}, "select": ["ID", "COMMUNICATIONS", "BINDINGS"]})
    row = listed["result"][0]
    assert row["COMMUNICATIONS"][0]["TYPE"] == "PHONE" and row["COMMUNICATIONS"][0]["VALUE"] == "+49 30 1234"
    assert {(b["OWNER_TYPE_ID"], b["OWNER_ID"]) for b in row["BINDINGS"]} == {("2", str(deal_id)), ("3", str(contact_id))}
    assert ok(srv, "crm.activity.update", {"id": new_id, "fields": {"COMPLETED": "Y", "TYPE_ID": 4,
                                                                     "SUBJECT": "Call done"}})["result"] is True
    got = ok(srv, "crm.activity.get", {"id": new_id})["result"]
    assert (got["COMPLETED"], got["STATUS"], got["TYPE_ID"], got["SUBJECT"]) == ("Y", "2", "2", "Call done")
    assert ok(srv, "crm.activity.delete", {"id": new_id})["result"] is True
    status, err = call(srv, "crm.activity.get", {"id": new_id})
    assert status == 400 and err == {"error": "", "error_description": "Activity is not found."}


@pytest.mark.parametrize("change, message", [
    ({"COMMUNICATIONS": []}, "The field COMMUNICATIONS is not defined or invalid."),
    ({"COMMUNICATIONS": [{"VALUE": "a@b.example", "TYPE": "EMAIL"}]}, "The field COMMUNICATIONS is not defined or invalid."),
    ({"COMMUNICATIONS": [{"VALUE": "+1"}, {"VALUE": "+2"}]},
     "The only one communication is allowed for activity of specified type."),
    ({"TYPE_ID": 3}, 'The activity type "Task" is not supported in current context.'),
    ({"TYPE_ID": 0}, "The field TYPE_ID is not defined or invalid."),
    ({"OWNER_ID": 10 ** 6, "COMMUNICATIONS": [{"VALUE": "+1"}]}, "Access denied."),
    ({"SUBJECT": ""}, "The field SUBJECT is not defined or empty."),
])
def test_activity_add_refusals(pair, change, message):
    srv = pair.cloud
    fields = dict(_call_fields(min(srv.store.tables["deal"]), min(srv.store.tables["contact"])), **change)
    before = len(srv.store.timeline.activities)
    status, err = call(srv, "crm.activity.add", {"fields": fields})
    assert (status, err.get("error"), err.get("error_description")) == (400, "", message)
    assert len(srv.store.timeline.activities) == before


def test_generated_calls_look_like_telephony(pair):
    acts = ok(pair.cloud, "crm.activity.list", {"filter": {"PROVIDER_ID": "VOXIMPLANT_CALL", "=%ORIGIN_ID": "VI_%"},
                                                "select": ["*", "COMMUNICATIONS", "FILES"], "start": 0})
    assert acts["total"] > 0
    for a in acts["result"]:
        start, end = (dt.datetime.fromisoformat(a[k]) for k in ("START_TIME", "END_TIME"))
        assert a["TYPE_ID"] == "2" and a["DIRECTION"] in ("1", "2") and len(a["COMMUNICATIONS"]) == 1
        if end == start:  # missed: no record, not done
            assert a["FILES"] == [] and a["COMPLETED"] == "N" and a["DIRECTION"] == "1"
        else:
            assert "crm_show_file.php?fileId=" in a["FILES"][0]["url"] and f"ownerId={a['ID']}" in a["FILES"][0]["url"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(type_id=st.sampled_from([None, 1, 2, 4]), days=st.integers(0, 400), desc=st.booleans())
def test_activity_list_filters_orders_and_pages(pair, type_id, days, desc):
    srv = pair.cloud
    since = pair.cutoff - dt.timedelta(days=days)
    flt = {">=START_TIME": since.isoformat()} | ({"TYPE_ID": type_id} if type_id else {})
    expected = sorted(a["ID"] for a in srv.store.timeline.activities.values()
                      if a["START_TIME"] >= since and (type_id is None or a["TYPE_ID"] == type_id))
    seen, last = [], 0
    while True:  # the fast export: ID order, >ID, start=-1
        page = ok(srv, "crm.activity.list", {"filter": flt | {">ID": last}, "order": {"ID": "ASC"},
                                            "select": ["ID"], "start": -1})
        assert page["total"] == 0 and "next" not in page
        seen += [int(r["ID"]) for r in page["result"]]
        if len(page["result"]) < 50:
            break
        last = seen[-1]
    assert seen == expected
    first = ok(srv, "crm.activity.list", {"filter": flt, "order": {"START_TIME": "DESC" if desc else "ASC"},
                                          "select": ["ID", "START_TIME"]})
    assert first["total"] == len(expected)
    times = [r["START_TIME"] for r in first["result"]]
    assert times == sorted(times, reverse=desc)


def test_filter_bindings_duplicates_an_activity_bound_twice(pair):
    srv = pair.cloud
    deal_id, contact_id = max(srv.store.tables["deal"]), max(srv.store.tables["contact"])
    new_id = ok(srv, "crm.activity.add", {"fields": _call_fields(deal_id, contact_id)})["result"]
    rows = ok(srv, "crm.activity.list", {"filter": {"BINDINGS": [{"OWNER_TYPE_ID": 2, "OWNER_ID": deal_id},
                                                                 {"OWNER_TYPE_ID": 3, "OWNER_ID": contact_id}],
                                                    "ID": new_id}, "select": ["ID"]})["result"]
    assert [r["ID"] for r in rows] == [str(new_id)] * 2  # "в результатах возможно дублирование"


def test_timeline_comments(pair):
    srv = pair.cloud
    lead_id = max(srv.store.tables["lead"])
    status, _ = call(srv, "crm.timeline.comment.list", {"filter": {"ENTITY_ID": lead_id}})
    assert status == 400  # ENTITY_TYPE is required too
    new_id = ok(srv, "crm.timeline.comment.add", {"fields": {
        "ENTITY_ID": lead_id, "ENTITY_TYPE": "lead", "COMMENT": "Перезвонить", "AUTHOR_ID": 3,
        "CREATED": "2001-01-01T00:00:00+00:00"}})["result"]
    assert isinstance(new_id, int)
    got = ok(srv, "crm.timeline.comment.get", {"id": new_id})["result"]
    assert got["AUTHOR_ID"] == "3" and got["ENTITY_TYPE"] == "lead" and not got["CREATED"].startswith("2001")
    listed = ok(srv, "crm.timeline.comment.list", {"filter": {"ENTITY_ID": lead_id, "ENTITY_TYPE": "lead"},
                                                   "order": {"ID": "DESC"}})
    assert listed["result"][0]["ID"] == str(new_id) and listed["total"] >= 1
    assert call(srv, "crm.timeline.comment.update", {"id": new_id, "fields": {"COMMENT": ""}})[1]["error"] == \
        "INVALID_ARG_VALUE"
    assert ok(srv, "crm.timeline.comment.update", {"id": new_id, "fields": {"COMMENT": "done"}})["result"] == new_id
    assert ok(srv, "crm.timeline.comment.delete", {"id": new_id})["result"] is None
    assert call(srv, "crm.timeline.comment.delete", {"id": new_id})[1]["error"] == "NOT_FOUND"
    assert call(srv, "crm.timeline.comment.add", {"fields": {"ENTITY_ID": 10 ** 6, "ENTITY_TYPE": "deal",
                                                             "COMMENT": "x"}})[1]["error"] == "OWNER_NOT_FOUND"


def test_products_and_deal_rows_replace_and_recompute_the_amount(pair):
    srv = pair.cloud
    prod = ok(srv, "crm.product.add", {"fields": {"NAME": "Widget", "PRICE": 100, "CURRENCY_ID": "EUR"}})["result"]
    assert ok(srv, "crm.product.get", {"id": prod})["result"]["PRICE"] == "100.00"
    assert any(p["ID"] == str(prod) for p in ok(srv, "crm.product.list", {"filter": {"%NAME": "widg"}})["result"])
    deal_id = min(srv.store.tables["deal"])
    before = srv.store.get("deal", deal_id)["DATE_MODIFY"]
    ok(srv, "crm.deal.productrows.set", {"id": deal_id, "rows": [
        {"PRODUCT_ID": prod, "PRICE": 90, "QUANTITY": 2, "DISCOUNT_TYPE_ID": 2, "DISCOUNT_RATE": 10, "SORT": 20},
        {"PRODUCT_NAME": "Setup", "PRICE": 50, "SORT": 10}]})
    rows = ok(srv, "crm.deal.productrows.get", {"id": deal_id})["result"]
    assert [r["PRODUCT_NAME"] for r in rows] == ["Setup", "Widget"]  # by SORT; a catalogue row takes its name
    assert rows[1]["PRICE_NETTO"] == 100 and rows[1]["DISCOUNT_SUM"] == 10 and rows[1]["MEASURE_CODE"] == 796
    deal = ok(srv, "crm.deal.get", {"id": deal_id})["result"]
    assert deal["OPPORTUNITY"] == "230.00" and srv.store.get("deal", deal_id)["DATE_MODIFY"] > before
    ok(srv, "crm.deal.productrows.set", {"id": deal_id, "rows": [{"PRODUCT_NAME": "Only", "PRICE": 5}]})
    assert [r["PRODUCT_NAME"] for r in ok(srv, "crm.deal.productrows.get", {"id": deal_id})["result"]] == ["Only"]
    status, err = call(srv, "crm.deal.productrows.set", {"id": deal_id, "rows": [{"PRICE": 1, "DISCOUNT_TYPE_ID": 1}]})
    assert status == 400 and err["error"] == "ERROR_CORE" and "DISCOUNT_SUM" in err["error_description"]
    assert call(srv, "crm.deal.productrows.get", {"id": 10 ** 6})[1]["error_description"] == "Not found"


def test_item_productrow_list_many_deals(pair):
    srv = pair.cloud
    owners = sorted({key[1] for key, rows in srv.store.timeline.rows.items() if rows})[:5]
    assert len(owners) >= 2
    found = ok(srv, "crm.item.productrow.list", {"filter": {"=ownerType": "D", "=ownerId": owners}})
    assert {r["ownerId"] for r in found["result"]["productRows"]} == set(owners)
    assert found["total"] == sum(len(srv.store.timeline.rows[("D", o)]) for o in owners)
    assert call(srv, "crm.item.productrow.list", {"filter": {"=ownerId": owners}})[0] == 400


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_item_productrow_list_finds_exactly_the_rows_of_the_owners_named(pair, data):
    """The rows are found by owner (not by reading the portal's every row): for any owner IDs, one or a
    list, present or not, with or without rows, the answer is every row of those owners of that type."""
    srv = pair.cloud
    with_rows = sorted({key[1] for key, rows in srv.store.timeline.rows.items() if rows and key[0] == "D"})
    owners = data.draw(st.lists(st.one_of(st.sampled_from(with_rows), st.integers(1, 10 ** 6)), min_size=1, max_size=6))
    value = owners if len(owners) > 1 or data.draw(st.booleans()) else owners[0]
    as_text = data.draw(st.booleans())
    value = [str(o) for o in value] if as_text and isinstance(value, list) else (str(value) if as_text else value)
    owner_type = data.draw(st.sampled_from(["D", "L"]))
    found = ok(srv, "crm.item.productrow.list", {"filter": {"=ownerType": owner_type, "=ownerId": value},
                                                "start": -1})["result"]["productRows"]
    expected = sorted((int(r["ID"]) for o in set(owners) for r in srv.store.timeline.rows.get((owner_type, int(o)), [])))
    assert [int(r["id"]) for r in found] == expected[:50]  # one page, by ID


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(price=st.decimals(min_value=1, max_value=10000, places=2), qty=st.integers(1, 20),
       rate=st.integers(0, 90), tax=st.sampled_from([None, 0, 10, 20]))
def test_row_prices_follow_the_vendor_example(pair, price, qty, rate, tax):
    srv = pair.cloud
    deal_id = max(srv.store.tables["deal"])
    row = {"PRODUCT_NAME": "X", "PRICE": str(price), "QUANTITY": qty, "DISCOUNT_TYPE_ID": 2, "DISCOUNT_RATE": rate}
    if tax is not None:
        row.update(TAX_RATE=tax, TAX_INCLUDED="Y")
    ok(srv, "crm.deal.productrows.set", {"id": deal_id, "rows": [row]})
    got = ok(srv, "crm.deal.productrows.get", {"id": deal_id})["result"][0]
    factor = 1 + Decimal(tax or 0) / 100
    assert Decimal(str(got["PRICE"])) == price and got["PRICE_ACCOUNT"] == f"{price:.2f}"
    assert abs(Decimal(str(got["PRICE_EXCLUSIVE"])) - price / factor) <= Decimal("0.01")
    assert abs(Decimal(str(got["PRICE_NETTO"])) * (1 - Decimal(rate) / 100) - price / factor) <= Decimal("0.02")
    assert ok(srv, "crm.deal.get", {"id": deal_id})["result"]["OPPORTUNITY"] == f"{price * qty:.2f}"


def test_deleting_an_owner_removes_its_timeline_keeps_other_bindings(pair):
    srv = pair.cloud
    deal_id, contact_id = sorted(srv.store.tables["deal"])[1], sorted(srv.store.tables["contact"])[1]
    shared = ok(srv, "crm.activity.add", {"fields": _call_fields(deal_id, contact_id)})["result"]
    own = ok(srv, "crm.activity.add", {"fields": _call_fields(deal_id, contact_id, COMMUNICATIONS=[
        {"VALUE": "+1 555"}])})["result"]  # bound to the deal alone
    comment = ok(srv, "crm.timeline.comment.add", {"fields": {"ENTITY_ID": deal_id, "ENTITY_TYPE": "deal",
                                                              "COMMENT": "x"}})["result"]
    ok(srv, "crm.deal.productrows.set", {"id": deal_id, "rows": [{"PRODUCT_NAME": "Y", "PRICE": 1}]})
    ok(srv, "crm.deal.delete", {"id": deal_id})
    assert call(srv, "crm.activity.get", {"id": own})[0] == 400
    assert call(srv, "crm.timeline.comment.get", {"id": comment})[0] == 400
    kept = ok(srv, "crm.activity.list", {"filter": {"ID": shared}, "select": ["ID", "OWNER_ID", "BINDINGS"]})["result"]
    assert kept[0]["OWNER_ID"] == str(contact_id) and kept[0]["BINDINGS"] == [
        {"OWNER_TYPE_ID": "3", "OWNER_ID": str(contact_id)}]
    assert ("D", deal_id) not in srv.store.timeline.rows


def test_pair_box_holds_the_backup_timeline_only(pair):
    data = pair.dataset.timeline
    box, cloud = pair.box.store.timeline, pair.cloud.store.timeline
    assert sorted(box.activities) == [a["ID"] for a in data.activities]
    assert all(a["CREATED"] < pair.cutoff for a in data.activities)
    post = {a["ID"]: a for a in data.post_activities}
    assert post and all(a["CREATED"] > pair.cutoff for a in post.values()) and not set(post) & set(box.activities)
    assert set(post) - set(cloud.activities) <= {a for a, x in post.items() if x["OWNER_TYPE_ID"] == 1}
    calls = [a for a in post.values() if a["TYPE_ID"] == 2]
    assert {a["DIRECTION"] for a in calls} == {1, 2} and any(a["END_TIME"] == a["START_TIME"] for a in calls)
    assert {a["TYPE_ID"] for a in post.values()} == {1, 2, 4}
    assert data.post_comments and data.post_products and data.post_rows
    assert max(box.products) < min(p["ID"] for p in data.post_products) <= max(cloud.products)
    old_deals = {d for _, d, _ in data.post_rows} & set(pair.dataset.backup["deal"])
    assert old_deals  # an old deal's rows changed in the cloud
    for deal_id in old_deals:
        assert [r["PRODUCT_ID"] for r in box.rows[("D", deal_id)]] != [] and \
            box.rows[("D", deal_id)] != cloud.rows[("D", deal_id)]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_activity_list_by_named_ids_is_every_activity_allowed(pair, data):
    """``@ID``/``ID`` read the activities named (not the portal's every activity): for any IDs, present
    or not, with another condition, the page is every allowed activity in the list's default order."""
    acts = pair.cloud.store.timeline.activities
    present = sorted(acts)
    picked = data.draw(st.lists(st.one_of(st.sampled_from(present), st.integers(1, 10 ** 5)), min_size=1, max_size=8))
    key = data.draw(st.sampled_from(["@ID", "ID"]))
    flt = {key: [str(i) for i in picked] if data.draw(st.booleans()) else picked}
    allowed = set(picked) & set(acts)
    if data.draw(st.booleans()):
        flt["TYPE_ID"] = 2
        allowed = {i for i in allowed if int(acts[i]["TYPE_ID"]) == 2}
    got = ok(pair.cloud, "crm.activity.list", {"filter": flt, "select": ["ID"], "start": -1})["result"]
    want = sorted(allowed, key=lambda i: (acts[i]["START_TIME"], i))  # the default order: START_TIME ascending
    assert [int(r["ID"]) for r in got] == want[:50]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_activity_pages_by_id_keep_to_the_filters_id_range_either_way(pair, data):
    """A page ordered by ID (ascending or descending, no count) within ``>ID`` and ``<ID``/``<=ID`` is the
    first activities the filter allows in that order — the listing chains' ranges and their ends."""
    acts = pair.cloud.store.timeline.activities
    present = sorted(acts)
    flt, allowed = {}, set(acts)
    lo = data.draw(st.one_of(st.none(), st.sampled_from(present)))
    if lo is not None:
        flt[">ID"] = lo
        allowed = {i for i in allowed if i > lo}
    hi, below = data.draw(st.one_of(st.none(), st.sampled_from(present))), data.draw(st.sampled_from(["<ID", "<=ID"]))
    if hi is not None:
        flt[below] = hi
        allowed = {i for i in allowed if i < hi or (below == "<=ID" and i == hi)}
    if data.draw(st.booleans()):
        flt["TYPE_ID"] = 2
        allowed = {i for i in allowed if int(acts[i]["TYPE_ID"]) == 2}
    desc = data.draw(st.booleans())
    got = ok(pair.cloud, "crm.activity.list", {"filter": flt, "order": {"ID": "DESC" if desc else "ASC"},
                                               "select": ["ID"], "start": -1})["result"]
    assert [int(r["ID"]) for r in got] == sorted(allowed, reverse=desc)[:50]

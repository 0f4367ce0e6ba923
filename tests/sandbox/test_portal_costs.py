"""The sandbox portal's simulated costs and operating-time limit (PortalLimits), with small numbers.

The defaults are the vendor's published numbers (see PortalLimits' docstring for each source);
here every cost is set small so that the tests run in about a second. Calls go through
``Portal.handle`` (the HTTP layer adds nothing to the costs) except where the answer's shape over
HTTP matters.
"""

from __future__ import annotations

import time

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox.portal import Portal, PortalLimits, PortalServer
from sandbox.portal.__main__ import limits_from, parse_args
from sandbox.portal.store import CrmStore


def _portal(leads: int = 0, **limits) -> Portal:
    store = CrmStore()
    for i in range(leads):
        store.add("lead", {"TITLE": f"lead {i}"})
    return Portal(store, code="c0de", limits=PortalLimits.free(rate=1000, burst=1000, **limits))


def _call(portal: Portal, method: str, params: dict | None = None) -> tuple[int, dict]:
    status, body, _ = portal.handle("1", "c0de", method, dict(params or {}))
    return status, body


def test_defaults_are_the_vendors_numbers_and_free_drops_only_the_costs():
    vendor = PortalLimits()
    assert (vendor.rate, vendor.burst, vendor.operating_limit_s, vendor.operating_window_s) == (2.0, 50, 480.0, 600.0)
    # huge-data.md: 0.0979 s per start=-1 page (0.0685 processing); 49.9 s with the count on 2 387 743 leads
    assert vendor.page_cost_s + vendor.request_cost_s == pytest.approx(0.098, abs=0.001)
    assert vendor.count_cost_s * 2_387_743 + vendor.page_cost_s == pytest.approx(49.9, rel=0.01)
    assert (vendor.add_cost_s, vendor.update_cost_s, vendor.import_item_cost_s) == (1.83, 3.19, 1.19)
    free = PortalLimits.free(rate=5.0)
    assert all(getattr(free, name) == 0 for name in PortalLimits.COSTS)
    assert (free.rate, free.burst, free.operating_limit_s) == (5.0, 50, 480.0)


def test_a_list_page_costs_its_processing_and_the_request_its_overhead():
    portal = _portal(leads=60, page_cost_s=0.05, request_cost_s=0.04)
    t0 = time.perf_counter()
    status, body = _call(portal, "crm.lead.list", {"start": -1})
    assert status == 200 and len(body["result"]) == 50
    assert time.perf_counter() - t0 >= 0.09
    assert body["time"]["processing"] >= 0.05
    assert body["time"]["duration"] - body["time"]["processing"] >= 0.04  # outside the method
    assert 0.05 <= body["time"]["operating"] < 0.09  # the request's overhead is not operating time


def test_offset_paging_pays_for_every_counted_row():
    portal = _portal(leads=200, count_cost_s=5e-4)
    _, counted = _call(portal, "crm.lead.list", {"start": 0})
    _, fast = _call(portal, "crm.lead.list", {"start": -1})
    assert counted["total"] == 200 and counted["time"]["processing"] >= 200 * 5e-4
    assert fast["time"]["processing"] < 200 * 5e-4


def test_writes_cost_per_record_and_batch_import_per_item():
    portal = _portal(add_cost_s=0.03, update_cost_s=0.05, import_item_cost_s=0.02)
    _, added = _call(portal, "crm.lead.add", {"fields": {"TITLE": "x"}})
    assert added["time"]["processing"] >= 0.03
    _, updated = _call(portal, "crm.lead.update", {"id": added["result"], "fields": {"TITLE": "y"}})
    assert updated["time"]["processing"] >= 0.05
    _, item = _call(portal, "crm.item.add", {"entityTypeId": 1, "fields": {"title": "z"}})
    assert item["time"]["processing"] >= 0.03
    _, imported = _call(portal, "crm.item.batchImport", {"entityTypeId": 1, "data": [{"title": f"i{i}"} for i in range(4)]})
    assert len(imported["result"]["items"]) == 4
    assert imported["time"]["processing"] >= 4 * 0.02 and imported["time"]["operating"] >= 4 * 0.02


def test_batch_commands_count_for_their_own_method_and_the_batch_for_none():
    portal = _portal(leads=10, page_cost_s=0.02)
    cmd = {f"p{i}": "crm.lead.list?start=-1" for i in range(3)}
    status, body = _call(portal, "batch", {"cmd": cmd})
    assert status == 200 and not body["result"]["result_error"]
    operating = [body["result"]["result_time"][f"p{i}"]["operating"] for i in range(3)]
    assert operating[0] >= 0.02 and operating[2] >= 3 * 0.02  # accumulated per method, command by command
    assert portal._operating_used("crm.lead.list")[0] >= 3 * 0.02
    assert portal._operating_used("batch")[0] == 0


def test_operating_limit_inside_a_batch_then_waited_out_until_operating_reset_at():
    portal = _portal(leads=10, page_cost_s=0.02, operating_limit_s=0.05, operating_window_s=1.0)
    _, body = _call(portal, "batch", {"cmd": {f"p{i}": "crm.lead.list?start=-1" for i in range(5)}})
    res = body["result"]
    # checked before each command: after three pages (0.06 s) the method is over its 0.05 s
    assert sorted(res["result"]) == ["p0", "p1", "p2"]
    assert {k: e["error"] for k, e in res["result_error"].items()} == {"p3": "OPERATION_TIME_LIMIT",
                                                                       "p4": "OPERATION_TIME_LIMIT"}
    status, refused = _call(portal, "crm.lead.list", {"start": -1})
    assert status == 429 and refused["error"] == "OPERATION_TIME_LIMIT"
    reset_at = refused["time"]["operating_reset_at"]
    assert time.time() < reset_at <= time.time() + 1.0
    # another method has its own budget
    assert _call(portal, "crm.lead.get", {"id": 1})[0] == 200
    time.sleep(max(0.0, reset_at - time.time()) + 0.01)
    assert _call(portal, "crm.lead.list", {"start": -1})[0] == 200


def test_the_oldest_bucket_drops_out_and_later_buckets_stay():
    """limits.md: ten buckets of a tenth of the window; at operating_reset_at only the oldest one's
    time leaves the sum (here window 1 s: buckets of 0.1 s)."""
    portal = _portal(operating_window_s=1.0)
    portal._operating_add("crm.lead.list", 0.3)
    time.sleep(0.15)  # the next cost opens a new bucket
    portal._operating_add("crm.lead.list", 0.2)
    used, reset_at = portal._operating_used("crm.lead.list")
    assert used == pytest.approx(0.5)
    time.sleep(max(0.0, reset_at - time.time()) + 0.01)
    used, later_reset = portal._operating_used("crm.lead.list")
    assert used == pytest.approx(0.2) and later_reset > reset_at


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 0.2), st.floats(0.0, 5.0)), min_size=1, max_size=12))
def test_costs_within_one_bucket_width_collect_in_one_bucket(steps):
    """Whatever the pauses, the sum in the window is every cost added and each bucket spans at
    most a tenth of the window from its first cost."""
    portal = _portal(operating_window_s=600.0)
    now = 1_000.0
    for pause, cost in steps:
        now += pause * 100  # up to 20 s between costs: some share a bucket, some do not
        portal._operating_add("m", cost, now=now)
    used, _ = portal._operating_used("m", now=now)
    assert used == pytest.approx(sum(c for _, c in steps))
    starts = [b[0] for b in portal._operating["m"]]
    assert starts == sorted(starts) and all(b - a >= 60.0 for a, b in zip(starts, starts[1:]))


def test_over_http_the_429_carries_the_reset_time():
    portal = _portal(leads=5, page_cost_s=0.01, operating_limit_s=0.005, operating_window_s=2.0)
    with PortalServer(portal) as srv:
        assert requests.get(srv.webhook + "crm.lead.list.json", params={"start": -1}, timeout=5).status_code == 200
        r = requests.get(srv.webhook + "crm.lead.list.json", params={"start": -1}, timeout=5)
    assert r.status_code == 429 and r.json()["error"] == "OPERATION_TIME_LIMIT"
    assert r.json()["time"]["operating"] >= 0.01 and r.json()["time"]["operating_reset_at"] > time.time()


def test_command_line_sets_each_cost_or_none():
    cloud, box = limits_from(parse_args(["--page-cost", "0.5", "--import-item-cost", "0.2", "--operating-limit", "60",
                                         "--box-write-latency", "0.1"]))
    assert (cloud.page_cost_s, cloud.import_item_cost_s, cloud.operating_limit_s) == (0.5, 0.2, 60.0)
    assert cloud.add_cost_s == PortalLimits().add_cost_s and cloud.count_cost_s == pytest.approx(20.9e-6)
    assert box.write_latency_s == 0.1 and box.page_cost_s == 0.5
    free, _ = limits_from(parse_args(["--free", "--rate", "5"]))
    assert free == PortalLimits.free(rate=5.0)

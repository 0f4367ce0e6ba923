"""Listing the timeline comments of many records (connectors.bitrix24.comments.list_comments):
several batches in flight, merged in a fixed order, every comment found whatever the page edges,
limits inside batches waited out. The truth is the sandbox store's own table, not the product's
code."""

from __future__ import annotations

import datetime as dt
import random
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.bitrix24.comments import ENTITY_TYPES, list_comments
from connectors.bitrix24.rest import Bitrix24Client
from connectors.errors import FatalError
from sandbox.portal import CrmStore, Portal, PortalLimits, PortalServer

# owners with more comments than one page holds (50), and one exactly on the edge
BIG = {("lead", 7): 50, ("deal", 3): 51, ("contact", 12): 120}
CUTOFF = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)


def _seed(store: CrmStore) -> None:
    rng = random.Random(5)
    owners = [(e, i) for e in ENTITY_TYPES for i in range(1, 81)]
    for n in range(900):
        entity, rid = rng.choice(owners)
        store.timeline.put_comment(entity, rid, f"note {n}", 1, created=CUTOFF + dt.timedelta(minutes=n))
    for (entity, rid), count in BIG.items():
        for n in range(count):
            store.timeline.put_comment(entity, rid, f"many {n}", 1, created=CUTOFF - dt.timedelta(minutes=n))


@pytest.fixture(scope="module")
def portal():
    # a list page costs a little, so that concurrent batches really overlap on the portal
    server = PortalServer(Portal(CrmStore(), limits=PortalLimits.free(rate=200.0, burst=50, page_cost_s=0.002)))
    _seed(server.store)
    with server.start():
        yield server


def _client(portal, waits: list[float] | None = None) -> Bitrix24Client:
    """``waits``: the retry loop's waits are recorded there instead of slept (a limit inside a batch
    is waited out until the method's last seen reset, minutes ahead on a portal that just started)."""
    kw = {"sleep": waits.append} if waits is not None else {}
    return Bitrix24Client(portal.webhook, rate=150.0, burst=40, timeout=10, name="cloud", **kw)


def _truth(portal, owners: dict[str, set[str]]) -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    for com in sorted(portal.store.timeline.comments.values(), key=lambda c: c["ID"]):
        owner = (com["ENTITY_TYPE"], str(com["ENTITY_ID"]))
        if owner[1] in owners.get(owner[0], set()):
            out.setdefault(owner, []).append(str(com["ID"]))
    return out


def _ids(listed: dict[tuple[str, str], list[dict]]) -> dict[tuple[str, str], list[str]]:
    return {owner: [str(r["ID"]) for r in rows] for owner, rows in listed.items() if rows}


owner_sets = st.fixed_dictionaries({e: st.sets(st.integers(1, 90).map(str), max_size=90) for e in ENTITY_TYPES})


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(owners=owner_sets, in_flight=st.integers(1, 16))
def test_every_comment_of_every_owner_in_a_fixed_order(portal, owners, in_flight):
    listed = list_comments(_client(portal), owners, in_flight=in_flight)
    assert _ids(listed) == _truth(portal, owners)
    # one entry per owner asked (empty when it has none), entity then ID order, rows by ID
    want_order = [(e, i) for e in ENTITY_TYPES for i in sorted(owners[e], key=int)]
    assert list(listed) == want_order
    assert all([int(r["ID"]) for r in rows] == sorted(int(r["ID"]) for r in rows) for rows in listed.values())


def test_batches_are_in_flight_together(portal):
    client = _client(portal)
    send, lock = client.batch_each, threading.Lock()
    running, most = [0], [0]

    def counting(cmd, **kw):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            return send(cmd, **kw)
        finally:
            with lock:
                running[0] -= 1

    client.batch_each = counting
    owners = {e: {str(i) for i in range(1, 81)} for e in ENTITY_TYPES}  # 320 owners: 7 batches
    listed = list_comments(client, owners, in_flight=4)
    assert _ids(listed) == _truth(portal, owners)
    assert 1 < most[0] <= 4  # more than one at once, never more than asked


def test_commands_refused_by_the_operating_limit_are_sent_again(portal):
    waits: list[float] = []
    client = _client(portal, waits)
    owners = {e: {str(i) for i in range(1, 81)} for e in ENTITY_TYPES}
    fired = portal.faults.fired["OPERATION_TIME_LIMIT"]
    # commands of this method inside batches (first ones and later ones) are refused, nothing else
    portal.faults.inject("OPERATION_TIME_LIMIT", times=12, method="crm.timeline.comment.list", reset_in=0.5)
    listed = list_comments(client, owners, in_flight=8)
    assert portal.faults.fired["OPERATION_TIME_LIMIT"] - fired == 12
    assert _ids(listed) == _truth(portal, owners)
    # a batch whose first (here: only) command is refused is sent again after a wait, not given up on
    before = len(waits)
    portal.faults.inject("OPERATION_TIME_LIMIT", times=1, method="crm.timeline.comment.list", reset_in=0.5)
    assert _ids(list_comments(client, {"deal": {"3"}})) == _truth(portal, {"deal": {"3"}})
    assert len(waits) > before


def test_an_owner_with_more_pages_than_allowed_fails_loudly(portal):
    with pytest.raises(FatalError, match="did not end within 2 pages"):
        list_comments(_client(portal), {"contact": {"12"}}, max_rounds=2)  # 120 and a few: 3 pages
    listed = list_comments(_client(portal), {"contact": {"12"}}, max_rounds=3)
    assert 100 < len(listed[("contact", "12")]) <= 150
    assert _ids(listed) == _truth(portal, {"contact": {"12"}})

"""Helpers for the CRM delta tests: a fast sandbox pair, clients, and the expected delta."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import sqlalchemy

from connectors.bitrix24.rest import Bitrix24Client
from journal.idmap import IdMap
from sandbox.portal import PortalLimits, PortalPair, start_pair

FAST = PortalLimits.free(rate=200.0, burst=50)  # tests: same shape, faster drain, no simulated costs


def make_pair(**kw) -> PortalPair:
    kw.setdefault("limits", FAST)
    kw.setdefault("companies", 30)
    kw.setdefault("contacts", 60)
    kw.setdefault("leads", 150)
    kw.setdefault("deals", 80)
    return start_pair(**kw)


def clients(pair: PortalPair, *, rate: float = 150.0, burst: int = 40, timeout: float = 10, **kw):
    cloud = Bitrix24Client(pair.cloud_webhook, rate=rate, burst=burst, name="cloud", timeout=timeout, **kw)
    box = Bitrix24Client(pair.box_webhook, rate=rate, burst=burst, name="box", timeout=timeout, **kw)
    return cloud, box


def idmap(tmp_path, key: str = "test-migration") -> IdMap:
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'journal.db'}")
    return IdMap(engine, key)


def expected_delta(pair: PortalPair) -> dict[str, set[str]]:
    """From the generator's own record of events: IDs created or changed after the cutoff and
    still present in the cloud."""
    out: dict[str, set[str]] = {e: set() for e in ("company", "contact", "lead", "deal")}
    for c in pair.dataset.changes:
        if c.kind in ("add", "update"):
            out[c.entity].add(str(c.record_id))
    # setting a deal's product rows changes it (its amount, its DATE_MODIFY): crm-deal-productrows-set.md
    out["deal"].update(str(deal_id) for at, deal_id, _rows in pair.dataset.timeline.post_rows if at > pair.cutoff)
    for c in pair.dataset.changes:
        if c.kind == "delete":
            out[c.entity].discard(str(c.record_id))
    return out


def migrated(pair: PortalPair, entity: str) -> list[dict]:
    """The box's records written by cloud2box (straight from the sandbox store)."""
    return [r for r in pair.box.store.tables[entity].values() if r.get("ORIGINATOR_ID") == "cloud2box"]


def utc(d: dt.datetime) -> dt.datetime:
    return d.astimezone(dt.timezone.utc)


def box_twins(pair: PortalPair, entity: str) -> "Counter[str]":
    """How many box records carry each ORIGIN_ID (ORIGINATOR_ID = cloud2box), counted over the box's
    REST API with the classic upper-case list method and offset paging: independent of the
    product's own listing code (fast lists, batches) under test."""
    import time

    import requests

    counts: Counter[str] = Counter()
    start = 0
    for _ in range(10_000):
        body = requests.post(f"{pair.box_webhook}crm.{entity}.list.json", timeout=30,
                             json={"filter": {"ORIGINATOR_ID": "cloud2box"}, "select": ["ID", "ORIGIN_ID"],
                                   "order": {"ID": "ASC"}, "start": start}).json()
        if body.get("error") == "QUERY_LIMIT_EXCEEDED":
            time.sleep(0.2)
            continue
        for row in body["result"]:
            counts[str(row["ORIGIN_ID"])] += 1
        if "next" not in body:
            return counts
        start = int(body["next"])
    raise AssertionError("the box's list did not end")


def backdate(pair: PortalPair, entity: str = "lead") -> tuple[str, str]:
    """Re-date two records the cloud created after the backup (IDs above the backup's) to before
    the cutoff, as an import into the cloud does: the first three days before it (older than the
    backup's newest records, so the box refuses that creation time), the second to the cutoff
    itself (the box keeps it: a moved copy then has a box ID above the backup's and a creation
    time at the cutoff). Returns their cloud IDs."""
    new = sorted(c.record_id for c in pair.dataset.changes if c.kind == "add" and c.entity == entity)
    for rid, when in ((new[0], pair.cutoff - dt.timedelta(days=3)), (new[1], pair.cutoff)):
        rec = pair.cloud.store.tables[entity][rid]
        rec["DATE_CREATE"] = rec["DATE_MODIFY"] = when
    pair.cloud.store.edited_by_hand(entity)
    return str(new[0]), str(new[1])

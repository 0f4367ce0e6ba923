"""Helpers for the CRM delta tests: a fast sandbox pair, clients, and the expected delta."""

from __future__ import annotations

import datetime as dt

import sqlalchemy

from connectors.bitrix24.rest import Bitrix24Client
from journal.idmap import IdMap
from sandbox.portal import PortalLimits, PortalPair, start_pair

FAST = PortalLimits(rate=200.0, burst=50)  # tests: same shape, faster drain


def make_pair(**kw) -> PortalPair:
    kw.setdefault("limits", FAST)
    kw.setdefault("companies", 30)
    kw.setdefault("contacts", 60)
    kw.setdefault("leads", 150)
    kw.setdefault("deals", 80)
    return start_pair(**kw)


def clients(pair: PortalPair, *, rate: float = 150.0, burst: int = 40, **kw):
    cloud = Bitrix24Client(pair.cloud_webhook, rate=rate, burst=burst, name="cloud", timeout=10, **kw)
    box = Bitrix24Client(pair.box_webhook, rate=rate, burst=burst, name="box", timeout=10, **kw)
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
    for c in pair.dataset.changes:
        if c.kind == "delete":
            out[c.entity].discard(str(c.record_id))
    return out


def migrated(pair: PortalPair, entity: str) -> list[dict]:
    """The box's records written by cloud2box (straight from the sandbox store)."""
    return [r for r in pair.box.store.tables[entity].values() if r.get("ORIGINATOR_ID") == "cloud2box"]


def utc(d: dt.datetime) -> dt.datetime:
    return d.astimezone(dt.timezone.utc)

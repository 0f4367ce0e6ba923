"""Straggler sweeps and their loop guard, tested the way seed 000 failed.

The sandbox box sends an outgoing webhook on every CRM change to the customer's website, which
writes the change back into the cloud (a copy of every new lead, a sync stamp on every update) —
a two-way sync with no guard of its own. Our sweeps move cloud → box. Without a loop guard each
sweep would bounce every record once more, for ever; with it, echoes of our writes are skipped,
a record that keeps changing is quarantined and alerted, and the traffic stops.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from connectors.secrets import register_secret
from flows.actions import ActionContext
from flows.config import config_from_dict
from flows.sweeps import StragglerSweeper
from journal.store import Journal
from journal.sweeps import quarantined, release, sweeps
from journal.triage import issues
from sandbox.portal import PortalLimits, start_pair
from sandbox.website import start_website

SMALL = dict(companies=4, contacts=8, leads=16, deals=8, users=4, tasks=3)
# the plan's request rate is not what these tests prove (the sweeps' request budgets are): portals
# and clients drain fast, so that a sweep takes milliseconds instead of the 2/s plan's seconds
FAST = PortalLimits.free(rate=200.0, burst=50)
CLIENT_RATE = {"rate": 150, "burst": 40, "box_rate": 150, "box_burst": 40}


def _context(tmp_path: Path, pair, *, sweeps_cfg: dict) -> ActionContext:
    raw = {"migration": {"name": "t", "portal": pair.cloud.base_url, "box_portal": pair.box.base_url},
           "journal": {"url": f"sqlite:///{tmp_path / 'journal.db'}", "out_dir": str(tmp_path / "out")},
           "crm_delta": {"cutoff": pair.cutoff.isoformat(), "max_attempts": 2, "timeout_s": 10, **CLIENT_RATE},
           "sweeps": sweeps_cfg,
           "notices": {"dry_run": True, "out_dir": str(tmp_path / "notices")},
           "secrets": {"cloud_webhook": {"env": "X_CLOUD"}, "box_webhook": {"env": "X_BOX"}}}
    config = config_from_dict(raw, source="test.toml")
    secrets = {"cloud_webhook": SecretStr(pair.cloud_webhook), "box_webhook": SecretStr(pair.box_webhook)}
    for s in secrets.values():
        register_secret(s.get_secret_value())
    journal = Journal(config.journal.url)
    run, _ = journal.open_run(name="t", portal=pair.cloud.base_url, mode="cutover", timezone="UTC", config_snapshot={})
    return ActionContext(config=config, secrets=secrets, journal=journal, run_id=run.id, step_id="3.1",
                         mode="cutover", work_dir=tmp_path / "work")


def _settle(pair, website, timeout: float = 10.0) -> None:
    """Wait until the box's events and the website's writes have quietened (async both)."""
    deadline = time.monotonic() + timeout
    seen: list = []
    while time.monotonic() < deadline:
        seen.append((pair.box.portal.events_sent, pair.box.portal.events_failed, website.events_received,
                     website.acted, website.requests, website.errors))
        if len(seen) >= 3 and seen[-1] == seen[-2] == seen[-3]:
            return
        time.sleep(0.3)


def _sweep(sweeper, pair, website, times: int) -> list[int]:
    """Sweep ``times`` times, letting the website's echoes land in between; the website's writes
    caused by each sweep."""
    caused = []
    for _ in range(times):
        before = website.acted
        sweeper.sweep_once()
        _settle(pair, website)
        caused.append(website.acted - before)
    return caused


def _origins(store, entity="lead") -> list[str]:
    return [str(r.get("ORIGIN_ID")) for r in store.tables[entity].values() if r.get("ORIGINATOR_ID") == "cloud2box"]


@pytest.fixture
def two_way(tmp_path):
    # the website must not lose a write to the portal's rate limit: a refused write would end a
    # bounce by luck (the real integration platform retried until its credits were gone)
    with start_pair(**SMALL, limits=PortalLimits.free(rate=200.0, burst=1000)) as pair:
        website = start_website(pair.cloud_webhook, pair.box_webhook, "")
        website.application_token = pair.box.portal.add_outbound_webhook(
            website.handler_url, ["ONCRMLEADADD", "ONCRMLEADUPDATE"])
        with website:
            yield pair, website


def test_the_two_way_storm_is_bounded_and_alerted(tmp_path, two_way):
    pair, website = two_way
    ctx = _context(tmp_path, pair, sweeps_cfg={"quarantine_changes": 3, "quarantine_window_minutes": 60,
                                              "requests_per_sweep": 200, "requests_per_day": 5000})
    sweeper = StragglerSweeper(ctx, ctx.config.sweeps)
    portal_requests0 = pair.cloud.portal.requests + pair.box.portal.requests
    per_sweep_events = _sweep(sweeper, pair, website, 10)

    done = sweeps(ctx.journal, ctx.run_id)
    assert len(done) == 10
    # the website bounced our updates back for a few rounds, then the loop guard cut every loop:
    assert per_sweep_events[0] > 0 and per_sweep_events[-3:] == [0, 0, 0], per_sweep_events
    held = quarantined(ctx.journal, ctx.run_id)
    assert held.get("lead"), "bouncing leads are quarantined"
    # seed 000's failure was an unbounded request count: here it is a small, fixed number
    portal_requests = pair.cloud.portal.requests + pair.box.portal.requests - portal_requests0
    assert portal_requests + website.requests < 600, (portal_requests, website.requests)
    assert sum(e.data["requests"] for e in done) <= 10 * 200
    # ...and every quarantine was alerted: a journal issue and a contractor alert
    alerts = list((tmp_path / "out" / "alerts" / ctx.run_id).glob("*-sync-alert.md"))
    assert len(alerts) == sum(len(v) for v in held.values())
    assert "quarantined" in alerts[0].read_text() and "cloud2box sweep release" in alerts[0].read_text()
    loop_issues = [i for i in issues(ctx.journal, ctx.run_id) if i.title.startswith("sync loop suspected")]
    assert len(loop_issues) == len(alerts) and {i.severity for i in loop_issues} == {"emergency"}

    # echoes of our own writes (the website's copies carry ORIGINATOR_ID = cloud2box) never came back
    echoes = [rid for rid, r in pair.cloud.store.tables["lead"].items() if r.get("ORIGINATOR_ID") == "cloud2box"]
    assert echoes, "the website copied our new leads back into the cloud"
    assert not set(map(str, echoes)) & set(_origins(pair.box.store))
    assert sum(e.data["echoes_skipped"] for e in done) >= len(echoes)
    # every record moved exactly once: no cloud ID has two box twins
    origins = _origins(pair.box.store)
    assert len(origins) == len(set(origins))


def test_without_quarantine_the_loop_goes_on_every_sweep(tmp_path, two_way):
    """The control experiment: with the quarantine out of reach, every sweep bounces again
    (only the website's own cap or our budgets would stop it)."""
    pair, website = two_way
    ctx = _context(tmp_path, pair, sweeps_cfg={"quarantine_changes": 10_000, "quarantine_window_minutes": 10**7})
    sweeper = StragglerSweeper(ctx, ctx.config.sweeps)
    bounced = _sweep(sweeper, pair, website, 6)
    assert all(n > 0 for n in bounced[1:]), bounced
    assert not quarantined(ctx.journal, ctx.run_id)


def test_stragglers_are_moved_exactly_once_and_listed(tmp_path):
    with start_pair(**SMALL, limits=FAST) as pair:
        ctx = _context(tmp_path, pair, sweeps_cfg={"overlap_seconds": 3600})  # every sweep re-lists the last hour
        users = ctx.config.notices
        from flows.downtime import notifier_for

        sweeper = StragglerSweeper(ctx, ctx.config.sweeps,
                                   users_notifier=notifier_for(ctx.config, ctx.secrets, ctx.journal, ctx.run_id,
                                                               "cutover"))
        sweeper.sweep_once()  # the delta since the backup (as step 2.11 would have)
        seller = pair.dataset.users[1]
        new_ids = [pair.cloud.store.add("lead", {"TITLE": f"straggler {n}", "CREATED_BY_ID": seller["ID"],
                                                 "MODIFY_BY_ID": seller["ID"], "ASSIGNED_BY_ID": seller["ID"]})
                   for n in range(3)]
        for _ in range(3):
            sweeper.sweep_once()
        origins = _origins(pair.box.store)
        for rid in new_ids:
            assert origins.count(str(rid)) == 1
        done = sweeps(ctx.journal, ctx.run_id)
        assert [e.data["created"] for e in done[1:]] == [3, 0, 0]
        listed = {s["user_id"]: s for s in done[1].data["stragglers"]}
        assert listed[seller["ID"]]["records"] == 3 and listed[seller["ID"]]["email"] == seller["EMAIL"]
        told = ctx.journal.events(ctx.run_id, "stragglers-told")
        assert len(told) >= 1 and seller["ID"] in told[-1].data["users"]
        assert users.dry_run and list((tmp_path / "notices").glob("*-stragglers.md"))


def test_a_spent_budget_stops_the_sweep_and_nothing_is_lost(tmp_path):
    with start_pair(**SMALL, limits=FAST) as pair:
        ctx = _context(tmp_path, pair, sweeps_cfg={"requests_per_sweep": 10, "requests_per_day": 10_000})
        sweeper = StragglerSweeper(ctx, ctx.config.sweeps)
        first = sweeper.sweep_once()
        assert first.stopped and "request budget (10)" in first.stopped and first.requests <= 10
        # a stopped sweep does not move the window: the next one lists from the same point
        journaled = sweeps(ctx.journal, ctx.run_id)[0].data
        assert journaled["started_at"] == pair.cutoff.isoformat() and journaled["high_water"] == {}
        assert ctx.journal.events(ctx.run_id, "sweep-alert")
        assert list((tmp_path / "out" / "alerts" / ctx.run_id).glob("*-sync-alert.md"))
        # a bigger budget: the next sweep finishes the work; no record twice
        sweeper.section = sweeper.section.model_copy(update={"requests_per_sweep": 500})
        second = sweeper.sweep_once()
        assert second.stopped is None and second.moved > 0
        origins = _origins(pair.box.store)
        assert len(origins) == len(set(origins))

        # the day's budget counts every sweep of the day
        sweeper.section = sweeper.section.model_copy(update={"requests_per_day": first.requests + second.requests + 3})
        third = sweeper.sweep_once()
        assert third.stopped and "daily request budget" in third.stopped


def test_quarantine_release(tmp_path):
    with start_pair(**SMALL, limits=FAST) as pair:
        ctx = _context(tmp_path, pair, sweeps_cfg={})
        ctx.journal.add_event(ctx.run_id, "quarantine", "q", data={"entity": "lead", "cloud_id": "7"})
        assert quarantined(ctx.journal, ctx.run_id) == {"lead": {"7"}}
        release(ctx.journal, ctx.run_id, "lead", "7", by="Alex")
        assert quarantined(ctx.journal, ctx.run_id) == {}
        with pytest.raises(KeyError):
            release(ctx.journal, ctx.run_id, "lead", "7", by="Alex")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cloud_events_wake_the_sweeper_early_and_forged_ones_are_refused(tmp_path):
    import requests

    with start_pair(**SMALL, limits=FAST) as pair:
        port = _free_port()
        token = pair.cloud.portal.add_outbound_webhook(f"http://127.0.0.1:{port}/cloud2box/events",
                                                       ["ONCRMLEADADD", "ONCRMLEADUPDATE"])
        ctx = _context(tmp_path, pair, sweeps_cfg={"interval_minutes": 60, "quarantine_window_minutes": 600, "min_gap_seconds": 1,
                                                  "events_listen": f"127.0.0.1:{port}",
                                                  "events_token_secret": "cloud_events"})
        ctx.secrets["cloud_events"] = SecretStr(token)
        register_secret(token)
        sweeper = StragglerSweeper(ctx, ctx.config.sweeps).start()
        try:
            deadline = time.monotonic() + 30
            while len(sweeps(ctx.journal, ctx.run_id)) < 1 and time.monotonic() < deadline:
                time.sleep(0.2)
            forged = requests.post(sweeper.receiver.url, data={"event": "ONCRMLEADADD", "data[FIELDS][ID]": "1",
                                                               "auth[application_token]": "guess"}, timeout=5)
            assert forged.status_code == 401 and sweeper.receiver.rejected == 1
            time.sleep(1.5)
            assert len(sweeps(ctx.journal, ctx.run_id)) == 1  # a forged event wakes nothing
            # a sales manager adds a lead in the cloud: the portal's event wakes a sweep long before 60 min
            from connectors.bitrix24.rest import Bitrix24Client

            cloud = Bitrix24Client(pair.cloud_webhook, name="the cloud portal", timeout=10)
            new_id = cloud.call("crm.lead.add", {"fields": {"TITLE": "made in the cloud after the move"}})["result"]
            deadline = time.monotonic() + 30
            while len(sweeps(ctx.journal, ctx.run_id)) < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            sweeper.stop(final_sweep=False)
        done = sweeps(ctx.journal, ctx.run_id)
        assert len(done) == 2 and sweeper.receiver.received >= 1
        assert _origins(pair.box.store).count(str(new_id)) == 1


def test_an_event_listener_without_its_token_is_refused_at_start():
    from connectors.errors import ConfigError

    raw = {"migration": {"name": "t", "portal": "https://p"}, "sweeps": {"events_listen": "127.0.0.1:99999"}}
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    assert "not host:port" in str(err.value)
    raw["sweeps"]["events_listen"] = "127.0.0.1:8765"
    with pytest.raises(ConfigError, match="events_token_secret"):
        config_from_dict(raw)


def test_a_released_record_is_synced_again_and_starts_with_a_clean_slate(tmp_path, two_way):
    pair, website = two_way
    ctx = _context(tmp_path, pair, sweeps_cfg={"quarantine_changes": 3})
    sweeper = StragglerSweeper(ctx, ctx.config.sweeps)
    _sweep(sweeper, pair, website, 7)
    held = quarantined(ctx.journal, ctx.run_id)["lead"]
    victim = sorted(held, key=int)[0]
    pair.box.portal.remove_outbound_webhooks()  # the customer found the website's loop and stopped it
    # the record changed in the cloud while it was held back: the box still has the old text
    cloud_text = pair.cloud.store.get("lead", int(victim))["COMMENTS"]
    release(ctx.journal, ctx.run_id, "lead", victim, by="Alex")
    assert not [i for i in issues(ctx.journal, ctx.run_id, status="open") if f"lead {victim} " in i.title]
    after = sweeper.sweep_once()
    assert victim not in quarantined(ctx.journal, ctx.run_id).get("lead", set())
    assert not after.newly_quarantined  # its old history does not count against it
    twin = next(r for r in pair.box.store.tables["lead"].values() if str(r.get("ORIGIN_ID")) == victim
                or (r["ID"] == int(victim) and r.get("ORIGINATOR_ID") == "cloud2box"))
    assert twin["COMMENTS"] == cloud_text


def test_sweeps_use_the_backup_marks_step_2_11_journaled(tmp_path):
    """After 2.11 the box holds a moved record dated at the cutoff with a box ID above the backup's:
    read from the box, the backup would look bigger. The sweeps take the marks 2.11 journaled before
    its import, so they move nothing twice and miss nothing."""
    from flows.actions.crm_delta import transfer_crm_delta
    from journal.backup_marks import journaled_marks
    from journal.events import EventKind
    from tests.connectors.bitrix24.crm_helpers import backdate, box_twins, expected_delta

    with start_pair(companies=4, contacts=8, leads=30, deals=8, users=4, tasks=3, limits=FAST) as pair:
        backdate(pair)
        ctx = _context(tmp_path, pair, sweeps_cfg={})
        ctx.step_id = "2.11"
        assert transfer_crm_delta(ctx).evidence["reconciliation_ok"]
        marks = journaled_marks(ctx.journal, ctx.run_id, pair.cutoff)
        ctx.step_id = "3.1"
        sweeper = StragglerSweeper(ctx, ctx.config.sweeps)
        straggler = pair.cloud.store.add("lead", {"TITLE": "straggler", "ASSIGNED_BY_ID": "1"})
        first, second = sweeper.sweep_once(), sweeper.sweep_once()
        assert sweeper.backup_max_ids == {e: m["max_id"] for e, m in marks.items()}
        assert not first.failures and first.created == 1 and second.created == 0
        assert len(ctx.journal.events(ctx.run_id, EventKind.CRM_BACKUP_MARKS)) == 1  # taken once, by 2.11
        want = expected_delta(pair)
        want["lead"].add(str(straggler))
        for entity, ids in want.items():  # (the sweeps' overlap also re-lists backup records changed at the cutoff)
            twins = box_twins(pair, entity)
            assert ids <= set(twins) and set(twins.values()) == {1}, entity

"""The pre-sync (issue 16): the box follows the cloud from 2.5 to 2.10, step 2.11 moves only the rest.

Real parts: two sandbox portals over HTTP (the cloud with the changes made after the backup, the
box as restored), the journal on SQLite, the pre-sync's passes as the flow runs them, step 2.11's
action, and for the kill -9 a pass in a child process. The box is counted independently of the
product's listing code (``box_twins``: the classic list method with offset paging).
"""

from __future__ import annotations

import datetime as dt
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from pydantic import SecretStr

from connectors.secrets import register_secret
from flows.actions import ActionContext
from flows.actions.crm_delta import transfer_crm_delta
from flows.config import config_from_dict
from flows.presync import PreSyncer, lag_section
from journal.events import EventKind
from journal.models import utcnow
from journal.presync import presync_state
from journal.store import Journal
from sandbox.portal import PortalLimits, start_pair
from tests.connectors.bitrix24.crm_helpers import box_twins, expected_delta

ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(companies=5, contacts=10, leads=24, deals=10, users=4, tasks=2)
ENTITIES = ("company", "contact", "lead", "deal")


def _raw(tmp_path: Path, cloud_url: str, box_url: str, cutoff: str, presync: dict) -> dict:
    return {"migration": {"name": "t", "portal": cloud_url, "box_portal": box_url},
            "journal": {"url": f"sqlite:///{tmp_path / 'journal.db'}", "out_dir": str(tmp_path / "out")},
            "crm_delta": {"cutoff": cutoff, "max_attempts": 2, "timeout_s": 10, "rate": 150, "burst": 40,
                          "box_rate": 150, "box_burst": 40},
            "presync": presync,
            "notices": {"dry_run": True, "out_dir": str(tmp_path / "notices")},
            "secrets": {"cloud_webhook": {"env": "X_CLOUD"}, "box_webhook": {"env": "X_BOX"}}}


def _context(tmp_path: Path, pair, *, presync: dict | None = None, step_id: str = "2.5", run_id: str | None = None,
             cloud_webhook: str | None = None) -> ActionContext:
    config = config_from_dict(_raw(tmp_path, pair.cloud.base_url, pair.box.base_url, pair.cutoff.isoformat(),
                                   presync or {}), source="test.toml")
    secrets = {"cloud_webhook": SecretStr(cloud_webhook or pair.cloud_webhook),
               "box_webhook": SecretStr(pair.box_webhook)}
    for s in secrets.values():
        register_secret(s.get_secret_value())
    journal = Journal(config.journal.url)
    if run_id is None:
        run, _ = journal.open_run(name="t", portal=pair.cloud.base_url, mode="cutover", timezone="UTC",
                                  config_snapshot={})
        run_id = run.id
    return ActionContext(config=config, secrets=secrets, journal=journal, run_id=run_id, step_id=step_id,
                         mode="cutover", work_dir=tmp_path / "work")


def _each_once(pair, expected: dict[str, set[str]]) -> None:
    """Every expected cloud record has exactly one twin on the box, and no cloud ID has two."""
    for entity in ENTITIES:
        twins = box_twins(pair, entity)
        assert all(n == 1 for n in twins.values()), {k: n for k, n in twins.items() if n > 1}
        missing = expected.get(entity, set()) - set(twins)
        assert not missing, (entity, sorted(missing))


def _a_seller(pair) -> dict:
    u = pair.dataset.users[1]
    return {"CREATED_BY_ID": u["ID"], "MODIFY_BY_ID": u["ID"], "ASSIGNED_BY_ID": u["ID"]}


def test_the_box_follows_the_cloud_and_the_freeze_moves_only_the_rest(tmp_path):
    with start_pair(**SMALL, limits=PortalLimits.free(rate=200.0, burst=50)) as pair:
        # the customer's own test data on the box (2.8): the pre-sync must neither touch nor export it
        box_test = pair.box.store.add("lead", {"TITLE": "2.8 test lead", "NAME": "Test", "ASSIGNED_BY_ID": "1"})
        box_test_before = dict(pair.box.store.get("lead", box_test))
        ctx = _context(tmp_path, pair, presync={"deleted_scan_minutes": 0, "overlap_seconds": 5})
        syncer = PreSyncer(ctx, ctx.config.presync)

        first = syncer.sweep_once()  # the catch-up: everything since the backup
        assert first is not None and first.stopped is None and not first.failures, first
        assert first.reconciliation["ok"] and first.moved > 0
        _each_once(pair, expected_delta(pair))

        # the sales team goes on in the cloud: a new lead; a backup lead changed twice, a pass between
        seller = _a_seller(pair)
        new_lead = pair.cloud.store.add("lead", {"TITLE": "made while the box is tested", **seller})
        max_lead = int(ctx.journal.events(ctx.run_id, EventKind.CRM_BACKUP_MARKS)[-1].data["entities"]["lead"]["max_id"])
        deleted = {str(c.record_id) for c in pair.dataset.changes if c.kind == "delete"}
        backup_lead = next(rid for rid in sorted(pair.cloud.store.tables["lead"]) if rid <= max_lead
                           and str(rid) not in deleted)
        pair.cloud.store.update("lead", backup_lead, {"TITLE": "first change", **seller})
        second = syncer.sweep_once()
        assert second.created >= 1 and second.updated >= 1 and second.reconciliation["ok"]
        pair.cloud.store.update("lead", backup_lead, {"TITLE": "second change", **seller})
        third = syncer.sweep_once()
        assert third.updated >= 1
        assert pair.box.store.get("lead", backup_lead)["TITLE"] == "second change"

        # deleted in the cloud: a backup lead and a lead the pre-sync moved; listed, never deleted on the box
        pair.cloud.store.delete("lead", backup_lead)
        pair.cloud.store.delete("lead", new_lead)
        fourth = syncer.sweep_once()
        listed = set(fourth.deleted_in_cloud["lead"])
        assert {str(backup_lead), str(new_lead)} <= listed
        assert pair.box.store.get("lead", backup_lead) is not None
        assert str(new_lead) in box_twins(pair, "lead")

        # the box's test data: untouched, never sent to the cloud
        assert pair.box.store.get("lead", box_test) == box_test_before
        assert not [r for r in pair.cloud.store.tables["lead"].values() if r.get("TITLE") == "2.8 test lead"]

        # the prompt tells how far behind the box is, and forecasts the freeze
        pair.cloud.store.add("lead", {"TITLE": "the last lead before the stop", **seller})
        text = lag_section(ctx, ctx.config.presync, now=utcnow(), forecast_p90_factor=1.25)
        assert "4 pass(es)" in text and "behind" in text and "Step 2.11" in text and "cloud2box" in text

        # 2.10 confirmed; 2.11 moves what changed since the last pass, then proves the whole delta
        freeze = transfer_crm_delta(_context(tmp_path, pair, step_id="2.11", run_id=ctx.run_id,
                                             presync={"overlap_seconds": 5}))
        ev = freeze.evidence
        assert ev["presync"]["passes"] == 4 and ev["reconciliation_ok"]
        assert dt.datetime.fromisoformat(ev["since"]) > pair.cutoff
        assert freeze.counters.records < first.records, (freeze.counters.records, first.records)
        assert {str(backup_lead), str(new_lead)} <= set(ev["deleted_in_cloud"]["lead"])
        state = presync_state(ctx.journal, ctx.run_id)
        assert state.good_passes == 4
        everything = expected_delta(pair)
        everything["lead"] |= {str(r) for r, v in pair.cloud.store.tables["lead"].items()
                               if v.get("TITLE") == "the last lead before the stop"}
        _each_once(pair, everything)


def test_a_pass_refused_by_the_budget_and_a_failed_pass_leave_2_11_the_whole_delta(tmp_path):
    with start_pair(**SMALL, limits=PortalLimits.free(rate=200.0, burst=50)) as pair:
        ctx = _context(tmp_path, pair, presync={"requests_per_sweep": 10})
        refused = PreSyncer(ctx, ctx.config.presync).sweep_once()
        assert refused.stopped and "request budget (10)" in refused.stopped
        assert ctx.journal.events(ctx.run_id, EventKind.PRESYNC_ALERT)
        assert list((tmp_path / "out" / "alerts" / ctx.run_id).glob("*-sync-alert.md"))
        # a pass that cannot reach the cloud (a revoked webhook): journaled, alerted, nothing raised
        # a random code: a registered secret is masked everywhere in the process (a run of zeros would be too)
        revoked = secrets.token_hex(8)
        broken = _context(tmp_path, pair, run_id=ctx.run_id, cloud_webhook=pair.cloud_webhook.replace(
            pair.cloud_webhook.rstrip("/").rsplit("/", 1)[-1], revoked))
        assert PreSyncer(broken, broken.config.presync).sweep_once() is None
        failed = [e for e in ctx.journal.events(ctx.run_id, EventKind.PRESYNC_ALERT) if "failed" in e.message]
        assert failed and revoked not in failed[-1].message
        state = presync_state(ctx.journal, ctx.run_id)
        assert not state.usable and state.resume_from == pair.cutoff

        result = transfer_crm_delta(_context(tmp_path, pair, step_id="2.11", run_id=ctx.run_id))
        assert result.evidence["presync"] is None and result.evidence["since"] == pair.cutoff.isoformat()
        assert result.evidence["reconciliation_ok"]
        assert any("whole delta" in e.message for e in ctx.journal.events(ctx.run_id, EventKind.PRESYNC_ALERT))
        _each_once(pair, expected_delta(pair))


CHILD = r"""
import sys
from pathlib import Path

from pydantic import SecretStr

from connectors.bitrix24 import rest
from flows.actions import ActionContext
from flows.config import config_from_dict
from flows.presync import PreSyncer
from journal.store import Journal
from tests.flows.test_presync import _raw

cloud_url, box_url, cloud_base, box_base, cutoff, tmp, run_id = sys.argv[1:8]
send = rest.Bitrix24Client._once


def watched(self, method, params, *, idempotent):
    if not idempotent:  # a write to the box: say so and wait to be killed (or told to go on)
        print("WRITE " + method, flush=True)
        if sys.stdin.readline().strip() != "go":
            sys.exit(3)
    return send(self, method, params, idempotent=idempotent)


rest.Bitrix24Client._once = watched
config = config_from_dict(_raw(Path(tmp), cloud_base, box_base, cutoff, {}), source="test.toml")
ctx = ActionContext(config=config, secrets={"cloud_webhook": SecretStr(cloud_url), "box_webhook": SecretStr(box_url)},
                    journal=Journal(config.journal.url), run_id=run_id, step_id="2.6", mode="cutover",
                    work_dir=Path(tmp) / "work")
PreSyncer(ctx, config.presync).sweep_once()
print("DONE", flush=True)
"""


def _pass_killed_at_write(pair, tmp_path: Path, run_id: str, kill_at: int) -> int:
    """One pre-sync pass in a child process, SIGKILLed at its write number ``kill_at`` to the box.
    Returns the writes it reached. Every wait is bounded."""
    args = [sys.executable, "-c", CHILD, pair.cloud_webhook, pair.box_webhook, pair.cloud.base_url,
            pair.box.base_url, pair.cutoff.isoformat(), str(tmp_path), run_id]
    proc = subprocess.Popen(args, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout] + [lines.put(None)], daemon=True).start()
    writes = 0
    try:
        for _ in range(10_000):
            line = lines.get(timeout=120)
            assert line is not None and not line.startswith("DONE"), proc.stderr.read()[-3000:]
            if not line.startswith("WRITE "):
                continue
            if writes == kill_at:
                proc.send_signal(signal.SIGKILL)
                break
            writes += 1
            proc.stdin.write("go\n")
            proc.stdin.flush()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return writes


@pytest.mark.parametrize("kill_at", [0, 3])
def test_a_pass_killed_with_kill_9_is_finished_by_the_next_one(tmp_path, kill_at):
    with start_pair(**SMALL, limits=PortalLimits.free(rate=200.0, burst=50)) as pair:
        ctx = _context(tmp_path, pair, step_id="2.6")
        assert _pass_killed_at_write(pair, tmp_path, ctx.run_id, kill_at) == kill_at
        assert not ctx.journal.events(ctx.run_id, EventKind.PRESYNC), "a killed pass journals nothing"
        nxt = PreSyncer(ctx, ctx.config.presync).sweep_once()
        assert nxt.stopped is None and not nxt.failures and nxt.reconciliation["ok"]
        _each_once(pair, expected_delta(pair))
        freeze = transfer_crm_delta(_context(tmp_path, pair, step_id="2.11", run_id=ctx.run_id))
        assert freeze.evidence["presync"]["passes"] == 1 and freeze.evidence["reconciliation_ok"]
        _each_once(pair, expected_delta(pair))


def test_the_stop_cuts_a_running_pass_short_and_2_11_moves_from_the_last_finished_one(tmp_path):
    import time

    with start_pair(**SMALL, limits=PortalLimits.free(rate=200.0, burst=50)) as pair:
        ctx = _context(tmp_path, pair, presync={"interval_minutes": 60, "quarantine_window_minutes": 600})
        syncer = PreSyncer(ctx, ctx.config.presync).start()  # the first pass starts at once
        deadline = time.monotonic() + 120
        while not ctx.journal.events(ctx.run_id, EventKind.PRESYNC) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert presync_state(ctx.journal, ctx.run_id).good_passes == 1
        seller = _a_seller(pair)
        late = [pair.cloud.store.add("lead", {"TITLE": f"late lead {n}", **seller}) for n in range(6)]
        pair.box.portal.limits.write_latency_s = 0.4  # a slow box: the next pass is still writing at the stop
        writes0 = pair.box.portal.requests
        syncer.trigger()
        while pair.box.portal.requests == writes0 and time.monotonic() < deadline:
            time.sleep(0.05)
        syncer.halt("the users stopped in the cloud (step 2.10 confirmed): the pre-sync ends")
        t0 = time.monotonic()
        syncer.stop(wait_s=60)
        assert time.monotonic() - t0 < 30, "a running pass ends at its next request, not at its end"
        done = ctx.journal.events(ctx.run_id, EventKind.PRESYNC)
        assert len(done) == 2 and "the users stopped" in done[-1].data["stopped"]
        assert not list((tmp_path / "out" / "alerts" / ctx.run_id).glob("*-sync-alert.md")), "a stop is no alarm"
        pair.box.portal.limits.write_latency_s = 0.0

        freeze = transfer_crm_delta(_context(tmp_path, pair, step_id="2.11", run_id=ctx.run_id))
        assert freeze.evidence["presync"]["good_passes"] == 1 and freeze.evidence["reconciliation_ok"]
        expected = expected_delta(pair)
        expected["lead"] |= {str(r) for r in late}
        _each_once(pair, expected)


def test_the_freeze_proves_presence_only_above_the_passes_marks(tmp_path):
    """Item 6: the passes prove every record created since the backup present on the box up to their
    marks; the freeze lists only what came after them, so its reads do not grow with the gap
    (counted by the portals: rows their list calls returned)."""
    with start_pair(**SMALL, limits=PortalLimits.free(rate=200.0, burst=50)) as pair:
        seller = _a_seller(pair)
        # made days before the stop (the passes list changes by time; the team's last minutes are recent)
        gap = [pair.cloud.store.add("lead", {"TITLE": f"made in the gap {i}", **seller},
                                    now=pair.cutoff + dt.timedelta(minutes=1 + i)) for i in range(300)]
        ctx = _context(tmp_path, pair, presync={"deleted_scan_minutes": 60, "overlap_seconds": 5})
        syncer = PreSyncer(ctx, ctx.config.presync)
        catch_up = syncer.sweep_once()
        assert catch_up.reconciliation["ok"] and catch_up.proven["lead"]["cloud"] >= max(gap)
        pair.cloud.store.add("lead", {"TITLE": "made while the box is tested", **seller})
        steady = syncer.sweep_once()
        assert steady.reconciliation["ok"] and steady.proven["lead"]["cloud"] > catch_up.proven["lead"]["cloud"]
        last = [pair.cloud.store.add("lead", {"TITLE": f"made before the stop {i}", **seller}) for i in range(2)]

        read0 = pair.cloud.store.rows_listed + pair.box.store.rows_listed
        freeze = transfer_crm_delta(_context(tmp_path, pair, step_id="2.11", run_id=ctx.run_id,
                                             presync={"overlap_seconds": 5}))
        read = pair.cloud.store.rows_listed + pair.box.store.rows_listed - read0
        ev = freeze.evidence
        assert ev["reconciliation_ok"] and ev["presync"]["proven"] == steady.proven
        assert read < len(gap) / 3, f"the freeze read {read} rows for a gap of {len(gap)} leads"
        expected = expected_delta(pair)
        expected["lead"] |= {str(r) for r in [*gap, *last]}
        _each_once(pair, expected)

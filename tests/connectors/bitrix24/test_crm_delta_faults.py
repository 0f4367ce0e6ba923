"""Issue 13: no write of step 2.11 is ever duplicated or lost — against a slow box, client timeouts
shorter than a batch, limits inside batches, and kill -9 at every write boundary.

Real parts: the sandbox cloud and box portals over loopback HTTP, the journal on SQLite, the step's
action in a process of its own that is killed. What the box holds is counted per ORIGIN_ID through its REST
API with the classic list method (``box_twins``), not with the product's listing code.
"""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from checklists.verify import VerifyAccess
from connectors.bitrix24.checks import check_crm_counts
from connectors.bitrix24.delta import backup_marks, export_delta
from connectors.bitrix24.importer import import_delta, map_users
from connectors.bitrix24.reconcile import reconcile
from connectors.secrets import register_secret
from flows.actions import ActionContext
from flows.actions.crm_delta import transfer_crm_delta
from journal.backup_marks import journaled_marks
from journal.events import EventKind
from journal.store import Journal
from tests.flows.actions.helpers import action_config

from .crm_helpers import FAST, backdate, box_twins, clients, expected_delta, idmap, make_pair
from .killed_step import fork_context, run_step

ENTITIES = ("company", "contact", "lead", "deal")
SMALL = dict(companies=10, contacts=20, leads=40, deals=20, post_fraction=0.25)


def assert_each_moved_once(pair) -> dict[str, int]:
    """Every record the cloud created or changed since the backup has exactly one twin on the box,
    and the box holds no other migrated record; returns the twins counted per entity."""
    want = expected_delta(pair)
    seen = {}
    for entity in ENTITIES:
        twins = box_twins(pair, entity)
        duplicates = sorted((c for c, n in twins.items() if n > 1), key=int)
        missing = sorted(want[entity] - set(twins), key=int)
        extra = sorted(set(twins) - want[entity], key=int)
        assert (duplicates, missing, extra) == ([], [], []), entity
        seen[entity] = sum(twins.values())
    return seen


def _ctx(pair, tmp_path: Path, journal: Journal, run_id: str, **section) -> ActionContext:
    config = action_config(crm_delta={"rate": 150, "burst": 40, "box_rate": 150, "box_burst": 40,
                                      "cutoff": pair.cutoff.isoformat(), **section},
                           migration={"name": "acme", "portal": "http://127.0.0.1"})
    for url in (pair.cloud_webhook, pair.box_webhook):
        register_secret(url)
    secrets = {"cloud_webhook": SecretStr(pair.cloud_webhook), "box_webhook": SecretStr(pair.box_webhook)}
    return ActionContext(config=config, secrets=secrets, journal=journal, run_id=run_id, step_id="2.11",
                         mode="rehearsal", work_dir=tmp_path)


def _journal(db: Path) -> tuple[Journal, str]:
    journal = Journal(f"sqlite:///{db}")
    run, _ = journal.open_run(name="acme", portal="http://127.0.0.1", mode="rehearsal", timezone="UTC",
                              config_snapshot={})
    return journal, run.id


# --- defect 1: the backup's marks are taken once, before the import, and journaled ------------

def test_reruns_checks_and_marks_use_what_the_journal_kept(tmp_path):
    pair = make_pair(**SMALL)
    try:
        refused, kept = backdate(pair)
        journal, run_id = _journal(tmp_path / "journal.db")
        first = transfer_crm_delta(_ctx(pair, tmp_path, journal, run_id))
        marks = journaled_marks(journal, run_id, pair.cutoff)
        assert {e: marks[e] for e in ENTITIES} == {e: {"max_id": max(pair.dataset.backup[e]),
                                                       "count": len(pair.dataset.backup[e])} for e in ENTITIES}
        timeline = pair.dataset.timeline  # and the timeline's and the smart processes' marks, taken alike
        assert marks["activity"]["max_id"] == max(a["ID"] for a in timeline.activities)
        assert marks["product"]["max_id"] == max(p["ID"] for p in timeline.products)
        assert any(k.startswith("dynamic:") and m["count"] > 0 for k, m in marks.items())
        assert first.evidence["reconciliation_ok"] and first.evidence["backup_marks"] == marks
        victim = [str(c.record_id) for c in pair.dataset.changes if c.kind == "delete"]
        assert first.evidence["deleted_in_cloud"] == {"lead": victim}
        # the box refused the first one's creation time: moved anyway, dated by the box, and listed
        assert first.evidence["reconciliation"]["lead"]["creation_time_not_kept"] == [refused]
        assert first.evidence["import"]["lead"]["creation_time_not_kept"] == [refused]
        assert_each_moved_once(pair)

        # what the box tells now is no longer the backup: the moved copy dated at the cutoff counts
        cloud, box = clients(pair)
        assert backup_marks(box, pair.cutoff)["lead"]["max_id"] > marks["lead"]["max_id"]
        assert backup_marks(box, pair.cutoff, skip_ours=True) == {e: marks[e] for e in ENTITIES}  # an old journal's way out

        # re-runs of 2.11 read the journal: no migrated copy is "deleted in the cloud", nothing moves again
        for _ in range(2):
            again = transfer_crm_delta(_ctx(pair, tmp_path, journal, run_id))
            assert again.evidence["deleted_in_cloud"] == {"lead": victim}
            assert again.counters.created == 0 and again.evidence["reconciliation_ok"]
        assert len(journal.events(run_id, EventKind.CRM_BACKUP_MARKS)) == 1  # taken once
        assert_each_moved_once(pair)

        # crm-counts: with the journaled marks no false fire; read from the box now it would cry wolf
        access = VerifyAccess(cloud=cloud, box=box, cutoff=pair.cutoff, delta_moved=True, backup_marks=marks)
        ok, summary, evidence, items = check_crm_counts(access)
        assert ok, (summary, items)
        assert evidence["lead"]["backup_max_id"] == marks["lead"]["max_id"]
        assert evidence["lead"]["backup_records"] == marks["lead"]["count"]
        naive = dataclasses.replace(access, backup_marks=None, delta_moved=False)
        ok, summary, _, _ = check_crm_counts(naive)
        assert not ok and "2 lead(s) of the backup missing on the box" in summary  # the false fire of issue 13
        assert check_crm_counts(dataclasses.replace(naive, delta_moved=True))[0]  # an old journal: ours left out
    finally:
        pair.close()


def test_the_reconciliation_fails_loudly_on_a_record_the_export_never_listed(tmp_path):
    pair = make_pair(**SMALL)
    try:
        cloud, box = clients(pair)
        marks = backup_marks(box, pair.cutoff)
        max_ids = {e: m["max_id"] for e, m in marks.items()}
        delta = export_delta(cloud, box, pair.cutoff, max_ids=max_ids, extras=False)  # the records alone
        rows = delta.entities["lead"].rows
        created = sorted((c for c, k in delta.entities["lead"].kind.items() if k == "created"),
                         key=lambda c: (rows[c]["DATE_CREATE"], int(c)))
        skipped = {c: rows.pop(c) for c in (created[0], created[-1])}  # as a listing that missed them
        for c in skipped:
            del delta.entities["lead"].kind[c]
        m = idmap(tmp_path)
        users = map_users(cloud, box)
        import_delta(box, delta, m, user_map=users)
        assert reconcile(box, delta, m, user_map=users).ok  # the delta alone cannot see them …
        rec = reconcile(box, delta, m, user_map=users, cloud=cloud)  # … the cloud, listed anew, can
        assert not rec.ok and sorted(rec.entities["lead"].not_moved, key=int) == sorted(skipped, key=int)
        assert rec.without_twin == 2
        # step 2.11 moves both: the newest keeps its creation time; the oldest is older than leads the
        # box already holds (imports go in ascending creation time), so it takes the box's time, listed
        journal, run_id = _journal(tmp_path / "journal.db")
        result = transfer_crm_delta(_ctx(pair, tmp_path, journal, run_id))
        twins = box_twins(pair, "lead")
        assert twins[created[-1]] == 1 and twins[created[0]] == 1
        assert result.evidence["reconciliation_ok"]
        assert result.evidence["reconciliation"]["lead"]["creation_time_not_kept"] == [created[0]]
        [event] = journal.events(run_id, EventKind.CRM_RECONCILIATION)
        assert event.data["ok"] and event.data["lead"]["missing"] == []
    finally:
        pair.close()


# --- defect 2: a slow box and client timeouts shorter than a batch ------------------------------

@pytest.mark.parametrize("batch_import", [True, False])
@pytest.mark.parametrize("when", ["from the start", "halfway"])
def test_a_slow_box_behind_short_timeouts_gets_each_record_once(tmp_path, batch_import, when):
    """The box saves a record every 20 ms — from the start, or only once it is halfway (after the
    importer has learnt how fast it was); the client waits 0.6 s for an answer, less than one
    request's worth of writes: requests time out while the box goes on writing their records."""
    pair = make_pair(companies=150, contacts=40, leads=300, deals=60, post_fraction=0.3)
    try:
        cloud, _ = clients(pair)
        _, box = clients(pair, timeout=0.6)
        limits = pair.box.portal.limits
        if when == "from the start":
            limits.write_latency_s = 0.02
        else:
            batch = box.batch

            def slowing(cmd, **kw):  # the box gets slow after the companies
                if any("entityTypeId=3" in c or "crm.contact." in c for c in cmd.values()):
                    limits.write_latency_s = 0.02
                return batch(cmd, **kw)

            box.batch = slowing
        marks = backup_marks(box, pair.cutoff)
        delta = export_delta(cloud, box, pair.cutoff, max_ids={e: m["max_id"] for e, m in marks.items()})
        m = idmap(tmp_path)
        users = map_users(cloud, box)
        report = import_delta(box, delta, m, user_map=users, use_batch_import=batch_import)
        assert report.unknown_outcomes >= 1, "no request timed out: the test did not test anything"
        assert not report.failures
        counted = assert_each_moved_once(pair)
        assert reconcile(box, delta, m, user_map=users, cloud=cloud).ok
        print(f"\nslow box {when} ({report.method}): {report.unknown_outcomes} timed-out write(s), "
              f"{report.settle_s:.1f} s waiting for them to end, {report.rounds} round(s); twins {counted}, "
              f"0 duplicates, 0 missing")
    finally:
        pair.close()


# --- defect 4: limits inside a batch --------------------------------------------------------------

_FAULT = st.tuples(st.sampled_from(["cloud", "box"]),
                   st.sampled_from(["crm.lead.list", "crm.contact.list", "crm.item.batchimport", "crm.lead.add",
                                    "crm.deal.update", "crm.company.list"]),
                   st.integers(1, 3), st.sampled_from(["OPERATION_TIME_LIMIT", "INTERNAL_SERVER_ERROR"]))


@settings(max_examples=10, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(faults=st.lists(_FAULT, min_size=1, max_size=3), batch_import=st.booleans())
def test_faults_inside_batches_neither_duplicate_nor_lose(tmp_path_factory, faults, batch_import):
    """A limit or an error on single commands inside a batch (HTTP 200, ``result_error``), wherever
    it lands: listings wait it out, writes refused by a limit are planned again, writes that may
    have run are resolved on the box first."""
    tmp_path = tmp_path_factory.mktemp("faults")
    pair = make_pair(**SMALL, batch_import=batch_import)
    try:
        for side, method, times, kind in faults:
            getattr(pair, side).faults.inject(kind, times=times, method=method, reset_in=0.2)
        cloud, box = clients(pair, timeout=5)
        marks = backup_marks(box, pair.cutoff)
        delta = export_delta(cloud, box, pair.cutoff, max_ids={e: m["max_id"] for e, m in marks.items()})
        assert {e: set(d.rows) for e, d in delta.entities.items()} == expected_delta(pair)
        m = idmap(tmp_path)
        users = map_users(cloud, box)
        report = import_delta(box, delta, m, user_map=users, use_batch_import=batch_import, settle_quiet_s=0.5)
        assert not report.failures
        assert_each_moved_once(pair)
        assert reconcile(box, delta, m, user_map=users, cloud=cloud).ok
    finally:
        pair.close()


def test_the_operating_limit_running_out_in_the_middle_of_a_batch_is_waited_out(tmp_path):
    """The portal's own accounting: a method that used up its operating time is refused, command
    by command, until operating_reset_at; the pages before it count, the listing goes on after."""
    # any operating time used up the method's limit: in every batch the first command runs and the
    # second is refused, until the window has passed
    tight = dataclasses.replace(FAST, operating_limit_s=1e-9, operating_window_s=0.3)
    pair = make_pair(companies=5, contacts=5, leads=300, deals=5, limits=tight)
    try:
        cloud, _ = clients(pair)
        refused = []
        batch = cloud.batch

        def watching(cmd, **kw):  # batches whose first page came and whose second was refused
            res = batch(cmd, **kw)
            if "p0" in res["result"] and (res["result_error"].get("p1") or {}).get("error") == "OPERATION_TIME_LIMIT":
                refused.append(res)
            return res

        cloud.batch = watching
        from connectors.bitrix24.lists import iter_rows

        ids = [int(r["ID"]) for r in iter_rows(cloud, "crm.lead.list", select=["ID", "TITLE"])]
        assert ids == pair.cloud.store.ids["lead"]
        assert len(refused) >= 5  # one page per batch, then the refusal: the page counts, the list goes on
        assert cloud.waited_s > 0
    finally:
        pair.close()


# --- kill -9 at every write boundary (defect 3 among them: between batchImport and its add) -----

_FORKS = fork_context()


def _run_killed(pair, db: Path, kill_at: int | None, *, batch_import: bool = True) -> tuple[list[str], bool]:
    """Step 2.11 in a process of its own (killed_step.py: forked from a server that imported the
    product once), SIGKILLed at write boundary number ``kill_at`` (None: never). Returns the
    boundaries it reached and whether it was killed. Every wait is bounded."""
    ours, theirs = _FORKS.Pipe()
    proc = _FORKS.Process(target=run_step, daemon=True,
                          args=(theirs, pair.cloud_webhook, pair.box_webhook, pair.cutoff.isoformat(), str(db),
                                str(db.parent), batch_import))
    proc.start()
    theirs.close()
    seen: list[str] = []
    killed, error = False, None
    try:
        for _ in range(10_000):
            assert ours.poll(120), f"step 2.11 went silent after {seen[-1:]}"
            try:
                kind, text = ours.recv()
            except EOFError:  # it died without a word: its exit code tells
                break
            if kind != "boundary":
                error = text if kind == "error" else None
                break
            seen.append(text)
            if kill_at is not None and len(seen) - 1 == kill_at:
                proc.kill()  # SIGKILL
                killed = True
                break
            ours.send("go")
        proc.join(timeout=60)
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=30)
        ours.close()
    if killed:
        assert proc.exitcode == -signal.SIGKILL
    else:
        assert error is None and proc.exitcode == 0, error or f"exit code {proc.exitcode}"
    return seen, killed


def _finish_and_check(pair, tmp_path: Path, db: Path) -> dict:
    """Step 2.11 once more, to the end: it must reconcile; then the box is counted independently."""
    journal, run_id = _journal(db)
    result = transfer_crm_delta(_ctx(pair, tmp_path, journal, run_id))
    assert result.evidence["reconciliation_ok"]
    assert result.evidence["deleted_in_cloud"] == {"lead": [str(c.record_id) for c in pair.dataset.changes
                                                            if c.kind == "delete"]}
    assert len(journal.events(run_id, EventKind.CRM_BACKUP_MARKS)) == 1
    return assert_each_moved_once(pair)


def _kill_pair():
    pair = make_pair(companies=8, contacts=16, leads=40, deals=16, post_fraction=0.25)
    backdate(pair)
    return pair


def test_kill_at_every_write_boundary_then_rerun(tmp_path):
    """Every boundary of a full run of step 2.11 — before and after each write request to the box,
    i.e. between a box write and the map write, between batchImport and its add fallback, between
    that and the re-dated add — gets a kill -9; the next run neither duplicates nor loses a record."""
    pair = _kill_pair()
    try:
        boundaries, killed = _run_killed(pair, tmp_path / "dry.db", None)
    finally:
        pair.close()
    assert not killed and len(boundaries) >= 10
    # the defect-3 window is among them: the leads' batchImport answered, its add fallback not yet sent
    fallback = boundaries.index("before crm.lead.add")
    assert boundaries[fallback - 1] == "after crm.item.batchImport"
    results = []
    for k in range(len(boundaries)):
        pair = _kill_pair()
        try:
            db = tmp_path / f"kill-{k}" / "journal.db"
            db.parent.mkdir()
            reached, killed = _run_killed(pair, db, k)
            assert killed and reached == boundaries[:k + 1]
            results.append((reached[-1], _finish_and_check(pair, tmp_path / f"kill-{k}", db)))
        finally:
            pair.close()
    print(f"\nkill -9 at each of {len(boundaries)} write boundaries, then a re-run: 0 duplicates, 0 missing, "
          f"reconciliation OK every time; twins per run {results[0][1]}")


@settings(max_examples=6, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(kills=st.lists(st.integers(0, 24), min_size=1, max_size=3), batch_import=st.booleans())
def test_kills_in_a_row_wherever_they_land(tmp_path_factory, kills, batch_import):
    """Several runs of step 2.11 killed one after the other, wherever hypothesis lands them (a kill
    past the end of a run lets it finish), then one run to the end."""
    tmp_path = tmp_path_factory.mktemp("kills")
    db = tmp_path / "journal.db"
    pair = _kill_pair()
    try:
        for k in kills:
            _run_killed(pair, db, k, batch_import=batch_import)
        _finish_and_check(pair, tmp_path, db)
    finally:
        pair.close()

"""The hash chain detects edited, deleted, reordered and smuggled-in journal entries."""

from __future__ import annotations

import sqlite3

import pytest

from journal.chain import GENESIS, verify_run
from journal.store import Journal
from journal.triage import report_issue, resolve_issue


@pytest.fixture
def journal(tmp_path):
    return Journal(f"sqlite:///{tmp_path / 'journal.db'}")


def _fill(journal: Journal) -> str:
    run, _ = journal.open_run(name="acme", portal="https://acme.example.invalid", mode="rehearsal",
                              timezone="Europe/Berlin", config_snapshot={})
    journal.add_event(run.id, "start", "rehearsal started")
    for seq, step in enumerate(["1.1", "1.2", "2.1"]):
        ex = journal.start_step(run.id, step_id=step, phase=int(step[0]), seq=seq, title=f"step {step}",
                                owner="contractor", urgency="medium", action="manual", planned_duration_s=60,
                                planned_start=None)
        journal.finish_step(ex, outcome="done", actor="Alex", notes=f"did {step}", evidence={"sha256": "ab" * 32})
    journal.record_signoff(run.id, phase=1, signer="Dana", role="CEO", decision="approve", comment="ok")
    issue = report_issue(journal, run.id, title="links without domain in notifications", reported_by="Dana")
    resolve_issue(journal, issue.id, resolved_by="Alex", resolution="domain set")
    journal.add_event(run.id, "note", "second event")
    journal.finish_run(run.id, "completed")
    return run.id


def _sql(journal: Journal, statement: str, *params) -> None:
    db = journal.url.split("///", 1)[1]
    with sqlite3.connect(db) as conn:
        conn.execute(statement, params)


def test_untouched_journal_verifies(journal):
    run_id = _fill(journal)
    result = verify_run(journal, run_id)
    assert result.ok, result.summary()
    assert result.entries >= 15
    assert result.head_hash != GENESIS and len(result.head_hash) == 64
    assert "intact" in result.summary()


def test_edited_step_is_named(journal):
    run_id = _fill(journal)
    _sql(journal, "UPDATE c2b_step_executions SET actor = 'Mallory' WHERE step_id = '1.2'")
    result = verify_run(journal, run_id)
    assert not result.ok
    first = result.first_broken
    assert first.kind == "edited" and first.table == "c2b_step_executions"
    assert "step 1.2" in first.message and "edited" in first.message
    assert [p.kind for p in result.problems] == ["edited"]


def test_edited_signoff_and_json_evidence(journal):
    run_id = _fill(journal)
    _sql(journal, "UPDATE c2b_step_executions SET evidence = '{\"sha256\": \"00\"}' WHERE step_id = '2.1'")
    _sql(journal, "UPDATE c2b_signoffs SET decision = 'reject'")
    kinds = {(p.kind, p.table) for p in verify_run(journal, run_id).problems}
    assert kinds == {("edited", "c2b_step_executions"), ("edited", "c2b_signoffs")}


def test_deleted_event_is_named(journal):
    run_id = _fill(journal)
    _sql(journal, "DELETE FROM c2b_events WHERE message = 'second event'")
    result = verify_run(journal, run_id)
    assert [p.kind for p in result.problems] == ["deleted"]
    assert "event" in result.first_broken.message and "deleted" in result.first_broken.message


def test_deleted_chain_entry_breaks_the_links(journal):
    run_id = _fill(journal)
    _sql(journal, "DELETE FROM c2b_chain WHERE seq = 5")
    result = verify_run(journal, run_id)
    assert not result.ok
    assert result.first_broken.kind == "link-broken" and result.first_broken.seq == 6


def test_reordered_entries_are_detected(journal):
    run_id = _fill(journal)
    # Swap the order of two events (their times): each row now differs from what was chained.
    db = journal.url.split("///", 1)[1]
    with sqlite3.connect(db) as conn:
        (t_start,), (t_note,) = conn.execute("SELECT at FROM c2b_events WHERE kind IN ('start', 'note') ORDER BY id")
        conn.execute("UPDATE c2b_events SET at = ? WHERE kind = 'start'", (t_note,))
        conn.execute("UPDATE c2b_events SET at = ? WHERE kind = 'note'", (t_start,))
    result = verify_run(journal, run_id)
    assert {p.kind for p in result.problems} == {"edited"} and len(result.problems) == 2


def test_reordered_chain_entries_are_detected(journal):
    run_id = _fill(journal)
    _sql(journal, "UPDATE c2b_chain SET seq = CASE seq WHEN 3 THEN 4 ELSE 3 END WHERE seq IN (3, 4)")
    result = verify_run(journal, run_id)
    assert not result.ok and result.first_broken.kind == "link-broken" and result.first_broken.seq == 3


def test_row_inserted_behind_the_journals_back(journal):
    run_id = _fill(journal)
    _sql(journal, "INSERT INTO c2b_signoffs (run_id, phase, signer, role, decision, signed_at) "
                  "VALUES (?, 2, 'Mallory', 'CEO', 'approve', '2026-01-01 00:00:00')", run_id)
    result = verify_run(journal, run_id)
    assert [p.kind for p in result.problems] == ["unchained"]
    assert "sign-off" in result.problems[0].message


def test_runs_have_separate_chains(journal):
    first = _fill(journal)
    second = _fill(journal)
    _sql(journal, "UPDATE c2b_events SET message = 'changed' WHERE run_id = ? AND kind = 'start'", first)
    assert not verify_run(journal, first).ok
    assert verify_run(journal, second).ok


def test_many_journals_in_threads_stay_chained(tmp_path):
    """A Journal per task, in threads, with garbage collection: no write may escape the chain."""
    import gc
    import threading

    url = f"sqlite:///{tmp_path / 'journal.db'}"
    run, _ = Journal(url).open_run(name="acme", portal="https://acme.example.invalid", mode="rehearsal",
                                   timezone="UTC", config_snapshot={})

    def worker(k: int) -> None:
        for i in range(15):
            ex = Journal(url).start_step(run.id, step_id=f"{k}.{i}", phase=1, seq=i, title="t", owner="contractor",
                                         urgency="low", action="manual", planned_duration_s=1, planned_start=None)
            Journal(url).finish_step(ex, outcome="done", actor="a")
            if i % 5 == 0:
                gc.collect()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = verify_run(Journal(url), run.id)
    assert result.ok, result.summary()
    assert result.entries == 1 + 3 * 15 * 2


def test_verify_while_a_run_is_being_written(tmp_path):
    """A reader verifying a run that a flow is writing sees one snapshot, never a false alarm."""
    import threading

    url = f"sqlite:///{tmp_path / 'journal.db'}"
    journal = Journal(url)
    run, _ = journal.open_run(name="acme", portal="https://acme.example.invalid", mode="rehearsal",
                              timezone="UTC", config_snapshot={})
    done = threading.Event()

    def writer() -> None:
        for i in range(60):
            ex = journal.start_step(run.id, step_id=f"1.{i}", phase=1, seq=i, title="t", owner="contractor",
                                    urgency="low", action="manual", planned_duration_s=1, planned_start=None)
            journal.finish_step(ex, outcome="done", actor="a")
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    results = []
    while not done.is_set():
        results.append(verify_run(journal, run.id))
    thread.join()
    results.append(verify_run(journal, run.id))
    bad = [r.summary() for r in results if not r.ok]
    assert not bad, bad[0]
    assert len(results) >= 2 and results[-1].entries == 1 + 60 * 2


def test_delete_through_the_journal_is_chained(journal):
    """A delete made through the ORM is a link of its own (not tampering), and still visible in the chain."""
    from sqlalchemy import select

    from journal.chain import ChainEntry
    from journal.models import Event

    run_id = _fill(journal)
    with journal.session() as s:
        s.delete(s.scalars(select(Event).where(Event.message == "second event")).one())
    assert verify_run(journal, run_id).ok
    with journal.session() as s:
        last = s.scalars(select(ChainEntry).where(ChainEntry.run_id == run_id).order_by(ChainEntry.seq.desc())).first()
        assert (last.table_name, last.op) == ("c2b_events", "delete")


def test_verify_ignores_chained_tables_missing_from_an_older_journal(journal):
    from journal.parts import BackupPart

    run_id = _fill(journal)
    BackupPart.__table__.drop(journal.engine, checkfirst=True)
    assert verify_run(journal, run_id).ok

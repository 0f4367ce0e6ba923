"""The journal store on SQLite and PostgreSQL: committed writes, UTC times, safe exports."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from sqlalchemy import create_engine, text

from connectors.errors import FatalError, RunNotFound, TransientError
from connectors.secrets import register_secret
from connectors.outputs import neutralise_cell
from journal.export import export_run
from journal.store import Journal


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def journal(request, tmp_path):
    if request.param == "sqlite":
        return Journal(f"sqlite:///{tmp_path / 'j.db'}")
    return Journal(request.getfixturevalue("pg_url"))


def _start(journal, run_id, step_id="1.1", seq=0):
    return journal.start_step(run_id, step_id=step_id, phase=1, seq=seq, title="t", owner="contractor",
                              urgency="medium", action="manual", planned_duration_s=600,
                              planned_start=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))


def test_run_lifecycle_and_resume(journal):
    run, previous = journal.open_run(name="acme", portal="https://p", mode="rehearsal", timezone="UTC",
                                     config_snapshot={"a": 1}, flow_run_id="fr-1")
    assert previous is None
    ex = _start(journal, run.id)
    row = journal.finish_step(ex, outcome="done", actor="Alex", evidence={"sha256": "ab"}, counters={"bytes": 10})
    assert row.duration_s >= 0 and row.actual_end.tzinfo is not None
    assert row.planned_end == dt.datetime(2026, 1, 1, 0, 10, tzinfo=dt.timezone.utc)
    _start(journal, run.id, "1.2", 1)  # left running, as by a killed process
    again, previous = journal.open_run(name="acme", portal="https://p", mode="rehearsal", timezone="UTC",
                                       config_snapshot={}, flow_run_id="fr-2")
    assert again.id == run.id and previous == "fr-1" and again.attempts == 2
    assert journal.close_stale_steps(run.id, "interrupted") == 1
    assert set(journal.completed_steps(run.id)) == {"1.1"}
    journal.finish_run(run.id, "completed")
    fresh, previous = journal.open_run(name="acme", portal="https://p", mode="rehearsal", timezone="UTC",
                                       config_snapshot={})
    assert fresh.id != run.id and previous is None  # a completed run is never resumed


def test_writes_are_visible_to_a_second_reader_at_once(journal):
    run, _ = journal.open_run(name="x", portal="p", mode="cutover", timezone="UTC", config_snapshot={})
    journal.add_event(run.id, "note", "hello")
    engine = create_engine(journal.url)
    with engine.connect() as conn:
        assert conn.execute(text("select count(*) from c2b_events")).scalar() == 1
    engine.dispose()


def test_secrets_are_redacted_on_the_way_in(journal, tmp_path):
    register_secret("hunter2-secret-value")
    run, _ = journal.open_run(name="x", portal="p", mode="rehearsal", timezone="UTC",
                              config_snapshot={"oops": "hunter2-secret-value"})
    ex = _start(journal, run.id)
    journal.finish_step(ex, outcome="done", actor="a", notes="pasted hunter2-secret-value by mistake",
                        evidence={"url": "https://p.example/rest/1/abcdefcode/crm.lead.list"})
    journal.add_event(run.id, "note", "hunter2-secret-value")
    paths = export_run(journal, run.id, tmp_path / "out")
    dump = str(journal.get_run(run.id).config_snapshot) + str(journal.steps(run.id)[0].notes) + \
        str(journal.steps(run.id)[0].evidence) + journal.events(run.id)[0].message
    for text_ in [dump, paths["csv"].read_text(), paths["markdown"].read_text()]:
        assert "hunter2-secret-value" not in text_ and "abcdefcode" not in text_


def test_csv_cells_cannot_inject_formulas(journal, tmp_path):
    run, _ = journal.open_run(name="x", portal="p", mode="rehearsal", timezone="UTC", config_snapshot={})
    ex = _start(journal, run.id)
    journal.finish_step(ex, outcome="done", actor="=HYPERLINK(\"http://evil\")", notes="@SUM(A1)")
    df = pd.read_csv(export_run(journal, run.id, tmp_path)["csv"])
    assert df.loc[0, "actor"].startswith("'=") and df.loc[0, "notes"].startswith("'@")
    assert neutralise_cell("-5") == "-5" and neutralise_cell("-cmd") == "'-cmd"


def test_unknown_run_is_a_clear_error(journal):
    with pytest.raises(RunNotFound, match="no migration run 'nope'"):
        journal.get_run("nope")
    with pytest.raises(RunNotFound):
        journal.set_cutoff("nope", dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    assert issubclass(RunNotFound, FatalError)


def test_unreachable_database_is_a_transient_error_naming_no_password():
    with pytest.raises(TransientError) as err:
        Journal("postgresql+psycopg2://u:pw-xyz-secret@127.0.0.1:1/db")
    assert "pw-xyz-secret" not in str(err.value) and "unavailable" in str(err.value)

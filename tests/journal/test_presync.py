"""The journal's view of the pre-sync: where 2.11 starts, what the prompts say, the freeze forecast."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from journal.events import EventKind
from journal.forecast import forecast_from
from journal.presync import freeze_forecast, presync_markdown, presync_state, presync_summary
from journal.store import Journal

T0 = dt.datetime(2026, 11, 24, 9, 0, tzinfo=dt.timezone.utc)


@pytest.fixture
def journal(tmp_path):
    return Journal(f"sqlite:///{tmp_path / 'journal.db'}")


def _run(journal) -> str:
    return journal.open_run(name="acme", portal="https://acme.example", mode="rehearsal", timezone="UTC",
                            config_snapshot={})[0].id


def _pass(journal, run_id, n, *, minute, records, seconds, created=0, updated=0, high=None, stopped=None,
          failures=(), deleted=None):
    started = T0 + dt.timedelta(minutes=minute)
    journal.add_event(run_id, EventKind.PRESYNC, f"pre-sync pass {n}", step_id="2.5", data={
        "number": n, "started_at": started.isoformat(), "since": T0.isoformat(), "seconds": seconds,
        "records": records, "created": created, "updated": updated, "high_water": high or {},
        "stopped": stopped, "failures": list(failures), "deleted_in_cloud": deleted})


def test_2_11_resumes_from_the_last_pass_and_a_stopped_pass_moves_nothing_on(journal):
    run = _run(journal)
    assert not presync_state(journal, run).usable
    _pass(journal, run, 1, minute=0, records=900, seconds=120, created=600, updated=300, high={"lead": 950},
          deleted={"lead": ["7"]})
    _pass(journal, run, 2, minute=10, records=12, seconds=9, created=8, updated=4, high={"lead": 958})
    # a pass stopped by its budget journals the start of its own window: the next one lists from there again
    _pass(journal, run, 3, minute=10, records=0, seconds=3, stopped="request budget (10) spent")
    state = presync_state(journal, run)
    assert state.usable and state.passes == 3 and state.good_passes == 2
    assert state.resume_from == T0 + dt.timedelta(minutes=10)
    assert state.after_ids == {"lead": 958} and state.moved == 912
    assert state.deleted_in_cloud == {"lead": ["7"]}


def test_the_prompt_says_when_the_last_pass_ran_and_how_far_behind_the_box_is(journal):
    run = _run(journal)
    text = presync_markdown(journal, run, now=T0, interval_s=600, overlap_s=120)
    assert "no pass has finished yet" in text
    _pass(journal, run, 1, minute=0, records=900, seconds=120, created=900)
    _pass(journal, run, 2, minute=10, records=10, seconds=8, created=10)
    _pass(journal, run, 3, minute=20, records=14, seconds=9, created=14)
    now = dt.datetime.now(dt.timezone.utc)
    text = presync_markdown(journal, run, now=now, interval_s=600, overlap_s=120, backlog={"lead": 3, "deal": 1})
    assert "3 pass(es)" in text and "924 record(s) moved" in text and "4 record(s) behind" in text
    assert "Step 2.11" in text and "P50" in text and "P90" in text and "cloud2box" in text
    assert "Pre-sync:" in presync_summary(journal, run)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(per_pass=st.lists(st.integers(0, 400), min_size=2, max_size=8), fixed=st.floats(1, 60),
       rate=st.floats(0.5, 50), interval_min=st.floats(1, 60))
def test_the_freeze_forecast_follows_the_measured_passes(tmp_path_factory, per_pass, fixed, rate, interval_min):
    journal = Journal(f"sqlite:///{tmp_path_factory.mktemp('j') / 'journal.db'}")
    run = _run(journal)
    sizes = [5000, *per_pass]  # the catch-up, then one pass per interval
    for i, n in enumerate(sizes):
        _pass(journal, run, i + 1, minute=i * interval_min, records=n, seconds=fixed + n / rate, created=n)
    fc = freeze_forecast(journal, run, interval_s=interval_min * 60, overlap_s=120, p90_factor=1.25)
    per_hour = sum(per_pass) / ((len(per_pass)) * interval_min / 60)
    assert fc.records_p50 == pytest.approx(per_hour * (interval_min * 30 + 120) / 3600)
    assert fc.records_p90 == pytest.approx(per_hour * (interval_min * 60 + 120) / 3600)
    assert fc.p90_s >= fc.p50_s > 0
    if len(set(sizes)) >= 3:  # the fit finds the fixed part and the rate the passes were made with
        assert fc.p50_s == pytest.approx(fixed + fc.records_p50 / rate, rel=1e-6, abs=1e-6)


def test_a_cutover_forecasts_2_11_from_the_rehearsal_passes_not_from_its_whole_delta(journal):
    run = _run(journal)
    started = T0
    for sid, action, secs, counters in [("2.10", "manual", 60, None),
                                        ("2.11", "transfer_crm_delta", 30, {"records": 40, "records_per_s": 2.0})]:
        ex = journal.start_step(run, step_id=sid, phase=2, seq=int(sid.split(".")[1]), title=sid, owner="contractor",
                                urgency="high", action=action, planned_duration_s=600, planned_start=started,
                                downtime="start" if sid == "2.10" else None, flow_run_id=None)
        journal.finish_step(ex, outcome="done", actor="x", counters=counters)
    scaled = forecast_from(journal, run, delta_records=4000)
    assert scaled.row("2.11").p50_s > 1000  # without the pre-sync: the whole delta, scaled up
    for i, n in enumerate([3000, 20, 24, 18]):
        _pass(journal, run, i + 1, minute=i * 10, records=n, seconds=5 + n / 10, created=n)
    fc = forecast_from(journal, run, delta_records=4000, presync=(600, 120))
    row = fc.row("2.11")
    assert row.kind == "automated" and row.basis.startswith("pre-sync") and row.p50_s < 60


def test_the_recorded_forecast_takes_the_run_s_own_passes(journal):
    from journal.forecast import Forecast, StepForecast, recorded_forecast
    from journal.presync import refresh_forecast

    run = _run(journal)
    rows = [StepForecast(step_id="2.10", title="stop", phase=2, owner="customer", action="manual", kind="manual",
                         p50_s=900, p90_s=1350, downtime="start"),
            StepForecast(step_id="2.11", title="delta", phase=2, owner="contractor", action="transfer_crm_delta",
                         kind="automated", p50_s=3600, p90_s=4500),
            StepForecast(step_id="2.12", title="start", phase=2, owner="customer", action="manual", kind="manual",
                         p50_s=900, p90_s=1350, downtime="end")]
    Forecast(rehearsal_run_id="r", rows=rows, start=T0).record(journal, run)
    for i, n in enumerate([3000, 20, 24, 18]):
        _pass(journal, run, i + 1, minute=i * 10, records=n, seconds=5 + n / 10, created=n)
    fc = freeze_forecast(journal, run, interval_s=600, overlap_s=120)
    assert refresh_forecast(journal, run, fc)
    row = recorded_forecast(journal, run).row("2.11")
    assert row.p50_s == pytest.approx(fc.p50_s) and row.basis.endswith("(this run)")
    assert recorded_forecast(journal, run).downtime()["p50_s"] == pytest.approx(fc.p50_s + 900)


def test_the_report_says_what_the_pre_sync_did(journal, tmp_path, monkeypatch):
    from journal.report import write_report

    monkeypatch.setenv("CLOUD2BOX_CHROMIUM", "off")  # the HTML and Markdown are what is checked here
    run = _run(journal)
    for i, n in enumerate([900, 12]):
        _pass(journal, run, i + 1, minute=i * 10, records=n, seconds=5 + n / 10, created=n,
              deleted={"lead": ["7", "9"]} if i == 0 else None)
    write_report(journal, run, tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Pre-sync (steps 2.5–2.10)" in md and "2 pass(es) moved 912 record(s)" in md
    assert "2 record(s) deleted in the cloud" in md
    assert "Pre-sync (steps 2.5–2.10)" in (tmp_path / "report" / "report.html").read_text()

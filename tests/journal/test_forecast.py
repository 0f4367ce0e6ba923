"""The rehearsal's journal forecasts the cutover: generated journals with known rates."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from journal.forecast import Forecast, LiveEta, compare, forecast_from, recorded_forecast
from journal.models import StepExecution
from journal.store import Journal

T0 = dt.datetime(2026, 3, 2, 6, 0, tzinfo=dt.timezone.utc)
MANUAL = "manual"


def _generate(journal: Journal, mode: str, *, backup: float, link: float, restore_mb_s: float, records: int,
              seed: int) -> str:
    """A run whose automated steps take overhead + amount/rate, with per-part throughput jitter."""
    rng = random.Random(seed)
    run, _ = journal.open_run(name=f"gen-{seed}", portal="https://acme.example.invalid", mode=mode,
                              timezone="Europe/Moscow", config_snapshot={}, new=True)
    parts = [link * rng.uniform(0.85, 1.15) for _ in range(12)]
    link_eff = len(parts) / sum(1 / p for p in parts)  # equal-sized parts: harmonic mean
    restore_rate = restore_mb_s * 1e6 * rng.uniform(0.96, 1.04)
    delta_rate = 2500 * rng.uniform(0.95, 1.05)
    steps = [
        ("2.1", "Request the backup", "customer", MANUAL, None, 1800 * rng.uniform(0.8, 1.2), {}, {}),
        ("2.3a", "Download the backup", "contractor", "download", None, 30 + backup / link_eff,
         {"bytes": backup, "bytes_per_s": link_eff},
         {"parts": [{"name": f"b.tar.gz.{i}", "bytes_per_s": p} for i, p in enumerate(parts)]}),
        ("2.3b", "Restore the backup", "contractor", "restore", None, 20 + 3 * backup / restore_rate,
         {"bytes": 3 * backup, "restore_mb_per_s": restore_rate / 1e6}, {}),
        ("2.10", "Stop the sales managers in the cloud", "customer", MANUAL, "start", 300, {}, {}),
        ("2.11", "Transfer the delta", "contractor", "crm_delta", None, 4 + records / delta_rate,
         {"records": records, "records_per_s": delta_rate, "leads": records // 2}, {}),
        ("2.12", "Start the sales managers on the box", "customer", MANUAL, "end", 240, {}, {}),
    ]
    t = T0
    with journal.session() as s:
        for seq, (sid, title, owner, action, downtime, dur, counters, evidence) in enumerate(steps):
            s.add(StepExecution(run_id=run.id, step_id=sid, phase=2, seq=seq, title=title, owner=owner,
                                urgency="high", action=action, planned_duration_s=600, actual_start=t,
                                actual_end=t + dt.timedelta(seconds=dur), duration_s=dur, outcome="done",
                                actor="gen", counters=counters, evidence=evidence, downtime=downtime))
            t += dt.timedelta(seconds=dur)
    return run.id


@pytest.fixture
def journal(tmp_path):
    return Journal(f"sqlite:///{tmp_path / 'j.db'}")


def test_cutover_with_other_size_and_throughput_within_15_percent(journal):
    rehearsal = _generate(journal, "rehearsal", backup=8e9, link=800e3, restore_mb_s=40, records=800, seed=1)
    cutover = _generate(journal, "cutover", backup=11e9, link=600e3, restore_mb_s=40, records=3000, seed=2)

    forecast = forecast_from(journal, rehearsal, backup_size=11e9, delta_records=3000, start=T0)
    dl = forecast.row("2.3a")
    assert dl.kind == "automated" and dl.unit == "bytes" and dl.samples == 12 and dl.spread > 1.0
    assert forecast.row("2.3b").amount == pytest.approx(33e9)
    assert forecast.row("2.1").kind == "manual"

    before = {r["step"]: r for r in compare(forecast, journal, cutover)}
    # Size scaling alone gets the host-bound steps right …
    for step in ("2.3b", "2.11"):
        assert abs(before[step]["error_pct"]) <= 15, before[step]
    # … but the slower link of the cutover day makes the download late: the live refresh fixes it.
    assert before["2.3a"]["error_pct"] < -15

    actual_dl = next(e for e in journal.steps(cutover) if e.step_id == "2.3a")
    live_rate = actual_dl.counters["bytes_per_s"] * 1.03  # the first minutes' throughput, a little off
    eta = LiveEta(journal, cutover, forecast, "2.3a")
    started = actual_dl.actual_start
    assert eta.update(done=0.1 * 11e9, total=11e9, rate=live_rate, started_at=started,
                      now=started + dt.timedelta(seconds=0.1 * 11e9 / live_rate + 30)) is not None

    after = {r["step"]: r for r in compare(forecast, journal, cutover)}
    for step in ("2.3a", "2.3b", "2.11"):
        assert abs(after[step]["error_pct"]) <= 15, after[step]
        assert after[step]["p90_s"] >= after[step]["p50_s"]
    assert [e.kind for e in journal.events(cutover, "forecast-eta")] == ["forecast-eta"]


def test_manual_steps_timeline_and_downtime(journal):
    rehearsal = _generate(journal, "rehearsal", backup=2e9, link=1e6, restore_mb_s=50, records=100, seed=3)
    forecast = forecast_from(journal, rehearsal, start=T0)
    actual = {e.step_id: e.duration_s for e in journal.steps(rehearsal)}
    assert forecast.row("2.10").p50_s == pytest.approx(actual["2.10"])
    assert forecast.row("2.10").p90_s == pytest.approx(actual["2.10"] * 1.5)
    # Same size, same rates: each automated step's P50 is the rehearsal's duration.
    for sid in ("2.3a", "2.3b", "2.11"):
        assert forecast.row(sid).p50_s == pytest.approx(actual[sid], rel=1e-6)
    rows = forecast.rows
    assert rows[0].start_p50 == T0
    assert all(a.end_p50 == b.start_p50 for a, b in zip(rows, rows[1:]))
    down = forecast.downtime()
    assert down["start"] == forecast.row("2.10").end_p50
    assert down["p50_s"] == pytest.approx(actual["2.11"] + actual["2.12"])
    assert down["p90_s"] > down["p50_s"]
    md = forecast.to_markdown()
    for sid in ("2.1", "2.3a", "2.3b", "2.10", "2.11", "2.12"):
        assert f"| {sid} |" in md
    assert "User downtime (2.10 → 2.12)" in md and "Europe/Moscow" in md


def test_live_eta_journals_only_real_changes(journal):
    rehearsal = _generate(journal, "rehearsal", backup=1e9, link=1e6, restore_mb_s=50, records=100, seed=4)
    run, _ = journal.open_run(name="cut", portal="https://acme.example.invalid", mode="cutover", timezone="UTC",
                              config_snapshot={})
    forecast = forecast_from(journal, rehearsal, start=T0)
    eta = LiveEta(journal, run.id, forecast, "2.3a")
    total = 1e9
    for i in range(1, 10):  # steady 1 MB/s: the ETA stays put
        now = T0 + dt.timedelta(seconds=100 * i)
        eta.update(done=1e6 * 100 * i, total=total, rate=1e6, started_at=T0, now=now)
    assert eta.changes == 1
    change = eta.update(done=1e9 * 0.1, total=total, rate=0.5e6, started_at=T0, now=T0 + dt.timedelta(seconds=1000))
    assert change is not None and change["previous_eta_p50"] is not None
    assert dt.datetime.fromisoformat(change["eta_p50"]) == T0 + dt.timedelta(seconds=1000 + 0.9e9 / 0.5e6)
    assert "downtime_end_p50" in change
    assert len(journal.events(run.id, "forecast-eta")) == 2


def test_record_round_trip(journal):
    rehearsal = _generate(journal, "rehearsal", backup=1e9, link=1e6, restore_mb_s=50, records=100, seed=5)
    forecast = forecast_from(journal, rehearsal, backup_size=2e9, start=T0)
    forecast.record(journal, rehearsal)
    back = recorded_forecast(journal, rehearsal)
    assert isinstance(back, Forecast)
    assert [(r.step_id, r.p50_s, r.end_p90) for r in back.rows] == [(r.step_id, r.p50_s, r.end_p90) for r in forecast.rows]


def test_spread_from_download_eta_events_and_part_rows(journal):
    """What the download action journals (eta events with rate_bps, c2b_backup_parts) feeds the spread."""
    from journal.parts import BackupPart

    BackupPart.__table__.create(journal.engine, checkfirst=True)
    run, _ = journal.open_run(name="r", portal="https://acme.example.invalid", mode="rehearsal", timezone="UTC",
                              config_snapshot={})
    ex = journal.start_step(run.id, step_id="2.3", phase=2, seq=0, title="Download", owner="contractor",
                            urgency="high", action="download_backup", planned_duration_s=600, planned_start=None)
    journal.finish_step(ex, outcome="done", counters={"bytes": 4e9, "bytes_per_s": 1e6, "parts": 4},
                        ended_at=journal.steps(run.id)[0].actual_start + dt.timedelta(seconds=4000))
    for rate in (0.9e6, 1.1e6):
        journal.add_event(run.id, "eta", "backup download: ETA", step_id="2.3", data={"eta_s": 100, "rate_bps": rate})
    journal.add_event(run.id, "eta", "backup download finished", step_id="2.3", data={"eta_s": 0, "rate_bps": 1e6})
    with journal.session() as s:
        s.add_all([BackupPart(run_id=run.id, step_id="2.3", part=f"p{i}", size=10**9, bytes_fetched=10**9,
                              duration_s=d) for i, d in enumerate((800.0, 1000.0, 1250.0))])
    row = forecast_from(journal, run.id, start=T0).row("2.3")
    assert row.samples == 5  # two eta events (not the final average) and three parts
    assert row.spread > 1.0 and row.p90_s > row.p50_s
    assert row.p50_s == pytest.approx(4000)

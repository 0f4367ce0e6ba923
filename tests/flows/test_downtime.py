"""The user downtime: notices, the escalation ladder, triage at the gates — flows on a real Prefect server."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from flows.actions import ActionResult, register
from tests.flows.conftest import MINI_RUNBOOK
from flows.customer import ScriptedCustomer, demo_answer
from flows.downtime import DowntimeWatcher, notifier_for
from journal.configuration import LadderSection
from journal.pdf import find_chromium
from journal.store import Journal
from journal.triage import issues, resolve_issue

FAST_LADDER = """
[ladder]
workaround_after_min = 0.02
decision_after_min = 0.05
data_return_after_min = 0.08
check_interval_s = 0.3
"""


def _run(config, answer, mode="rehearsal"):
    from flows.migration import migration

    with ScriptedCustomer(answer=answer, config=str(config), poll_s=0.3) as customer:
        state = migration(str(config), mode, return_state=True)
    assert not customer.errors, customer.errors
    return state, customer


def _journal(config):
    from flows.config import load_config

    return Journal(load_config(config).journal.url), load_config(config).journal.out_dir


@register("test_slow_transfer")
def _slow_transfer(ctx):
    """A transfer inside the downtime that takes longer than the ladder's decision threshold."""
    time.sleep(4)
    return ActionResult("moved", counters={"records": 10, "records_per_s": 2.5})


def _runbook_with_slow_transfer() -> str:
    slow_step = ('  [[phases.steps]]\n  id = "2.2"\n  title = "Transfer the delta"\n  owner = "contractor"\n'
                 '  planned_minutes = 1\n  action = "test_slow_transfer"\n')
    rb = MINI_RUNBOOK.format(action_1_2="manual")
    return rb.replace('  [[phases.steps]]\n  id = "2.2"', slow_step + '  [[phases.steps]]\n  id = "2.3"')


def _decide(decision: str):
    asked = []

    def answer(prompt):
        if prompt.key.startswith("rollback-decision"):
            asked.append(prompt)
            return {"decided_by": "Dana Demo", "decision": decision, "comment": "as agreed"}  # + her code
        return demo_answer(prompt)

    return answer, asked


@pytest.mark.prefect
def test_downtime_sends_notices_walks_the_ladder_and_asks_the_decision(prefect_server, make_config):
    config = make_config(extra=FAST_LADDER, runbook=_runbook_with_slow_transfer())
    answer, asked = _decide("continue")
    state, customer = _run(config, answer)
    assert state.is_completed(), state.message
    assert len(asked) == 1 and "Option B — roll back to the cloud" in asked[0].description
    journal, out_dir = _journal(config)
    run = journal.runs()[-1]
    kinds = [e.data["notice"] for e in journal.events(run.id, "notice")]
    assert kinds[0] == "downtime-started" and "workaround" in kinds
    assert kinds[-2:] == ["completed", "summary"]
    ladder = [e.data.get("level") or e.message for e in journal.events(run.id, "ladder")]
    assert any("workaround" in str(x) for x in ladder) and any("continue decided by Dana Demo" in e.message
                                                                for e in journal.events(run.id, "ladder"))
    files = sorted(p.name for p in (out_dir / "notices" / run.id).glob("*.md"))  # a rehearsal writes, never sends
    assert any(f.endswith("downtime-started.md") for f in files) and any(f.endswith("summary.md") for f in files)
    assert (out_dir / "report.html").exists()
    printable = find_chromium()[0] is not None  # report.pdf is printed once and kept with the run too
    assert (out_dir / "report.pdf").exists() == printable == (out_dir / "runs" / run.id / "report.pdf").exists()


@pytest.mark.prefect
def test_roll_back_decision_stops_the_run_and_says_what_to_do(prefect_server, make_config):
    config = make_config(extra=FAST_LADDER, runbook=_runbook_with_slow_transfer())
    answer, asked = _decide("roll-back")
    state, _ = _run(config, answer)
    assert state.is_failed() and "decided to roll back to the cloud" in state.message
    journal, _ = _journal(config)
    assert journal.runs()[-1].status == "rejected"


@pytest.mark.prefect
def test_a_fire_reported_in_a_form_blocks_the_gate_until_resolved(prefect_server, make_config):
    config = make_config()
    journal, _ = _journal(config)
    gate_prompts = []

    def answer(prompt):
        reply = demo_answer(prompt)
        if prompt.target == "1.1":
            reply["issues"] = "Some users cannot log in with their old password\nicon slightly off"
        if prompt.kind == "gate" and prompt.target == "1":
            gate_prompts.append(prompt)
            if len(gate_prompts) == 2:  # the engineer fixes it after the refused approval
                run_id = journal.runs()[-1].id
                fire = next(i for i in issues(journal, run_id) if i.severity == "fire")
                resolve_issue(journal, fire.id, resolved_by="Alex Engineer", resolution="passwords reset",
                              root_cause="Bitrix24.Network passwords are not on the portal")
        return reply

    state, _ = _run(config, answer)
    assert state.is_completed(), state.message
    assert len(gate_prompts) == 2
    assert "A fire is open: this gate cannot be approved" in gate_prompts[0].description
    assert "Your last approval was not taken" in gate_prompts[1].description
    run_id = journal.runs()[-1].id
    found = {i.title: i for i in issues(journal, run_id)}
    assert found["Some users cannot log in with their old password"].severity == "fire"
    assert found["icon slightly off"].severity == "sla" and found["icon slightly off"].step_id == "1.1"
    assert [s.phase for s in journal.signoffs(run_id)] == [1, 2]


def test_watcher_keeps_the_promised_updates_and_the_ladder_on_a_fake_clock(tmp_path):
    """No Prefect here: the watcher's decisions as a function of the clock."""
    from flows.config import config_from_dict

    config = config_from_dict({"migration": {"name": "w", "portal": "https://p.example"},
                               "journal": {"url": f"sqlite:///{tmp_path / 'j.db'}", "out_dir": str(tmp_path)}})
    journal = Journal(config.journal.url)
    run, _ = journal.open_run(name="w", portal="https://p.example", mode="cutover", timezone="UTC", config_snapshot={})
    t0 = dt.datetime(2026, 12, 4, 18, 0, tzinfo=dt.timezone.utc)
    ex = journal.start_step(run.id, step_id="2.10", phase=2, seq=0, title="stop", owner="customer", urgency="high",
                            action="manual", planned_duration_s=60, planned_start=t0, downtime="start")
    journal.finish_step(ex, outcome="done", actor="x", ended_at=t0)
    now = [t0]
    notifier = notifier_for(config.model_copy(update={"notices": config.notices.model_copy(update={"dry_run": True})}),
                            {}, journal, run.id, "cutover")
    notifier.clock = lambda: now[0]
    notifier.send("downtime-started", started_at=t0, expected_end=t0, latest_end=t0)  # promises an update at +60 min
    watcher = DowntimeWatcher(notifier, journal, run.id, LadderSection(), tmp_path, clock=lambda: now[0])

    def sent():
        return [e.data["notice"] for e in journal.events(run.id, "notice")]

    # the workaround notice at 1 h is itself an update and promises the next one an hour later
    for minutes, expected in [(30, ["downtime-started"]),
                              (61, ["downtime-started", "workaround"]),
                              (90, ["downtime-started", "workaround"]),
                              (122, ["downtime-started", "workaround", "progress"]),
                              (150, ["downtime-started", "workaround", "progress"]),
                              (183, ["downtime-started", "workaround", "progress", "progress"])]:
        now[0] = t0 + dt.timedelta(minutes=minutes)
        watcher.tick()
        assert sent() == expected, minutes
    assert not list(tmp_path.glob("data-return-plan-*.md"))
    now[0] = t0 + dt.timedelta(hours=12, minutes=1)
    watcher.tick()
    plan = next(tmp_path.glob("data-return-plan-*.md")).read_text()
    assert "Data-return plan" in plan

"""The escalation ladder fires each level once, at its threshold, driven by a fake clock."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import ValidationError

from journal.configuration import LadderSection
from journal.ladder import (data_return_plan, decision_prompt, downtime_start, due_actions, fired_levels,
                            next_due_at, record_fired)
from journal.store import Journal

T0 = dt.datetime(2026, 3, 20, 19, 0, tzinfo=dt.timezone.utc)


class FakeClock:
    def __init__(self, start: dt.datetime) -> None:
        self.now = start

    def advance(self, **kw) -> dt.datetime:
        self.now += dt.timedelta(**kw)
        return self.now


def _drive(section: LadderSection, until_min: int, step_min: int = 1):
    """Poll like the flow does, every ``step_min``; return {level: minute it fired}."""
    clock, fired, when = FakeClock(T0), set(), {}
    for _ in range(until_min // step_min):
        clock.advance(minutes=step_min)
        for action in due_actions(T0, clock.now, section, fired):
            fired.add(action.level)
            when[action.level] = (clock.now - T0).total_seconds() / 60
    return when


def test_default_thresholds_are_seed_002():
    assert _drive(LadderSection(), 13 * 60) == {"workaround": 60, "decision": 240, "data-return": 720}


def test_configured_thresholds():
    section = LadderSection(workaround_after_min=5, decision_after_min=10, data_return_after_min=30)
    assert _drive(section, 60) == {"workaround": 5, "decision": 10, "data-return": 30}


def test_nothing_before_threshold_nor_twice():
    section = LadderSection()
    assert due_actions(T0, T0 + dt.timedelta(minutes=59, seconds=59), section) == []
    [first] = due_actions(T0, T0 + dt.timedelta(minutes=60), section)
    assert first.level == "workaround" and first.due_at == T0 + dt.timedelta(hours=1)
    assert due_actions(T0, T0 + dt.timedelta(minutes=61), section, fired={"workaround"}) == []
    assert next_due_at(T0, section, {"workaround"}) == T0 + dt.timedelta(hours=4)
    assert next_due_at(T0, section, {"workaround", "decision", "data-return"}) is None


def test_late_poll_gets_every_missed_level_in_order():
    actions = due_actions(T0, T0 + dt.timedelta(hours=13), LadderSection())
    assert [a.level for a in actions] == ["workaround", "decision", "data-return"]


def test_no_downtime_or_disabled():
    assert due_actions(None, T0 + dt.timedelta(days=1), LadderSection()) == []
    assert due_actions(T0, T0 + dt.timedelta(days=1), LadderSection(enabled=False)) == []


def test_thresholds_must_grow():
    with pytest.raises(ValidationError):
        LadderSection(workaround_after_min=300, decision_after_min=240)


def test_journal_round_trip_and_plans(tmp_path):
    journal = Journal(f"sqlite:///{tmp_path / 'j.db'}")
    run, _ = journal.open_run(name="acme", portal="https://acme.example.invalid", mode="cutover", timezone="UTC",
                              config_snapshot={})
    journal.set_cutoff(run.id, T0 - dt.timedelta(hours=10))
    journal.add_event(run.id, "downtime-start", "user downtime starts (step 2.10)", step_id="2.10")
    start = downtime_start(journal, run.id)
    ex = journal.start_step(run.id, step_id="2.11", phase=2, seq=1, title="Transfer the delta", owner="contractor",
                            urgency="high", action="crm_delta", planned_duration_s=60, planned_start=None)
    # as the delta step writes them, plus per-entity keys of an older journal (left out)
    journal.finish_step(ex, outcome="done", counters={"records": 412.0, "records_per_s": 3000.0, "created": 400.0,
                                                      "updated": 12.0, "deleted_in_cloud": 0.0, "leads": 300})
    now = start + dt.timedelta(hours=12, minutes=5)
    actions = due_actions(start, now, LadderSection(), fired_levels(journal, run.id))
    assert [a.level for a in actions] == ["workaround", "decision", "data-return"]
    for a in actions[:2]:
        record_fired(journal, run.id, a)
    assert [a.level for a in due_actions(start, now, LadderSection(), fired_levels(journal, run.id))] == ["data-return"]

    plan = data_return_plan(journal, run.id, now=now, workaround="shared sheet")
    md = plan.to_markdown()
    assert "| 412.0 |" in md and "; created 400, updated 12, deleted_in_cloud 0 |" in md and "leads" not in md
    assert "shared sheet" in md and "workaround" in md
    prompt = decision_prompt(portal="https://acme.example.invalid", box_portal="https://crm.acme.example",
                             downtime_min=241, open_fires=["#3 users cannot log in"])
    assert "roll back to the cloud" in prompt and "#3 users cannot log in" in prompt and "4.0 h" in prompt

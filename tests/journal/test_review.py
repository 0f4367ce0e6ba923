"""A prompt's short sections fit the resume modal (no table over three columns, whatever people and
portals wrote into them); the full review, from the journal, holds every column, the checks with
finding and fix, every open issue with its fix."""

from __future__ import annotations

import datetime as dt

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from checklists.risks import load_risks
from checklists.verify import CheckResult, Verification
from journal.events import EventKind
from journal.export import brief_table, phase_rows
from journal.review import review_markdown
from journal.risks import risk_register_brief
from journal.store import Journal
from journal.sweeps import sweeps_markdown
from journal.triage import open_issues_brief, report_issue
from journal.verification import record_verification, verification_brief
from tests.flows.prompt_tables import table_widths

# what people and portals write: pipes, Markdown, HTML, newlines, long runs
TEXT = st.text(alphabet=st.one_of(st.sampled_from("|\\`*_#<>&\n -[]()!"), st.characters(codec="utf-8")),
               min_size=1, max_size=60)
T0 = dt.datetime(2026, 12, 4, 9, 0, tzinfo=dt.timezone.utc)


def _run(tmp_path, name="j.db"):
    journal = Journal(f"sqlite:///{tmp_path / name}")
    run, _ = journal.open_run(name="acme", portal="https://p", mode="rehearsal", timezone="UTC", config_snapshot={},
                              new=True)
    return journal, run.id


def _step(journal, run_id, step_id, title, actor, outcome="done"):
    ex = journal.start_step(run_id, step_id=step_id, phase=2, seq=0, title=title, owner="customer", urgency="high",
                            action="manual", planned_duration_s=600, planned_start=T0)
    journal.finish_step(ex, outcome=outcome, actor=actor, notes=f"notes of {step_id}")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(title=TEXT, actor=TEXT, person=TEXT, finding=TEXT, fix=TEXT)
def test_every_short_section_fits_the_modal(tmp_path_factory, title, actor, person, finding, fix):
    journal, run_id = _run(tmp_path_factory.mktemp("brief"))
    _step(journal, run_id, "2.8", title, actor)
    verification = Verification([CheckResult("users", "Users", "fire", "failed", finding, fix=fix),
                                 CheckResult("push-pull", "Push", "emergency", "failed", finding, fix=fix)])
    record_verification(journal, run_id, verification, step_id="2.8")
    report_issue(journal, run_id, title=title, reported_by=person, severity="fire", detail=fix, step_id="2.8")
    journal.add_event(run_id, EventKind.SWEEP, "sweep 1", data={
        "number": 1, "created": 2, "updated": 1, "echoes_skipped": 0, "requests": 5,
        "stragglers": [{"user_id": "7", "name": person, "email": f"{actor}@example.invalid", "records": 3,
                        "last_at": "2026-12-04T09:30:00+00:00"}]})
    sections = [brief_table(phase_rows(journal, run_id, 2)), verification_brief(verification),
                verification_brief(verification, fires_listed=True), open_issues_brief(journal, run_id),
                sweeps_markdown(journal, run_id, brief=True), risk_register_brief(load_risks())]
    widths = [w for s in sections for w in table_widths(s)]
    assert widths == [3, 3], widths  # the phase's journal and the people still in the cloud
    assert "A fire is open: this gate cannot be approved" in sections[3]
    assert "push-pull" in sections[2] and "❌ **users**" not in sections[2]  # a gate lists its fires once
    # the full review has what the prompt left out
    text = review_markdown(journal, run_id, phase=2, title="Cutover", asked="gate 2, ask 1",
                           sections=[("Straggler sweeps", sweeps_markdown(journal, run_id))])
    assert {21, 6, 4} <= set(table_widths(text))  # every journal column; check, finding, fix…; user, e-mail…


def test_the_review_holds_checks_with_finding_and_fix_and_every_column(tmp_path):
    journal, run_id = _run(tmp_path)
    _step(journal, run_id, "2.8", "Deep test", "Dana Demo")
    record_verification(journal, run_id, Verification([
        CheckResult("users", "Users have accounts", "fire", "failed", "2 users missing", fix="invite them"),
        CheckResult("search-index", "Search index", "sla", "passed", "indexed", fix="never shown when passed")]),
        step_id="2.8")
    text = review_markdown(journal, run_id, phase=2, title="Cutover", asked="step 2.9 (attempt 1)",
                           sections=[("Pre-sync", "**Pre-sync:** 3 pass(es)"), ("Straggler sweeps", "")],
                           now=T0)
    assert text.startswith("# Review of phase 2 — Cutover\n")
    assert "**step 2.9 (attempt 1)**, 2026-12-04 09:00 UTC" in text
    assert "| phase | step | title | owner | urgency | action | attempt | outcome | actor | planned_start_utc |" in text
    assert "| users | Users have accounts | ❌ FAILED | fire | 2 users missing | invite them |" in text
    assert "| search-index | Search index | ✅ passed | sla | indexed |  |" in text
    assert "| fix / detail |" in text and "invite them |" in text.split("## Open issues")[1]
    assert "## Pre-sync\n\n**Pre-sync:** 3 pass(es)" in text and "## Straggler sweeps" not in text  # empty: left out


def test_a_review_before_any_check_says_so(tmp_path):
    journal, run_id = _run(tmp_path)
    text = review_markdown(journal, run_id, phase=1, title="Preparation", asked="step 1.1 (attempt 1)")
    assert "_No step of this phase started yet._" in text and "_The checks have not run in this run yet._" in text
    assert "**Open issues:** none." in text

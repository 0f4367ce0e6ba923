"""The runbook flows against a real Prefect test server: pauses, typed input, gates, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from connectors.errors import FatalError
from flows.actions import ActionResult, register
from flows.customer import ScriptedCustomer, demo_answer
from journal.export import downtime_window, journal_frame
from journal.store import Journal

pytestmark = pytest.mark.prefect

CALLS: dict[str, int] = {}


@pytest.fixture(autouse=True)
def _no_pdf(monkeypatch):
    """Pauses, gates and resumes are tested here, not the report: no Chromium start (~2 s) at each
    run's end (the product's own switch, journal/pdf.py). report.pdf from a run: test_downtime.py."""
    monkeypatch.setenv("CLOUD2BOX_CHROMIUM", "off")


@register("test_flaky_check")
def _flaky_check(ctx):
    """Fails on its first call in a run, succeeds after: a failure the engineer fixes and re-runs."""
    CALLS[ctx.run_id] = CALLS.get(ctx.run_id, 0) + 1
    if CALLS[ctx.run_id] == 1:
        raise FatalError("the host check failed: disk too small", fix="grow the disk")
    ctx.progress(1, 1, "checked")
    return ActionResult("host checked", evidence={"disk_free_gb": 120}, counters={"checks": 3})


def _run(config, *, answer=demo_answer, mode="rehearsal"):
    from flows.migration import migration

    with ScriptedCustomer(answer=answer, config=str(config), poll_s=0.3) as customer:
        state = migration(str(config), mode, return_state=True)
    assert not customer.errors, customer.errors
    return state, customer


def _journal(config) -> Journal:
    from flows.config import load_config

    return Journal(load_config(config).journal.url)


def test_manual_steps_and_gates_are_resumed_with_typed_input(prefect_server, make_config):
    config = make_config()
    state, customer = _run(config)
    assert state.is_completed(), state.message
    keys = [p.key for p, _ in customer.answered]
    assert keys == ["step-1-1-attempt-1", "step-1-2-attempt-1", "gate-1-attempt-1",
                    "step-2-1-attempt-1", "step-2-2-attempt-1", "gate-2-attempt-1"]
    # the prompt says who must act and what to do
    first = customer.answered[0][0]
    assert first.who == "Contractor" and "Deploy it." in first.description
    downtime_prompt = customer.answered[3][0].description
    assert "User downtime starts" in downtime_prompt

    journal = _journal(config)
    run = journal.runs()[-1]
    assert run.status == "completed"
    steps = journal.steps(run.id)
    assert [(s.step_id, s.outcome, s.owner) for s in steps] == [
        ("1.1", "done", "contractor"), ("1.2", "done", "customer"),
        ("2.1", "done", "customer"), ("2.2", "done", "customer-sales")]
    # the roster's people, chosen in the form (the customer's with her one-time code), never typed names
    assert steps[0].actor == "Alex Engineer" and steps[1].actor == "Dana Demo"
    assert all(s.actual_end >= s.actual_start and s.planned_duration_s > 0 for s in steps)
    assert steps[1].planned_start == steps[0].planned_end
    signoffs = journal.signoffs(run.id)
    assert [(s.phase, s.decision, s.signer, s.role) for s in signoffs] == [
        (1, "approve", "Dana Demo", "Head of Sales"), (2, "approve", "Dana Demo", "Head of Sales")]
    start, end = downtime_window(journal, run.id)
    assert start and end and end >= start
    assert (tmp := journal_frame(journal, run.id)).shape[0] == 4 and set(tmp["step"]) == {"1.1", "1.2", "2.1", "2.2"}


def test_step_tasks_carry_owner_phase_urgency_tags(prefect_server, make_config):
    from prefect.client.orchestration import get_client

    state, _ = _run(make_config())
    assert state.is_completed()
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs()
    tagged = {tr.name: set(tr.tags) for tr in task_runs if tr.name == "2.2 Start sales on the box"}
    assert tagged and all({"owner:customer-sales", "phase:2", "urgency:high", "manual"} <= t for t in tagged.values())


def test_server_rejects_input_that_does_not_match_the_form(prefect_server, make_config):
    from prefect.flow_runs import resume_flow_run

    bad: list[Exception] = []

    def answer(prompt):
        if prompt.kind == "step" and not bad:
            # "maybe" is no choice of the step form; a form without the done / not done choice is
            # refused too (nothing is assumed from a forgotten tick)
            for wrong in ({"outcome": "maybe", "done_by": "Alex Engineer"}, {"done_by": "Alex Engineer"}):
                try:
                    resume_flow_run(prompt.flow_run_id, run_input=wrong)
                except Exception as exc:  # the server validates against the saved schema
                    bad.append(exc)
        return demo_answer(prompt)

    state, _ = _run(make_config(), answer=answer)
    assert state.is_completed()
    assert len(bad) == 2 and "maybe" in str(bad[0]) and "'outcome' is a required property" in str(bad[1])


def test_rejected_gate_stops_the_run_and_rerun_asks_only_the_gate(prefect_server, make_config):
    config = make_config()

    def reject_phase_1(prompt):
        if prompt.kind == "gate":
            return {"signer": "Dana Demo", "decision": "reject", "comment": "certificate missing"}
        return demo_answer(prompt)

    state, _ = _run(config, answer=reject_phase_1)
    assert state.is_failed()
    assert "rejected by Dana Demo (Head of Sales): certificate missing" in state.message
    journal = _journal(config)
    run = journal.runs()[-1]
    assert run.status == "rejected" and "certificate missing" in run.status_detail
    assert {s.step_id for s in journal.steps(run.id)} == {"1.1", "1.2"}  # phase 2 never started

    state, customer = _run(config)
    assert state.is_completed(), state.message
    assert [p.key for p, _ in customer.answered] == ["gate-1-attempt-2", "step-2-1-attempt-1",
                                                     "step-2-2-attempt-1", "gate-2-attempt-1"]
    run = journal.get_run(run.id)
    assert run.status == "completed" and run.attempts == 2
    assert [s.decision for s in journal.signoffs(run.id)] == ["reject", "approve", "approve"]
    assert [s.step_id for s in journal.steps(run.id)].count("1.1") == 1


def test_failed_run_rerun_resumes_without_redoing_or_reasking(prefect_server, make_config):
    config = make_config(action_1_2="test_flaky_check")
    state, customer = _run(config)
    assert state.is_failed() and "disk too small" in state.message
    journal = _journal(config)
    run = journal.runs()[-1]
    assert run.status == "failed"

    state, customer = _run(config)
    assert state.is_completed(), state.message
    assert [p.key for p, _ in customer.answered][0] == "gate-1-attempt-1"  # 1.1 not asked again
    rows = [(s.step_id, s.attempt, s.outcome) for s in journal.steps(run.id)]
    assert rows[:3] == [("1.1", 1, "done"), ("1.2", 1, "failed"), ("1.2", 2, "done")]
    done = journal.steps(run.id)[2]
    assert done.actor == "cloud2box (automated)" and done.evidence == {"disk_free_gb": 120}
    assert done.counters == {"checks": 3}
    assert "disk too small" in journal.steps(run.id)[1].error


def test_step_reported_not_done_stops_the_run(prefect_server, make_config):
    config = make_config()

    def not_done(prompt):
        if prompt.target == "1.1":
            return {"outcome": "not done", "done_by": "Alex Engineer", "notes": "host not delivered yet"}
        return demo_answer(prompt)

    state, _ = _run(config, answer=not_done)
    assert state.is_failed() and "reported NOT done by Alex Engineer" in state.message
    journal = _journal(config)
    (row,) = journal.steps(journal.runs()[-1].id)
    assert row.outcome == "failed" and row.notes == "host not delivered yet"


def test_killed_run_resumes_without_repeating_completed_steps(prefect_server, make_config, tmp_path):
    """kill -9 the process while it waits at step 1.2; the re-run keeps 1.1 and asks 1.2 again."""
    config = make_config()
    journal = _journal(config)
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", "--config", str(config)], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "run.log", "w"))
    try:
        with ScriptedCustomer(answer=lambda p: demo_answer(p) if p.target == "1.1" else None, config=str(config),
                              poll_s=0.3) as customer:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                runs = journal.runs()
                if runs and any(s.step_id == "1.2" for s in journal.steps(runs[-1].id)):
                    break
                assert proc.poll() is None, (tmp_path / "run.log").read_text()
                time.sleep(0.3)
            else:
                pytest.fail("the run never reached step 1.2")
            answered_before = list(customer.answered)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    run_id = journal.runs()[-1].id
    assert journal.get_run(run_id).status == "running"  # the killed process could not say anything

    # the dead process's prompt may still show until the new run retires it; a person would not answer it
    state, customer = _run(config, answer=lambda p: None if p.key == "step-1-2-attempt-1" else demo_answer(p))
    assert state.is_completed(), state.message
    assert [p.key for p, _ in customer.answered][0] == "step-1-2-attempt-2"
    rows = [(s.step_id, s.attempt, s.outcome) for s in journal.steps(run_id)]
    assert rows[:3] == [("1.1", 1, "done"), ("1.2", 1, "failed"), ("1.2", 2, "done")]
    assert "interrupted" in journal.steps(run_id)[1].error
    # the access checks of each start; the notices telling the signers of a pause
    kinds = [e.kind for e in journal.events(run_id)
             if e.kind != "preflight" and e.kind != "person-notice" and not e.kind.startswith("sign-")]
    assert kinds[:2] == ["start", "resume"]
    # the dead process's paused run was retired, so nobody can answer its prompt any more
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        stale = [client.read_flow_run(p.flow_run_id) for p, _ in answered_before]
    assert all(fr.state.is_cancelled() for fr in stale if fr.name.startswith("phase-1"))


@pytest.mark.postgres
def test_journal_on_sqlite_and_postgres_holds_the_same_rows(prefect_server, make_config, tmp_path, pg_url):
    frames = []
    for url in (f"sqlite:///{tmp_path / 'same.db'}", pg_url):
        config = make_config(journal_url=url, name="same-rows")
        state, _ = _run(config)
        assert state.is_completed(), state.message
        journal = _journal(config)
        run = journal.runs()[-1]
        frame = journal_frame(journal, run.id)
        frames.append(frame.drop(columns=[c for c in frame.columns if c.endswith("_utc") or c in ("run_id", "actual_min", "over_plan_min")]))
        signoffs = [(s.phase, s.signer, s.role, s.decision, s.comment) for s in journal.signoffs(run.id)]
        frames.append(signoffs)
    assert frames[0].equals(frames[2]), (frames[0], frames[2])
    assert frames[1] == frames[3] and len(frames[1]) == 2


def test_a_secret_never_reaches_journal_logs_exports_or_prefect(prefect_server, make_config, monkeypatch, caplog):
    secret = "wh-7f3k9s2m1x-code"
    monkeypatch.setenv("C2B_TEST_WEBHOOK", secret)
    config = make_config(extra='[secrets]\ncloud_webhook = { env = "C2B_TEST_WEBHOOK" }\n')

    def leaky(prompt):
        reply = demo_answer(prompt)
        if prompt.kind == "step":  # a person pastes the code (and a webhook URL) into the form
            reply["notes"] = f"used https://acme.example/rest/1/{secret}/crm.lead.list ok, code {secret}"
        return reply

    import logging

    from prefect import get_client

    caplog.set_level(logging.INFO)
    logging.getLogger("cloud2box.test").info("about to run")
    state, _ = _run(config, answer=leaky)
    assert state.is_completed(), state.message
    journal = _journal(config)
    run = journal.runs()[-1]
    from flows.config import load_config

    out_dir = load_config(config).journal.out_dir
    texts = [str(journal.get_run(run.id).config_snapshot),
             *[f"{s.notes} {s.evidence} {s.error}" for s in journal.steps(run.id)],
             *[e.message for e in journal.events(run.id)],
             (out_dir / "journal.csv").read_text(), (out_dir / "journal.md").read_text(), caplog.text]
    import asyncio

    async def api_logs():
        async with get_client() as client:
            return [log.message for log in await client.read_logs()]

    texts += asyncio.run(api_logs())
    assert any("***" in t for t in texts)
    leaks = [t for t in texts if secret in t]
    assert not leaks, leaks[:2]


def test_gate_1_needs_explicit_acceptance_of_unmitigated_high_risks(prefect_server, make_config):
    from journal.risks import risk_statuses

    config = make_config()
    anchors = config.parent / "auditor-anchors.jsonl"  # issue 14: the auditor's copy of every anchor
    config.write_text(config.read_text().replace("[journal]\n", f'[journal]\nanchor = "{anchors}"\n', 1))
    seen = []

    def careless_then_careful(prompt):
        reply = demo_answer(prompt)
        if prompt.kind == "gate" and prompt.target == "1":
            seen.append(prompt)
            assert "accept_unmitigated_risks" in prompt.fields and "R05" in prompt.description
            reply["accept_unmitigated_risks"] = len(seen) > 1  # first approval forgets to accept
        return reply

    state, customer = _run(config, answer=careless_then_careful)
    assert state.is_completed(), state.message
    assert [p.key for p in seen] == ["gate-1-attempt-1", "gate-1-attempt-2"]
    assert "Your last approval was not taken" in seen[1].description and "R05" in seen[1].description
    journal = _journal(config)
    run = journal.runs()[-1]
    assert [s.phase for s in journal.signoffs(run.id)] == [1, 2]  # the refused approval is no sign-off
    assert [e.kind for e in journal.events(run.id)].count("gate-refused") == 1
    statuses = risk_statuses(journal, run.id)
    assert statuses["R05"].status == "accepted" and statuses["R05"].decided_by == "Dana Demo"
    assert statuses["R01"].status == "mitigation-planned" and len(statuses) == 10
    _assert_anchored(config, anchors, run.id)


def _assert_anchored(config, anchors, run_id: str) -> None:
    """An anchor left at every gate answer (the refused one too) and at the end; the journal matches them."""
    import json

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.cli import main

    reasons = [json.loads(line)["reason"] for line in anchors.read_text().splitlines()]
    assert [r.split(" of run")[0] for r in reasons] == ["gate 1", "gate 1", "gate 2", "end"], reasons
    assert main(["journal", "verify", "--config", str(config), "--anchor", str(anchors)]) == 0
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[f"journal-anchor-{run_id}"])))
    assert found and "runs=" in found[0].description

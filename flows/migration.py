"""The migration runbook as Prefect flows: ``migration`` runs the phases as subflows.

Each runbook step is a Prefect task tagged ``owner:<role>``, ``phase:<n>``, ``urgency:<u>``.
A manual step pauses the run for a typed confirmation; a phase gate pauses for the customer's
sign-off. The journal decides what is already done, so a re-run resumes where the last one
stopped and never asks twice for what was confirmed.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import (create_markdown_artifact, create_progress_artifact, create_table_artifact,
                              update_progress_artifact)
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.flow_runs import pause_flow_run
from pydantic import SecretStr

from checklists.runbook import Phase, Runbook, Step, load_runbook
from connectors.errors import ConfigError, FatalError, GateRejected, MigrationError, StepNotDone
from connectors.secrets import install_log_redaction, redact
from flows.actions import MANUAL, ActionContext, get_action, known_actions, missing_requirements
from flows.actions.verify import verify as verify_checks
from flows.config import Config, load_config, resolve_secrets
from checklists.risks import load_risks
from flows.downtime import DowntimeWatcher, decision_due, final_summary, notifier_for
from flows.forms import (GateSignOff, GateSignOffAcceptingRisks, ManualStepInput, RollbackDecision, gate_prompt,
                         manual_step_prompt)
from journal import ladder
from journal.export import downtime_window
from journal.forecast import forecast_from, recorded_forecast
from journal.report import report_markdown, write_report
from journal.risks import risk_statuses, set_risk_status
from journal.sweeps import sweeps_markdown
from journal.triage import gate_issues_markdown, open_fires, report_issue
from journal.export import SUMMARY_COLUMNS, export_run, markdown_table, phase_rows
from journal.store import Journal

AUTOMATED_ACTOR = "cloud2box (automated)"

# Handles the demo and tests pass to actions in-process (sandbox servers); keyed by run id.
SERVICES: dict[str, dict] = {}


@dataclass
class _Setup:
    config: Config
    secrets: dict[str, SecretStr]
    runbook: Runbook
    journal: Journal


def _read_prefect_secret(name: str) -> str:
    from prefect.blocks.system import Secret

    return Secret.load(name).get()


def _setup(config_path: str) -> _Setup:
    install_log_redaction()
    config = load_config(config_path)
    secrets = resolve_secrets(config, prefect_reader=_read_prefect_secret)
    runbook = load_runbook(config.runbook.path, known_actions=known_actions())
    unknown = sorted(set(config.runbook.manual_steps) - {s.id for s in runbook.steps})
    if unknown:
        raise ConfigError(config.source, [f"[runbook.manual_steps] no step {u} in the runbook" for u in unknown])
    runbook = runbook.with_actions({step_id: MANUAL for step_id in config.runbook.manual_steps})
    problems = missing_requirements(runbook, config)
    if problems:
        raise ConfigError(config.source, problems)
    return _Setup(config, secrets, runbook, Journal(config.journal.url))


def check_setup(config_path: str) -> None:
    """Validate everything a run needs (config, secrets, runbook, action requirements) up front."""
    _setup(config_path)


def _flow_run_id() -> str | None:
    ctx = FlowRunContext.get()
    return str(ctx.flow_run.id) if ctx and ctx.flow_run else None


def _planned_start(run_created: dt.datetime, runbook: Runbook, step: Step) -> dt.datetime:
    before = runbook.steps[: runbook.seq(step.id)]
    return run_created + dt.timedelta(seconds=sum(s.planned_s for s in before))


class _ProgressArtifact:
    """Turns an action's progress callbacks into one Prefect progress artifact (≤ 1 update/s)."""

    def __init__(self, key: str, title: str) -> None:
        self.key, self.title = key, title
        self.artifact_id = None
        self.last = 0.0

    def __call__(self, done: float, total: float | None, message: str = "") -> None:
        now = time.monotonic()
        if self.artifact_id is not None and now - self.last < 1.0 and (total is None or done < total):
            return
        self.last = now
        pct = min(100.0, 100.0 * done / total) if total else 0.0
        description = f"{self.title}: {message}" if message else self.title
        try:
            if self.artifact_id is None:
                self.artifact_id = create_progress_artifact(pct, key=self.key, description=description)
            else:
                update_progress_artifact(self.artifact_id, pct, description=description)
        except Exception as exc:  # progress display must never fail the step
            logging.getLogger("cloud2box").debug("progress artifact update failed: %s", exc)


def _action_context(setup: "_Setup", run_id: str, mode: str, step: Step, logger) -> ActionContext:
    work_dir = Path(setup.config.journal.out_dir) / "runs" / run_id
    work_dir.mkdir(parents=True, exist_ok=True)
    return ActionContext(
        config=setup.config, secrets=setup.secrets, journal=setup.journal, run_id=run_id, step_id=step.id,
        mode=mode, work_dir=work_dir, logger=logger,
        progress=_ProgressArtifact(f"progress-{run_id}-step-{step.slug}", f"Step {step.id} {step.title}"),
        services=SERVICES.get(run_id, SERVICES.get("*", {})),
    )


# --- tasks: one per runbook step, plus the gate ----------------------------------------------

@task(cache_policy=NO_CACHE, persist_result=False, tags=["action:verify_migration"])
def verify_before(config_path: str, run_id: str, mode: str, step_id: str, label: str | None = None) -> dict:
    """The post-migration checks before a ``verify = true`` step (or, ``label`` "gate-2", before a
    gate): journaled, failures become issues (a fire blocks the gate), a check that passes again
    resolves its issue."""
    setup = _setup(config_path)
    step = next(s for s in setup.runbook.steps if s.id == step_id)
    ctx = _action_context(setup, run_id, mode, step, get_run_logger())
    ctx.step_id = label or step.id
    result, changes = verify_checks(ctx)
    try:
        create_table_artifact([{"check": r.id, "result": r.status, "severity if failed": r.severity,
                                "finding": r.summary} for r in result.results],
                              key=f"verification-{run_id}-{(label or 'step-' + step.slug).replace('.', '-')}",
                              description=f"Verification before {label or 'step ' + step.id}: {result.summary()}")
    except Exception as exc:  # the journal holds the results; the artifact is a view
        get_run_logger().warning("could not publish the verification artifact: %s", exc)
    return {"markdown": result.to_markdown(), "summary": result.summary(), **changes}


@task(cache_policy=NO_CACHE, persist_result=False)
def run_step(config_path: str, run_id: str, mode: str, step_id: str, execution_id: int,
             confirmation: dict | None = None) -> dict:
    """Do (automated) or record (manual) one runbook step; the journal row is final on return."""
    setup = _setup(config_path)
    journal = setup.journal
    step = next(s for s in setup.runbook.steps if s.id == step_id)
    logger = get_run_logger()
    if step.is_manual:
        answer = ManualStepInput.model_validate(confirmation or {})
        if not answer.done:
            journal.finish_step(execution_id, outcome="failed", actor=answer.done_by, notes=answer.notes,
                                error=f"reported NOT done by {answer.done_by}",
                                evidence={"evidence_link": answer.evidence_link} if answer.evidence_link else {})
            raise StepNotDone(f"step {step.id} ({step.title}) was reported NOT done by {answer.done_by}: "
                              f"{answer.notes or 'no notes'}",
                              fix="finish the step, then re-run the migration: it resumes at this step")
        for line in filter(None, (ln.strip() for ln in answer.issues.splitlines())):
            issue = report_issue(journal, run_id, title=line, reported_by=answer.done_by, step_id=step.id, source="form")
            logger.warning("issue #%s reported at step %s: [%s] %s", issue.id, step.id, issue.severity, redact(line))
        row = journal.finish_step(execution_id, outcome="done", actor=answer.done_by, notes=answer.notes,
                                  evidence={"evidence_link": answer.evidence_link} if answer.evidence_link else {})
        logger.info("step %s confirmed done by %s", step.id, redact(answer.done_by))
    else:
        action = get_action(step.action)
        ctx = _action_context(setup, run_id, mode, step, logger)
        try:
            result = action(ctx)
        except Exception as exc:
            journal.finish_step(execution_id, outcome="failed", actor=AUTOMATED_ACTOR,
                                error=f"{type(exc).__name__}: {exc}")
            raise
        row = journal.finish_step(execution_id, outcome="done", actor=AUTOMATED_ACTOR, notes=result.summary,
                                  evidence=result.evidence, counters=result.counters)
        logger.info("step %s done: %s", step.id, redact(result.summary))
    if step.downtime:
        journal.add_event(run_id, f"downtime-{step.downtime}",
                          f"user downtime {'starts' if step.downtime == 'start' else 'ends'} (step {step.id})",
                          step_id=step.id)
    return {"step": step.id, "outcome": row.outcome, "duration_s": row.duration_s}


@task(cache_policy=NO_CACHE, persist_result=False, tags=["owner:customer", "gate"])
def record_gate(config_path: str, run_id: str, phase: int, signoff: dict, must_accept: list[str] | None = None) -> dict:
    """Journal a customer's gate decision; a rejection stops the run.

    An approval that does not accept the risks in ``must_accept`` is not taken: it is journaled
    as refused and the gate is asked again.
    """
    setup = _setup(config_path)
    journal = setup.journal
    form = GateSignOffAcceptingRisks if must_accept else GateSignOff
    answer = form.model_validate(signoff)
    fires = open_fires(journal, run_id) if answer.decision == "approve" else []
    reason = None
    if fires:
        reason = (f"{len(fires)} fire(s) open: {'; '.join(f'#{i.id} {i.title}' for i in fires)}; resolve them, or "
                  f"reject the phase (roll back to the cloud)")
    elif answer.decision == "approve" and must_accept and not getattr(answer, "accept_unmitigated_risks", False):
        reason = (f"{', '.join(must_accept)} have high impact and no mitigation; tick the acceptance box "
                  f"or reject the phase")
    if reason:
        journal.add_event(run_id, "gate-refused", f"phase {phase}: approval by {answer.signer} not taken: {reason}",
                          data={"phase": phase, "signer": answer.signer})
        return {"phase": phase, "decision": "refused", "reason": reason}
    journal.record_signoff(run_id, phase=phase, signer=answer.signer, role=answer.role, decision=answer.decision,
                           comment=answer.comment, flow_run_id=_flow_run_id())
    if answer.decision != "approve":
        raise GateRejected(
            f"phase {phase} was rejected by {answer.signer} ({answer.role}): {answer.comment or 'no comment'}",
            fix="resolve what the customer raised, then re-run the migration: completed steps are kept and "
                "the gate is asked again",
        )
    if phase == 1:
        _record_risk_decisions(setup, run_id, answer.signer, accepted=must_accept or [])
    return {"phase": phase, "decision": answer.decision, "signer": answer.signer}


def _record_risk_decisions(setup: "_Setup", run_id: str, signer: str, accepted: list[str]) -> None:
    register = load_risks(setup.config.runbook.risks)
    for risk in register.risks:
        if risk.id in accepted:
            set_risk_status(setup.journal, run_id, risk.id, "accepted", decided_by=signer,
                            note="high impact, no mitigation: accepted at gate 1")
        elif risk.mitigation:
            set_risk_status(setup.journal, run_id, risk.id, "mitigation-planned", decided_by=signer,
                            note=risk.mitigation)


def _publish_phase_table(journal: Journal, run_id: str, phase: Phase) -> None:
    rows = phase_rows(journal, run_id, phase.number)
    try:
        create_table_artifact(
            [{c: r[c] for c in SUMMARY_COLUMNS} for r in rows],
            key=f"journal-{run_id}-phase-{phase.number}",
            description=f"Journal of phase {phase.number} ({phase.title}), run {run_id}",
        )
    except Exception as exc:  # the journal is the record; an artifact hiccup must not stop the run
        get_run_logger().warning("could not update the journal artifact: %s", exc)


def _retire_flow_run(flow_run_id: str, superseded_by: str | None) -> None:
    """Cancel what a killed process left paused or running, so nobody answers a dead prompt."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.states import Cancelled

    if not flow_run_id or flow_run_id == superseded_by:
        return  # a retry of the same flow run: nothing to retire
    logger = get_run_logger()
    try:
        with get_client(sync_client=True) as client:
            old = client.read_flow_run(UUID(flow_run_id))
            children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[old.id])))
            for fr in [*children, old]:
                if fr.state and not fr.state.is_final():
                    client.set_flow_run_state(fr.id, Cancelled(message=f"superseded by flow run {superseded_by} (resume)"),
                                              force=True)
                    logger.info("retired stale flow run %s (%s)", fr.name, fr.state.type.value)
    except Exception as exc:  # the old run may be gone from a cleaned-up server; resuming matters more
        logger.warning("could not retire the previous flow run %s: %s", flow_run_id, exc)


# --- the user downtime: notices, the escalation ladder ----------------------------------------

_WATCHERS: dict[str, DowntimeWatcher] = {}


def _watch_downtime(setup: _Setup, run_id: str, notifier) -> None:
    start, end = downtime_window(setup.journal, run_id)
    if start and not end and run_id not in _WATCHERS:
        out_dir = Path(setup.config.journal.out_dir)
        _WATCHERS[run_id] = DowntimeWatcher(notifier, setup.journal, run_id, setup.config.ladder, out_dir,
                                            interval_s=setup.config.ladder.check_interval_s).start()


def _stop_watching(run_id: str) -> None:
    watcher = _WATCHERS.pop(run_id, None)
    if watcher:
        watcher.stop()


def _expected_downtime_s(setup: _Setup, run_id: str, runbook: Runbook) -> tuple[float, float]:
    """P50/P90 seconds of the downtime: from the recorded forecast, else from the plan."""
    forecast = recorded_forecast(setup.journal, run_id)
    window = forecast.downtime() if forecast else None
    if window:
        return window["p50_s"], window["p90_s"]
    start = next(i for i, s in enumerate(runbook.steps) if s.downtime == "start")
    end = next(i for i, s in enumerate(runbook.steps) if s.downtime == "end")
    planned = sum(s.planned_s for s in runbook.steps[start + 1: end + 1])
    return planned, planned * setup.config.forecast.manual_p90_factor


def _announce(setup: _Setup, run_id: str, notifier, runbook: Runbook) -> None:
    if any(e.data.get("notice") == "announcement" for e in setup.journal.events(run_id, "notice")):
        return  # announced in an earlier attempt of this run
    p50, p90 = _expected_downtime_s(setup, run_id, runbook)
    start = next((s for s in runbook.steps if s.downtime == "start"), None)
    run = setup.journal.get_run(run_id)
    window_start = _planned_start(run.created_at, runbook, start) + dt.timedelta(seconds=start.planned_s) if start else None
    notifier.send("announcement", backup_date=run.cutoff or run.created_at, window_start=window_start,
                  window_end=window_start + dt.timedelta(seconds=p50) if window_start else None,
                  window_end_latest=window_start + dt.timedelta(seconds=p90) if window_start else None,
                  expected_duration=p50, latest_duration=p90)


def _downtime_started(setup: _Setup, run_id: str, notifier, runbook: Runbook) -> None:
    start, _ = downtime_window(setup.journal, run_id)
    p50, p90 = _expected_downtime_s(setup, run_id, runbook)
    notifier.send("downtime-started", started_at=start, expected_end=start + dt.timedelta(seconds=p50),
                  latest_end=start + dt.timedelta(seconds=p90))
    _watch_downtime(setup, run_id, notifier)


def _downtime_ended(run_id: str, notifier, journal: Journal) -> None:
    _stop_watching(run_id)
    start, end = downtime_window(journal, run_id)
    from journal.triage import issues

    notifier.send("completed", started_at=start, ended_at=end, open_issues=issues(journal, run_id, status="open"))


def _start_sweeps(setup: _Setup, run_id: str, mode: str, step: Step, notifier):
    """The straggler sweeper for a ``sweep = true`` step, or None when sweeps cannot run here."""
    from flows.sweeps import StragglerSweeper

    cfg, logger = setup.config, get_run_logger()
    if not cfg.sweeps.enabled:
        logger.info("step %s: straggler sweeps are switched off ([sweeps] enabled = false)", step.id)
        return None
    if cfg.crm_delta is None:
        setup.journal.add_event(run_id, "sweep-alert", f"no straggler sweeps during step {step.id}: [crm_delta] is "
                                "not configured (records made in the cloud now are not moved)", step_id=step.id)
        logger.warning("no straggler sweeps during step %s: [crm_delta] is missing", step.id)
        return None
    try:
        sweeper = StragglerSweeper(_action_context(setup, run_id, mode, step, logger), cfg.sweeps,
                                   users_notifier=notifier)
    except Exception as exc:  # noqa: BLE001 — no cutoff, a port taken…: say so, the test period goes on
        text = exc.message if isinstance(exc, MigrationError) else f"{type(exc).__name__}: {exc}"
        setup.journal.add_event(run_id, "sweep-alert", f"straggler sweeps cannot start: {text}", step_id=step.id)
        logger.warning("straggler sweeps cannot start: %s", redact(text))
        return None
    logger.info("straggler sweeps every %g min while step %s is open", cfg.sweeps.interval_minutes, step.id)
    return sweeper.start()


def _stop_sweeps(sweeper, journal: Journal, run_id: str, step: Step) -> None:
    """Stop the sweeper with one last sweep (what was created up to the confirmation moves too);
    whatever happens there must not undo the customer's confirmation."""
    try:
        sweeper.stop(final_sweep=True)
    except Exception as exc:  # noqa: BLE001
        journal.add_event(run_id, "sweep-alert", f"the last sweep of step {step.id} failed: {type(exc).__name__}",
                          step_id=step.id)


def _ask_rollback_if_due(setup: _Setup, run_id: str, mode: str) -> None:
    """At the ladder's decision threshold, the customer decides: continue the move or roll back."""
    journal, cfg = setup.journal, setup.config
    action = decision_due(journal, run_id, cfg.ladder)
    if action is None:
        return
    fires = [f"#{i.id} {i.title}" for i in open_fires(journal, run_id)]
    recorded = recorded_forecast(journal, run_id)
    prompt = ladder.decision_prompt(portal=cfg.migration.portal, box_portal=cfg.migration.box_portal,
                                    downtime_min=action.downtime_min, open_fires=fires,
                                    forecast_end=(recorded.downtime() or {}).get("end_p90") if recorded else None)
    answer = pause_flow_run(wait_for_input=RollbackDecision.with_initial_data(description=prompt),
                            timeout=cfg.prefect.pause_timeout_s, poll_interval=cfg.prefect.poll_interval_s,
                            key=f"rollback-decision-{len(journal.events(run_id, 'ladder'))}")
    ladder.record_fired(journal, run_id, action, f"{answer.decision} decided by {answer.decided_by} ({answer.role})"
                        + (f": {answer.comment}" if answer.comment else ""),
                        data={"decision": answer.decision, "by": answer.decided_by})
    if answer.decision == "roll-back":
        raise GateRejected(f"the customer ({answer.decided_by}, {answer.role}) decided to roll back to the cloud after "
                           f"{action.downtime_min:.0f} min of downtime: {answer.comment or 'no comment'}",
                           fix="tell users to work in the cloud again (see the data-return plan); plan a new cutover")


# --- flows -------------------------------------------------------------------------------------

@flow(name="phase", flow_run_name="phase-{number}-{mode}", persist_result=False)
def run_phase(config: str, run_id: str, mode: str, number: int) -> dict:
    """One phase: its steps in runbook order, then the customer's sign-off gate."""
    setup = _setup(config)
    journal, runbook, cfg = setup.journal, setup.runbook, setup.config
    phase = runbook.phase(number)
    logger = get_run_logger()
    run = journal.get_run(run_id)
    done = journal.completed_steps(run_id)
    notifier = notifier_for(cfg, setup.secrets, journal, run_id, mode)
    _watch_downtime(setup, run_id, notifier)  # a resumed run may be inside the downtime already
    for step in phase.steps:
        if step.id in done:
            logger.info("step %s already done (%s by %s): not redone", step.id, done[step.id].actual_end, done[step.id].actor)
            continue
        _ask_rollback_if_due(setup, run_id, mode)
        if step.notice == "announcement":
            _announce(setup, run_id, notifier, runbook)
        attempt = journal.attempts_of(run_id, step.id) + 1
        execution_id = journal.start_step(
            run_id, step_id=step.id, phase=step.phase, seq=runbook.seq(step.id), title=step.title, owner=step.owner,
            urgency=step.urgency, action=step.action, planned_duration_s=step.planned_s,
            planned_start=_planned_start(run.created_at, runbook, step), downtime=step.downtime,
            flow_run_id=_flow_run_id(),
        )
        sections = []
        if step.verify:
            checked = verify_before(config, run_id, mode, step.id)
            sections.append(checked["markdown"])
            swept = sweeps_markdown(journal, run_id)
            if swept:
                sections.append(swept)
        confirmation = None
        if step.is_manual:
            form = ManualStepInput.with_initial_data(
                description=manual_step_prompt(step, mode=mode, portal=cfg.migration.portal, attempt=attempt,
                                               extra_sections=sections))
            sweeper = _start_sweeps(setup, run_id, mode, step, notifier) if step.sweep else None
            try:
                answer = pause_flow_run(wait_for_input=form, timeout=cfg.prefect.pause_timeout_s,
                                        poll_interval=cfg.prefect.poll_interval_s,
                                        key=f"step-{step.slug}-attempt-{attempt}")
            finally:
                if sweeper is not None:
                    _stop_sweeps(sweeper, journal, run_id, step)
            confirmation = answer.model_dump(include=set(ManualStepInput.model_fields))
        step_task = run_step.with_options(
            name=f"step {step.id}", task_run_name=f"{step.id} {step.title}",
            tags=[f"owner:{step.owner}", f"phase:{step.phase}", f"urgency:{step.urgency}",
                  "manual" if step.is_manual else f"action:{step.action}"],
        )
        try:
            step_task(config, run_id, mode, step.id, execution_id, confirmation)
        finally:
            _publish_phase_table(journal, run_id, phase)
        if step.downtime == "start":
            _downtime_started(setup, run_id, notifier, runbook)
        elif step.downtime == "end":
            _downtime_ended(run_id, notifier, journal)

    if number in journal.approved_phases(run_id):
        logger.info("phase %s was already signed off: not asked again", number)
        return {"phase": number, "decision": "approve", "resumed": True}
    return _ask_gate(config, setup, run_id, mode, phase)


MAX_GATE_ASKS = 10  # approvals that cannot be taken (risks not accepted) are asked again, within a bound


def _gate_asks(journal: Journal, run_id: str, phase: int) -> int:
    signed = sum(1 for s in journal.signoffs(run_id) if s.phase == phase)
    refused = sum(1 for e in journal.events(run_id, kind="gate-refused") if e.data.get("phase") == phase)
    return signed + refused


def _ask_gate(config: str, setup: _Setup, run_id: str, mode: str, phase: Phase) -> dict:
    journal, cfg = setup.journal, setup.config
    sections, must_accept, decide_first = [], [], []
    if phase.number == 1:
        register = load_risks(cfg.runbook.risks)
        statuses = {k: v.status for k, v in risk_statuses(journal, run_id).items()}
        sections.append("Risk register:\n\n" + register.to_markdown(statuses))
        must_accept = [r.id for r in register.needing_acceptance]
        decide_first = [f"accept **{r.id}** ({r.title}: {r.impact} impact, no mitigation) — tick "
                        f"*accept unmitigated risks* — or reject the phase" for r in register.needing_acceptance]
    refused_reason = None
    checked = [s for s in phase.steps if s.verify]
    for _ in range(MAX_GATE_ASKS):
        attempt = 1 + _gate_asks(journal, run_id, phase.number)
        verification = []
        if checked:  # checks again at every ask: a fixed fire closes here, what broke since shows here
            verification = [verify_before(config, run_id, mode, checked[-1].id, f"gate-{phase.number}")["markdown"]]
        table = markdown_table(phase_rows(journal, run_id, phase.number), SUMMARY_COLUMNS)
        sections_now = [*sections, *verification, gate_issues_markdown(journal, run_id),
                        sweeps_markdown(journal, run_id)]
        sections_now = [x for x in sections_now if x]
        fires = open_fires(journal, run_id)
        decide_now = decide_first + ([f"{len(fires)} **fire(s)** open: approval is refused until they are resolved"]
                                     if fires else [])
        form_cls = GateSignOffAcceptingRisks if must_accept else GateSignOff
        form = form_cls.with_initial_data(description=gate_prompt(
            phase, mode=mode, portal=cfg.migration.portal, journal_table_md=table, extra_sections=sections_now,
            decide_first=decide_now,
            refused_reason=refused_reason))
        answer = pause_flow_run(wait_for_input=form, timeout=cfg.prefect.pause_timeout_s,
                                poll_interval=cfg.prefect.poll_interval_s, key=f"gate-{phase.number}-attempt-{attempt}")
        result = record_gate(config, run_id, phase.number, answer.model_dump(include=set(form_cls.model_fields)),
                             must_accept)
        if result["decision"] == "approve":
            return result
        refused_reason = result["reason"]
    raise FatalError(f"the gate of phase {phase.number} was answered {MAX_GATE_ASKS} times without a valid decision",
                     fix="approve with the required acceptances, or reject; then re-run the migration")


@flow(name="migration", flow_run_name="migration-{mode}", persist_result=False)
def migration(config: str, mode: Literal["rehearsal", "cutover"] = "rehearsal", new_run: bool = False) -> dict:
    """Run the migration runbook (phases 1–3) for the portal in ``config``.

    Args:
        config: path of the TOML configuration file.
        mode: ``rehearsal`` (the first backup: find problems, measure) or ``cutover`` (the real move).
        new_run: start a fresh journal run even if the last run of this mode did not finish.
    """
    setup = _setup(config)
    cfg, journal, runbook = setup.config, setup.journal, setup.runbook
    logger = get_run_logger()
    run, previous_flow_run = journal.open_run(name=cfg.migration.name, portal=cfg.migration.portal, mode=mode,
                                    timezone=cfg.migration.timezone, config_snapshot=cfg.snapshot(),
                                    flow_run_id=_flow_run_id(), new=new_run)
    if previous_flow_run is not None:
        _retire_flow_run(previous_flow_run, superseded_by=_flow_run_id())
        stale = journal.close_stale_steps(run.id, "interrupted: the previous run stopped before this step finished")
        journal.add_event(run.id, "resume", f"run resumed (attempt {run.attempts}); {stale} interrupted step(s) closed")
        logger.info("resuming migration run %s (attempt %s)", run.id, run.attempts)
    else:
        journal.add_event(run.id, "start", f"{mode} of {cfg.migration.portal} started")
        logger.info("started migration run %s (%s)", run.id, mode)
    SERVICES.setdefault(run.id, SERVICES.get("*", {}))
    if mode == "cutover" and previous_flow_run is None:
        _forecast_cutover(setup, run.id)
    out_dir = Path(cfg.journal.out_dir)
    try:
        for phase in runbook.phases:
            run_phase(config, run.id, mode, phase.number)
    except GateRejected as exc:
        journal.finish_run(run.id, "rejected", exc.message)
        _write_outputs(setup, run.id, out_dir)
        raise
    except BaseException as exc:
        detail = exc.message if isinstance(exc, MigrationError) else f"{type(exc).__name__}: {exc}"
        journal.finish_run(run.id, "failed", detail)
        _write_outputs(setup, run.id, out_dir)
        raise
    finally:
        _stop_watching(run.id)
    journal.finish_run(run.id, "completed")
    start, end = downtime_window(journal, run.id)
    if start and end:
        final_summary(notifier_for(cfg, setup.secrets, journal, run.id, mode), journal, run.id)
    paths = _write_outputs(setup, run.id, out_dir)
    logger.info("migration run %s completed; journal and report written to %s", run.id, out_dir)
    return {"run_id": run.id, "status": "completed", "files": {k: str(v) for k, v in paths.items()}}


def _forecast_cutover(setup: _Setup, run_id: str) -> None:
    """Plan the cutover from the latest completed rehearsal of the same migration, if there is one."""
    logger = get_run_logger()
    rehearsals = [r for r in setup.journal.runs()
                  if r.name == setup.config.migration.name and r.mode == "rehearsal" and r.status == "completed"]
    if not rehearsals:
        logger.warning("no completed rehearsal of %r in the journal: the cutover runs on the plan alone",
                       setup.config.migration.name)
        return
    forecast = forecast_from(setup.journal, rehearsals[-1].id, runbook=setup.runbook, section=setup.config.forecast)
    forecast.record(setup.journal, run_id)
    logger.info("cutover forecast from rehearsal %s: ends %s (P50), %s (P90)", rehearsals[-1].id,
                forecast.end_p50, forecast.end_p90)


def _write_outputs(setup: _Setup, run_id: str, out_dir: Path) -> dict[str, Path]:
    """The journal exports and the auditor's report, on disk and as a Prefect artifact.

    They go to ``out_dir/runs/<run>/`` (kept per run) and to ``out_dir`` itself (the latest run).
    """
    paths = export_run(setup.journal, run_id, out_dir)
    export_run(setup.journal, run_id, out_dir / "runs" / run_id)
    try:
        write_report(setup.journal, run_id, out_dir / "runs" / run_id)
        paths.update(write_report(setup.journal, run_id, out_dir))
        create_markdown_artifact(report_markdown(setup.journal, run_id), key=f"report-{run_id}",
                                 description=f"Migration report of run {run_id}")
    except Exception as exc:  # the journal is the record; a report failure is logged, never fatal
        get_run_logger().warning("could not write the report of run %s: %s", run_id, redact(exc))
    return paths


__all__ = ["migration", "run_phase", "run_step", "record_gate", "FatalError"]

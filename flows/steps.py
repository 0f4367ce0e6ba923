"""One runbook step: journaled, checked, confirmed (manual) or done (automated).

:func:`do_step` is flow code, called by the phase flow for each step not yet done: it opens the
step's journal row, runs the checks a ``verify = true`` step shows in its prompt, pauses for a
manual step's confirmation (with straggler sweeps running meanwhile for a ``sweep = true`` step),
then runs the :func:`run_step` task, which does or records the step. The tasks take the run's
context, so they are never cached and their results are not persisted.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from checklists.runbook import Phase, Step
from connectors.errors import MigrationError, StepNotDone
from connectors.secrets import redact
from flows import presync
from flows.actions import get_action
from flows.actions.verify import verify as verify_checks
from flows.downtime import announce, ask_rollback_if_due, downtime_ended, downtime_started
from flows.forms import ManualStepInput, manual_step_prompt
from flows.outputs import publish_phase_table, publish_review, publish_verification
from flows.run_context import RunContext, flow_run_id
from flows.signing import ask_step
from journal.events import EventKind
from journal.sweeps import sweeps_markdown
from journal.triage import report_issue
from journal.verification import verification_brief, verification_markdown

AUTOMATED_ACTOR = "cloud2box (automated)"


@task(cache_policy=NO_CACHE, persist_result=False, tags=["action:verify_migration"])
def verify_before(run: RunContext, step_id: str, label: str | None = None) -> dict:
    """The post-migration checks before a ``verify = true`` step (or, ``label`` "gate-2", before a
    gate): journaled, failures become issues (a fire blocks the gate), a check that passes again
    resolves its issue."""
    step = run.step(step_id)
    result, changes = verify_checks(run.action_context(step, get_run_logger(), label=label))
    publish_verification(run, step, label, result)
    return {"markdown": verification_markdown(result), "brief": verification_brief(result, fires_listed=bool(label)),
            "summary": result.summary(), **changes}


@task(cache_policy=NO_CACHE, persist_result=False)
def run_step(run: RunContext, step_id: str, execution_id: int, confirmation: dict | None = None) -> dict:
    """Do (automated) or record (manual) one runbook step; the journal row is final on return."""
    journal, run_id = run.journal, run.run_id
    step = run.step(step_id)
    logger = get_run_logger()
    if step.is_manual:
        answer = ManualStepInput.model_validate(confirmation or {})
        evidence = {"evidence_link": answer.evidence_link} if answer.evidence_link else {}
        if answer.outcome != "done":
            journal.finish_step(execution_id, outcome="failed", actor=answer.done_by, notes=answer.notes,
                                error=f"reported NOT done by {answer.done_by}", evidence=evidence)
            raise StepNotDone(f"step {step.id} ({step.title}) was reported NOT done by {answer.done_by}: "
                              f"{answer.notes or 'no notes'}",
                              fix="finish the step, then re-run the migration: it resumes at this step")
        for line in filter(None, (ln.strip() for ln in answer.issues.splitlines())):
            issue = report_issue(journal, run_id, title=line, reported_by=answer.done_by, step_id=step.id, source="form")
            logger.warning("issue #%s reported at step %s: [%s] %s", issue.id, step.id, issue.severity, redact(line))
        row = journal.finish_step(execution_id, outcome="done", actor=answer.done_by, notes=answer.notes,
                                  evidence=evidence)
        logger.info("step %s confirmed done by %s", step.id, redact(answer.done_by))
    else:
        action = get_action(step.action)
        try:
            result = action(run.action_context(step, logger))
        except Exception as exc:
            journal.finish_step(execution_id, outcome="failed", actor=AUTOMATED_ACTOR,
                                error=f"{type(exc).__name__}: {exc}")
            raise
        row = journal.finish_step(execution_id, outcome="done", actor=AUTOMATED_ACTOR, notes=result.summary,
                                  evidence=result.evidence, counters=result.counters)
        logger.info("step %s done: %s", step.id, redact(result.summary))
    if step.downtime:
        journal.add_event(run_id, EventKind(f"downtime-{step.downtime}"),
                          f"user downtime {'starts' if step.downtime == 'start' else 'ends'} (step {step.id})",
                          step_id=step.id)
    return {"step": step.id, "outcome": row.outcome, "duration_s": row.duration_s}


def do_step(run: RunContext, phase: Phase, step: Step) -> None:
    """The step, from its journal row to the notices its end calls for (see the module doc)."""
    journal = run.journal
    ask_rollback_if_due(run)
    if step.notice == "announcement":
        announce(run)
    execution_id = journal.start_step(
        run.run_id, step_id=step.id, phase=step.phase, seq=run.runbook.seq(step.id), title=step.title,
        owner=step.owner, urgency=step.urgency, action=step.action, planned_duration_s=step.planned_s,
        planned_start=run.planned_start(step), downtime=step.downtime, flow_run_id=flow_run_id(),
    )  # after a suspension the same flow run takes its open row up again: the same attempt, the same pause key
    attempt = journal.attempts_of(run.run_id, step.id)
    if step.presync:
        presync.keep_running(run, step)
    else:
        presync.stop(run, step.id)  # before 2.11 writes the box: one writer at a time
    sections, review = [], []  # the prompt's short sections; the full review's (heading, Markdown)
    if step.presync and run.presyncer:
        sections.append(presync.prompt_section(run, step))
        review.append(("Pre-sync", sections[-1]))
    if step.verify:  # an automated step is checked too: the result is journaled, issues opened
        sections.append(verify_before(run, step.id)["brief"])
        swept = sweeps_markdown(run.journal, run.run_id, brief=True)
        if swept:
            sections.append(swept)
            review.append(("Straggler sweeps", sweeps_markdown(run.journal, run.run_id)))
    confirmation = None
    if step.is_manual:
        link = publish_review(run, phase, f"step {step.id} (attempt {attempt})", review)
        confirmation = _confirmation(run, step, attempt, sections, review_link=link)
    if step.presync:
        presync.halt_if_last(run, step)  # the users stop now: no new pass, a running one cut short
    step_task = run_step.with_options(
        name=f"step {step.id}", task_run_name=f"{step.id} {step.title}",
        tags=[f"owner:{step.owner}", f"phase:{step.phase}", f"urgency:{step.urgency}",
              "manual" if step.is_manual else f"action:{step.action}"],
    )
    try:
        step_task(run, step.id, execution_id, confirmation)
    finally:
        publish_phase_table(run, phase)
    if step.downtime == "start":
        downtime_started(run)
    elif step.downtime == "end":
        downtime_ended(run)


def _confirmation(run: RunContext, step: Step, attempt: int, sections: list[str], review_link: str | None = None) -> dict:
    """Pause for the person's confirmation of a manual step; ``sections`` go into its prompt, which
    links the phase's full review."""
    prompt = manual_step_prompt(step, mode=run.mode, portal=run.config.migration.portal, attempt=attempt,
                                extra_sections=sections, review_link=review_link)
    sweeper = run.sweeper = _start_sweeps(run, step) if step.sweep else None
    try:  # a roster person answers; the one who must act is told (flows/signing.py)
        return ask_step(run, step, ManualStepInput, prompt, key=f"step-{step.slug}-attempt-{attempt}")
    finally:
        run.sweeper = None
        if sweeper is not None:
            _stop_sweeps(run, sweeper, step)


def _start_sweeps(run: RunContext, step: Step):
    """The straggler sweeper for a ``sweep = true`` step, or None when sweeps cannot run here."""
    from flows.sweeps import StragglerSweeper

    cfg, logger = run.config, get_run_logger()
    if not cfg.sweeps.enabled:
        logger.info("step %s: straggler sweeps are switched off ([sweeps] enabled = false)", step.id)
        return None
    if cfg.crm_delta is None:
        run.journal.add_event(run.run_id, EventKind.SWEEP_ALERT, f"no straggler sweeps during step {step.id}: [crm_delta] is "
                              "not configured (records made in the cloud now are not moved)", step_id=step.id)
        logger.warning("no straggler sweeps during step %s: [crm_delta] is missing", step.id)
        return None
    try:
        sweeper = StragglerSweeper(run.action_context(step, logger), cfg.sweeps, users_notifier=run.notifier)
    except Exception as exc:  # noqa: BLE001 — no cutoff, a port taken…: say so, the test period goes on
        text = exc.message if isinstance(exc, MigrationError) else f"{type(exc).__name__}: {exc}"
        run.journal.add_event(run.run_id, EventKind.SWEEP_ALERT, f"straggler sweeps cannot start: {text}", step_id=step.id)
        logger.warning("straggler sweeps cannot start: %s", redact(text))
        return None
    logger.info("straggler sweeps every %g min while step %s is open", cfg.sweeps.interval_minutes, step.id)
    return sweeper.start()


def _stop_sweeps(run: RunContext, sweeper, step: Step) -> None:
    """Stop the sweeper with one last sweep (what was created up to the confirmation moves too);
    whatever happens there must not undo the customer's confirmation."""
    try:
        sweeper.stop(final_sweep=True)
    except Exception as exc:  # noqa: BLE001
        run.journal.add_event(run.run_id, EventKind.SWEEP_ALERT, f"the last sweep of step {step.id} failed: {type(exc).__name__}",
                              step_id=step.id)

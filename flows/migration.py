"""The migration runbook as a Prefect flow: ``migration`` runs the phases, one after the other.

Each runbook step is a Prefect task tagged ``owner:<role>``, ``phase:<n>``, ``urgency:<u>``.
A manual step pauses the run for a typed confirmation; a phase gate pauses for the customer's
sign-off. The journal decides what is already done, so a re-run resumes where the last one
stopped and never asks twice for what was confirmed.

The phases are parts of the one flow run, not subflows: Prefect suspends only a deployment's
top-level run, and a run waiting days for a person should hold no process (flows/signing.py,
``wait_for_answer``). A suspended run is started again by the answer, from its top: the journal
skips what is done, and the step or gate it waited at reads the answer given.

The parts: :mod:`flows.run_context` (the set-up and the run's context, built once per run),
:mod:`flows.steps` (one step), :mod:`flows.gates` (the sign-off), :mod:`flows.downtime` (the
users' downtime) and :mod:`flows.outputs` (artifacts, exports, the report).
"""

from __future__ import annotations

from prefect import flow, get_run_logger, tags, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import Pause

from connectors.errors import FatalError, GateRejected, MigrationError
from flows.access_check import Stage, require_access
from flows.config import Mode
from flows.downtime import final_summary, stop_watching, watch_downtime
from flows.gates import ask_gate, record_gate
from flows.outputs import write_outputs
from flows.run_context import RunContext, build_setup, check_setup, customer_tag, open_run, refuse_second_run
from flows import presync
from flows.signing import tell_engineers
from flows.steps import do_step, run_step
from journal.events import EventKind
from journal.export import downtime_window


@task(name="check access", cache_policy=NO_CACHE, persist_result=False, tags=["action:check_access"])
def check_access(run: RunContext, stage: Stage, step_id: str | None = None) -> str:
    """``cloud2box check`` inside the run: at its start and right before the users' downtime. A failed
    check stops the run here, before anything irreversible, with each fix in the state message."""
    logger = get_run_logger()
    try:
        report = require_access(run.config, run.secrets, stage=stage)
    except MigrationError as exc:
        run.journal.add_event(run.run_id, EventKind.PREFLIGHT, f"access check ({stage}) failed: {exc.message}",
                              data={"fix": exc.fix or ""}, step_id=step_id)
        raise
    run.journal.add_event(run.run_id, EventKind.PREFLIGHT, f"access check ({stage}): {report.summary()}",
                          data={"rows": [r.__dict__ for r in report.rows]}, step_id=step_id)
    try:
        create_table_artifact([r.__dict__ for r in report.rows], key=f"access-{run.run_id}-{stage}".lower(),
                              description=f"Access check ({stage}): {report.summary()}")
    except Exception as exc:  # noqa: BLE001 — the journal holds the rows; the artifact is a view
        logger.warning("could not publish the access check artifact: %s", exc)
    logger.info("access check (%s): %s", stage, report.summary())
    return report.summary()


def run_phase(run: RunContext, number: int) -> dict:
    """One phase: its steps in runbook order, then the customer's sign-off gate."""
    journal, logger = run.journal, get_run_logger()
    phase = run.runbook.phase(number)
    done = journal.completed_steps(run.run_id)
    watch_downtime(run)  # a resumed run may be inside the downtime already
    for step in phase.steps:
        if step.id in done:
            logger.info("step %s already done (%s by %s): not redone", step.id, done[step.id].actual_end, done[step.id].actor)
            continue
        if step.downtime == "start":  # the last moment before users stop: every credential once more
            check_access(run, "before-downtime", step.id)
        do_step(run, phase, step)
    if number in journal.approved_phases(run.run_id):
        logger.info("phase %s was already signed off: not asked again", number)
        return {"phase": number, "decision": "approve", "resumed": True}
    return ask_gate(run, phase)


def run_name(config: str, mode: str) -> str:
    """A migration flow run's name: ``<[migration] name> · <mode> · <YYYY-MM-DD HH:MM>`` in the
    migration's time zone (UTC, named ``migration``, when the config cannot be read: the run
    itself then fails with the config's problems)."""
    import datetime as dt
    from zoneinfo import ZoneInfo

    from flows.config import load_config

    try:
        cfg = load_config(config)
        name, tz = cfg.migration.name, ZoneInfo(cfg.migration.timezone)
    except Exception:  # noqa: BLE001 — a name must not hide the config's own error message
        name, tz = "migration", dt.timezone.utc
    return f"{name} · {mode} · {dt.datetime.now(tz):%Y-%m-%d %H:%M}"


def _flow_run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    return run_name(str(params.get("config", "")), str(params.get("mode", "rehearsal")))


def _tag_flow_run(tag: str) -> None:
    """Add ``tag`` to the current flow run (a run started from a terminal was created without it)."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx and ctx.flow_run and tag not in (ctx.flow_run.tags or []):
        with get_client(sync_client=True) as client:
            client.update_flow_run(ctx.flow_run.id, tags=[*(ctx.flow_run.tags or []), tag])


# the roster's engineers are told when the run fails or crashes (why hooks and not automations: flows/signing.py)
@flow(name="migration", flow_run_name=_flow_run_name, persist_result=False, on_failure=[tell_engineers],
      on_crashed=[tell_engineers])
def migration(config: str, mode: Mode = "rehearsal", new_run: bool = False) -> dict:
    """Run the migration runbook (phases 1–3) for the portal in ``config``.

    Args:
        config: path of the TOML configuration file.
        mode: ``rehearsal`` (the first backup: find problems, measure) or ``cutover`` (the real move).
        new_run: start a fresh journal run even if the last run of this mode did not finish.

    Raises:
        FatalError: another run of the same customer is live (nothing of it is touched).
    """
    setup = build_setup(config)
    tag = customer_tag(setup.config.migration.name)
    _tag_flow_run(tag)
    refuse_second_run(setup.config)
    # every phase subflow and task run created inside carries the customer's tag
    with tags(tag):
        return _migrate(setup, mode, new_run)


def _migrate(setup, mode: Mode, new_run: bool) -> dict:
    logger = get_run_logger()
    run = open_run(setup, mode, new_run)
    journal, run_id = run.journal, run.run_id
    try:
        check_access(run, "start")
        for phase in run.runbook.phases:
            logger.info("phase %s — %s", phase.number, phase.title)
            run_phase(run, phase.number)
    except Pause:  # suspended waiting for a person: the answer starts this flow run again
        raise
    except GateRejected as exc:
        journal.finish_run(run_id, "rejected", exc.message)
        write_outputs(run)
        raise
    except BaseException as exc:
        detail = exc.message if isinstance(exc, MigrationError) else f"{type(exc).__name__}: {exc}"
        journal.finish_run(run_id, "failed", detail)
        write_outputs(run)
        raise
    finally:
        stop_watching(run)
        try:
            presync.stop(run, None, wait_s=60)  # the run ends: a pass still running is left to the process's end
        except MigrationError as exc:
            logger.warning("%s", exc.message)
    journal.finish_run(run_id, "completed")
    start, end = downtime_window(journal, run_id)
    if start and end:
        final_summary(run.notifier, journal, run_id)
    paths = write_outputs(run)
    logger.info("migration run %s completed; journal and report written to %s", run_id, run.out_dir)
    return {"run_id": run_id, "status": "completed", "files": {k: str(v) for k, v in paths.items()}}


__all__ = ["migration", "run_phase", "run_step", "record_gate", "check_setup", "FatalError"]

"""A run's set-up, built once, and the context every phase, step and gate of the run shares.

:func:`build_setup` loads and checks everything a run needs (config, secrets, runbook, the
actions' requirements); :func:`open_run` opens (or resumes) the journal run and returns the
:class:`RunContext`. The ``migration`` flow builds it once and hands the same object to its phases
and their tasks, so nothing is loaded again per step and the run's handles (the notifier, the
downtime watcher, the pre-sync) live in the context, not in module globals.

This holds only in-process: tasks run on the default task runner. A task sent to another process
(Dask, Ray) would not get the context. A run suspended while it waits for a person builds it again
when the answer starts it (:func:`open_run` takes the same journal run up).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import socket
from typing import Any
from dataclasses import dataclass, field
from pathlib import Path

from prefect import get_run_logger
from prefect.context import FlowRunContext
from pydantic import SecretStr

from checklists.runbook import Runbook, Step, load_runbook
from connectors.errors import ConfigError, FatalError
from connectors.http_download.disk import make_private_dir
from connectors.secrets import install_log_redaction
from flows.actions import MANUAL, ActionContext, known_actions, missing_requirements
from flows.config import Config, Mode, load_config_and_secrets, journal_chain_key
from flows.downtime import DowntimeWatcher, notifier_for
from flows.outputs import ProgressArtifact
from flows.signing import register_contacts, require_roster, roster_problems
from journal.events import EventKind
from journal.forecast import forecast_from
from journal.notices import Notifier
from journal.store import Journal


@dataclass
class Setup:
    """What a run needs, loaded and checked: any problem is a ConfigError before anything happens."""

    config: Config
    secrets: dict[str, SecretStr]
    runbook: Runbook
    journal: Journal


def _read_prefect_secret(name: str) -> str:
    from prefect.blocks.system import Secret

    return Secret.load(name).get()


def build_setup(config_path: str) -> Setup:
    """Load the config, resolve its secrets, load the runbook and check what its actions need."""
    install_log_redaction()
    # one pass: schema, secrets and what the runbook's actions need, all in one ConfigError
    config, secrets, problems = load_config_and_secrets(config_path, prefect_reader=_read_prefect_secret)
    if config is None:
        raise ConfigError(str(config_path), problems)
    runbook = load_runbook(config.runbook.path, known_actions=known_actions())
    unknown = sorted(set(config.runbook.manual_steps) - {s.id for s in runbook.steps})
    problems += [f"[runbook.manual_steps] no step {u} in the runbook" for u in unknown]
    runbook = runbook.with_actions({step_id: MANUAL for step_id in set(config.runbook.manual_steps) - set(unknown)})
    problems += missing_requirements(runbook, config)
    problems += roster_problems(config, runbook)
    register_contacts(config)
    chain_key = None
    try:
        chain_key = journal_chain_key(config, secrets)
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        raise ConfigError(config.source, problems)
    return Setup(config, secrets, runbook, Journal(config.journal.url, chain_key=chain_key))


def check_setup(config_path: str) -> None:
    """Validate everything a run needs (config, secrets, runbook, action requirements) up front."""
    build_setup(config_path)


def flow_run_id() -> str | None:
    """The id of the Prefect flow run we are in (None outside a flow)."""
    ctx = FlowRunContext.get()
    return str(ctx.flow_run.id) if ctx and ctx.flow_run else None


# repr=False: the generated repr would print the config and the secrets' names wherever a
# context is logged or shown as a task's input (tests/flows/test_run_context.py).
@dataclass(eq=False, repr=False)
class RunContext:
    """One migration run: its set-up, its journal row, and the handles it holds while it runs."""

    journal: Journal
    config: Config
    secrets: dict[str, SecretStr]
    runbook: Runbook
    run_id: str
    mode: Mode
    started_at: dt.datetime  # the journal run's creation: the plan's clock starts here
    notifier: Notifier
    watcher: DowntimeWatcher | None = field(default=None)  # while the user downtime lasts
    presyncer: Any = field(default=None)  # flows.presync.PreSyncer while the pre-sync runs (phase 2)
    sweeper: Any = field(default=None)  # flows.sweeps.StragglerSweeper while a step's sweeps run
    # artifact key → id of the artifact this process created for it: later publications update it in
    # place (flows.outputs.publish_in_place), so the run's Artifacts tab holds one per key, not one per step
    artifact_ids: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"RunContext(run_id={self.run_id!r}, mode={self.mode!r})"

    @property
    def out_dir(self) -> Path:
        return Path(self.config.journal.out_dir)

    def step(self, step_id: str) -> Step:
        return next(s for s in self.runbook.steps if s.id == step_id)

    def planned_start(self, step: Step) -> dt.datetime:
        """When the plan has ``step`` start: the run's start plus the planned time of every step before."""
        before = self.runbook.steps[: self.runbook.seq(step.id)]
        return self.started_at + dt.timedelta(seconds=sum(s.planned_s for s in before))

    def action_context(self, step: Step, logger, *, label: str | None = None) -> ActionContext:
        """What an automated action of ``step`` gets; ``label`` journals it under another name ("gate-2")."""
        work_dir = self.out_dir / "runs" / self.run_id
        make_private_dir(work_dir)  # the step's files hold customer data
        return ActionContext(
            config=self.config, secrets=self.secrets, journal=self.journal, run_id=self.run_id,
            step_id=label or step.id, mode=self.mode, work_dir=work_dir, logger=logger,
            progress=ProgressArtifact(f"progress-{self.run_id}-step-{step.slug}", f"Step {step.id} {step.title}"),
        )


def open_run(setup: Setup, mode: Mode, new_run: bool) -> RunContext:
    """Start the journal run of ``mode``, or resume the last unfinished one (its stale flow run
    is retired and its interrupted steps closed). A new cutover is planned from the last rehearsal."""
    cfg, journal, logger = setup.config, setup.journal, get_run_logger()
    require_roster(cfg, mode)  # a cutover's sign-offs are bound to named people
    current = flow_run_id()
    run, previous_flow_run = journal.open_run(name=cfg.migration.name, portal=cfg.migration.portal, mode=mode,
                                              timezone=cfg.migration.timezone, config_snapshot=cfg.snapshot(),
                                              flow_run_id=current, new=new_run)
    if previous_flow_run is not None and previous_flow_run == current:
        # this flow run was suspended waiting for a person and started again by the answer: the step
        # or gate it waited at is still open (steps.do_step takes its row up again)
        journal.add_event(run.id, EventKind.RESUME, "run woken: the answer it waited for without a process came")
        logger.info("migration run %s goes on where it waited (flow run %s started again)", run.id, current)
    elif previous_flow_run is not None:
        _retire_flow_run(previous_flow_run, superseded_by=current)
        stale = journal.close_stale_steps(run.id, "interrupted: the previous run stopped before this step finished")
        journal.add_event(run.id, EventKind.RESUME, f"run resumed (attempt {run.attempts}); {stale} interrupted step(s) closed")
        logger.info("resuming migration run %s (attempt %s)", run.id, run.attempts)
    else:
        journal.add_event(run.id, EventKind.START, f"{mode} of {cfg.migration.portal} started")
        logger.info("started migration run %s (%s)", run.id, mode)
    context = RunContext(journal=journal, config=cfg, secrets=setup.secrets, runbook=setup.runbook, run_id=run.id,
                         mode=mode, started_at=run.created_at,
                         notifier=notifier_for(cfg, setup.secrets, journal, run.id, mode))
    if mode == "cutover" and previous_flow_run is None:
        _forecast_cutover(context)
    return context


def _forecast_cutover(run: RunContext) -> None:
    """Plan the cutover from the latest completed rehearsal of the same migration, if there is one."""
    logger, name = get_run_logger(), run.config.migration.name
    rehearsals = [r for r in run.journal.runs() if r.name == name and r.mode == "rehearsal" and r.status == "completed"]
    if not rehearsals:
        logger.warning("no completed rehearsal of %r in the journal: the cutover runs on the plan alone", name)
        return
    pre = run.config.presync
    forecast = forecast_from(run.journal, rehearsals[-1].id, runbook=run.runbook, section=run.config.forecast,
                             presync=(pre.interval_minutes * 60, pre.overlap_seconds) if pre.enabled else None)
    forecast.record(run.journal, run.run_id)
    logger.info("cutover forecast from rehearsal %s: ends %s (P50), %s (P90)", rehearsals[-1].id,
                forecast.end_p50, forecast.end_p90)


def _retire_flow_run(flow_run_id: str, superseded_by: str | None) -> None:
    """Send what an older process left paused or running to Cancelling, so nobody answers a dead prompt
    and the runner or worker that started it stops its process.

    Cancelling, not Cancelled: Cancelled is only a label, the process behind it keeps running (and
    polling its prompts). The runner and the worker watch their flow runs for Cancelling, kill the
    process and then set Cancelled themselves (prefect/runner/runner.py ``_cancel_run``; a process
    already gone is marked Cancelled too). A run started from a terminal has no runner: its process
    is proven gone (same host, pid dead: :func:`process_gone`) before we get here, and then Cancelled
    is set directly, since nothing would ever move it on; the server's cancellation clean-up would
    only do so after ``cancelling_timeout_seconds`` (300 s).
    """
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.states import Cancelled, Cancelling

    if not flow_run_id or flow_run_id == superseded_by:
        return  # a retry of the same flow run: nothing to retire
    logger = get_run_logger()
    try:
        with get_client(sync_client=True) as client:
            old = client.read_flow_run(UUID(flow_run_id))
            children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[old.id])))
            nothing_to_stop = old.deployment_id is None and process_gone(old.infrastructure_pid)
            for fr in [*children, old]:
                if fr.state and not fr.state.is_final():
                    message = f"superseded by flow run {superseded_by} (resume)"
                    client.set_flow_run_state(fr.id, Cancelled(message=message) if nothing_to_stop
                                              else Cancelling(message=message), force=True)
                    logger.info("retired stale flow run %s (%s)", fr.name, fr.state.type.value)
    except Exception as exc:  # the old run may be gone from a cleaned-up server; resuming matters more
        logger.warning("could not retire the previous flow run %s: %s", flow_run_id, exc)


# One live run per customer -------------------------------------------------------------------

LIVE_STATES = ("RUNNING", "PAUSED", "PENDING", "SCHEDULED")


def customer_slug(name: str) -> str:
    """``[migration] name`` as deployment names and tags use it: lower-case ``[a-z0-9-]``."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug or "migration"


def customer_tag(name: str) -> str:
    """The tag on every flow, subflow and task run of this customer: ``customer:<slug>``."""
    return f"customer:{customer_slug(name)}"


def process_gone(infrastructure_pid: str | None) -> bool:
    """True only when ``host:pid`` names a process on this host that no longer exists.

    Another host's process, a run with no pid recorded or a bare pid (a process worker records one
    without its host) cannot be proven gone: False. (A pid reused by an unrelated process reads as
    alive: the safe side, the run is refused, not retired.)
    """
    host, _, pid = (infrastructure_pid or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def refuse_second_run(config: Config) -> None:
    """Refuse to start while another top-level flow run of the same customer is live; never touch it.

    Live: paused (waiting for a person), or running / pending / due-scheduled and started before this
    one (so two clicks at once leave exactly one run going, the first). A run whose process is proven
    gone (:func:`process_gone`) is not live: the resume retires it. Also records this process as the
    flow run's ``infrastructure_pid`` when the runner or worker did not, so a later start can tell a
    killed terminal run from a live one.

    Raises:
        FatalError: naming the live run, its state and what to do.
    """
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterParentTaskRunId, FlowRunFilterState,
                                                FlowRunFilterStateType, FlowRunFilterTags)
    from prefect.client.schemas.sorting import FlowRunSort

    ctx = FlowRunContext.get()
    if not ctx or not ctx.flow_run:
        return
    me, tag = ctx.flow_run, customer_tag(config.migration.name)
    with get_client(sync_client=True) as client:
        if not me.infrastructure_pid:
            client.update_flow_run(me.id, infrastructure_pid=f"{socket.gethostname()}:{os.getpid()}")
        others = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            tags=FlowRunFilterTags(all_=[tag]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(LIVE_STATES))),
            parent_task_run_id=FlowRunFilterParentTaskRunId(is_null_=True)),  # phases are counted by their parent
            sort=FlowRunSort.START_TIME_ASC, limit=50)
        mine = client.read_flow_run(UUID(str(me.id)))
    now = dt.datetime.now(dt.timezone.utc)
    for other in others:
        if other.id == mine.id or not other.state or process_gone(other.infrastructure_pid):
            continue
        earlier = (other.created, str(other.id)) < (mine.created, str(mine.id))
        state = other.state.type.value
        due = state != "SCHEDULED" or (other.expected_start_time is None or other.expected_start_time <= now)
        if state == "PAUSED" or (earlier and due):
            raise FatalError(
                f"{config.migration.name} already has a live run: flow run {other.name!r} ({other.id}) is "
                f"{other.state.name}. Only one run per customer at a time; this start was refused and that run "
                "was left as it is.",
                fix=f"wait until it finishes, or cancel it in the Prefect UI (Runs → {other.name} → Cancel) or "
                    f"with `prefect flow-run cancel {other.id}`, then start again (a cancelled run resumes where "
                    "it stopped)")

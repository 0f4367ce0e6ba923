"""The pre-sync (issue 16): keep the box in step with the cloud while phase 2 waits for people.

From the first runbook step with ``presync = true`` (2.5, right after the portal set-up) until the
next step without it (2.11), a :class:`PreSyncer` thread runs a pass every ``[presync]
interval_minutes``: the straggler sweep's move (the idempotent importer, the echo filter, the loop
guard, the request budgets), without the stragglers (everyone still works in the cloud), the
moved records reconciled, and every ``deleted_scan_minutes`` the whole portal's IDs compared for
records deleted in the cloud. Passes are ``presync`` journal events; a failing pass is journaled
and alerted and never fails a step: 2.11 then moves from the last good pass, or everything since
the backup when there is none.

It only reads the cloud and writes the records it moves (each carries the source mark
``cloud2box``): the box's own test data (2.8) is never read for export, updated or deleted.

A pass must never write the box while 2.11 does (two writers make twins): the flow stops the
thread, waiting for a running pass to end, before 2.11 starts.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING

from prefect import get_run_logger

from connectors.errors import IntegrityError, MigrationError
from connectors.platform import SweepOutcome
from connectors.secrets import redact
from journal.events import EventKind
from journal.models import utcnow
from journal.presync import freeze_forecast, presync_markdown, presync_state, refresh_forecast

from .actions import ActionContext
from .actions.crm_delta import crm_clients, crm_section
from .config import PresyncSection
from .sweeps import StragglerSweeper

if TYPE_CHECKING:
    from checklists.runbook import Step
    from flows.run_context import RunContext

log = logging.getLogger("cloud2box.presync")

# A pass is bounded by its request budget; this bounds the wait for it when the freeze begins.
STOP_WAIT_S = 3600.0


class PreSyncer(StragglerSweeper):
    """The pre-sync passes of one run, in a thread (see the module doc)."""

    EVENT, ALERT, NOUN, NOUNS = EventKind.PRESYNC, EventKind.PRESYNC_ALERT, "pre-sync pass", "pre-sync passes"

    def __init__(self, ctx: ActionContext, section: PresyncSection, **kw) -> None:
        super().__init__(ctx, section, users_notifier=None, **kw)

    def _move(self, **kw) -> SweepOutcome:
        state = presync_state(self.ctx.journal, self.ctx.run_id)
        due = state.deleted_scanned_at is None or \
            (kw["now"] - state.deleted_scanned_at).total_seconds() >= self.section.deleted_scan_minutes * 60
        return self.crm.presync(self.cloud, self.box, self.idmap, self.history, scan_deleted=due,
                                proven=state.proven, **kw)

    def _announce(self, number: int, outcome: SweepOutcome) -> None:
        if outcome.stopped and self._budget is not None and self._budget.cancelled:
            log.info("%s %s cut short: %s", self.NOUN, number, self._budget.cancelled)  # expected: no alert
            return
        super()._announce(number, outcome)
        if outcome.failures:
            self._alert(f"{self.NOUN} {number} did not finish", "; ".join(outcome.failures[:3]),
                        "what it moved stays; the next pass starts again from the same point",
                        "look at the listed records; step 2.11 moves and proves the whole delta anyway")

    def halt(self, reason: str) -> None:
        """No more passes; a running one is cut short at its next request (what it wrote stays, it is
        journaled as stopped, and 2.11 moves from the last finished pass). Returns at once."""
        self._signal_stop()
        budget = self._budget
        if budget is not None:
            budget.cancel(reason)

    def stop(self, *, final_sweep: bool = False, wait_s: float | None = None) -> SweepOutcome | None:
        """Stop the thread and wait for a running pass (no final pass: 2.11 moves the rest). Raises
        when a pass is still writing after ``wait_s`` (default :data:`STOP_WAIT_S`): 2.11 must not
        write beside it."""
        self._signal_stop()
        wait_s = STOP_WAIT_S if wait_s is None else wait_s
        self._thread.join(timeout=wait_s)
        try:
            if self._thread.is_alive():
                raise IntegrityError(f"a pre-sync pass is still writing to the box after {wait_s:.0f} s",
                                     fix="look at the box and the journal; run step 2.11 again when the pass "
                                         "has ended (or the process was restarted): it continues safely")
            return None
        finally:
            if not self._thread.is_alive():
                self.cloud.session.close()
                self.box.session.close()


def start_presync(ctx: ActionContext, section: PresyncSection, *, crm_configured: bool) -> PreSyncer | None:
    """The pre-sync for a run, or None (journaled) when it is off or cannot run."""
    journal, run_id = ctx.journal, ctx.run_id
    if not section.enabled:
        log.info("pre-sync is switched off ([presync] enabled = false): step 2.11 moves the whole delta")
        return None
    if not crm_configured:
        journal.add_event(run_id, EventKind.PRESYNC_ALERT, "no pre-sync: [crm_delta] is not configured", step_id=ctx.step_id)
        return None
    try:
        syncer = PreSyncer(ctx, section)
    except Exception as exc:  # noqa: BLE001 — no cutoff yet, a bad secret…: 2.11 moves the whole delta
        text = exc.message if isinstance(exc, MigrationError) else f"{type(exc).__name__}: {exc}"
        journal.add_event(run_id, EventKind.PRESYNC_ALERT, f"the pre-sync cannot start: {redact(text)}; step 2.11 will "
                          "move the whole delta since the backup", step_id=ctx.step_id)
        log.warning("the pre-sync cannot start: %s", redact(text))
        return None
    log.info("pre-sync every %g min from step %s until the users stop in the cloud", section.interval_minutes,
             ctx.step_id)
    return syncer.start()


def lag_section(ctx: ActionContext, section: PresyncSection, *, now: dt.datetime, forecast_p90_factor: float) -> str:
    """The prompt's paragraph on the pre-sync: the last pass, how far behind the box is, 2.11's forecast.
    The backlog costs a few requests; when the cloud cannot answer, the prompt says so and goes on."""
    state = presync_state(ctx.journal, ctx.run_id)
    backlog = None
    if state.resume_from is not None:
        try:
            section_crm = crm_section(ctx)
            cloud, box = crm_clients(ctx, section_crm)
            try:
                backlog = ctx.platform.crm.backlog(cloud, state.resume_from, entities=list(section_crm.entities))
            finally:
                cloud.session.close()
                box.session.close()
        except Exception as exc:  # noqa: BLE001 — the prompt must still be shown
            log.warning("could not count the records the box is behind: %s", redact(exc))
    return presync_markdown(ctx.journal, ctx.run_id, now=now, interval_s=section.interval_minutes * 60,
                            overlap_s=section.overlap_seconds, backlog=backlog, p90_factor=forecast_p90_factor)


# -- what the phase flow calls (flows/steps.py) -------------------------------------------------

def keep_running(run: "RunContext", step: "Step") -> None:
    """The pre-sync runs from the first ``presync`` step on (started once per flow run)."""
    if run.presyncer is None:
        run.presyncer = start_presync(run.action_context(step, get_run_logger()), run.config.presync,
                                      crm_configured=run.config.crm_delta is not None) or False
        # False: tried and off (journaled once); None: not tried yet


def halt_if_last(run: "RunContext", step: "Step") -> None:
    """After the confirmation of the last ``presync`` step (2.10: the users stop in the cloud)."""
    steps = run.runbook.steps
    i = run.runbook.seq(step.id)
    if run.presyncer and not (i + 1 < len(steps) and steps[i + 1].presync):
        run.presyncer.halt(f"the users stopped in the cloud (step {step.id} confirmed): the pre-sync ends")


def prompt_section(run: "RunContext", step: "Step") -> str:
    """The prompt's pre-sync paragraph; before the users stop (2.10) the recorded forecast of 2.11
    takes this run's measured passes, so the downtime notices quote them."""
    cfg = run.config
    if step.downtime == "start":
        fc = freeze_forecast(run.journal, run.run_id, interval_s=cfg.presync.interval_minutes * 60,
                             overlap_s=cfg.presync.overlap_seconds, p90_factor=cfg.forecast.p90_factor)
        if fc is not None and refresh_forecast(run.journal, run.run_id, fc):
            get_run_logger().info("forecast of the CRM delta step updated from this run's pre-sync passes: %s", fc.basis)
    return lag_section(run.action_context(step, get_run_logger()), cfg.presync, now=utcnow(),
                       forecast_p90_factor=cfg.forecast.p90_factor)


def stop(run: "RunContext", step_id: str | None, *, wait_s: float | None = None) -> None:
    """Stop the pre-sync, waiting for a running pass (``wait_s``: a bound, e.g. when the run fails)."""
    syncer, run.presyncer = run.presyncer, None
    if not syncer:
        return
    logger = get_run_logger()
    logger.info("pre-sync stopped%s: %s", f" before step {step_id}" if step_id else "",
                "the next step moves what changed since its last pass")
    syncer.stop(wait_s=wait_s)

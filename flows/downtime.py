"""What the flow does while the CRM users are down (runbook steps marked downtime start → end).

Users are told when the downtime starts, get a progress update whenever the last notice promised
one, and are told when it ends; the escalation ladder (seed 002) sends the workaround, asks the
customer to decide on a roll-back and writes the data-return plan when its thresholds pass. A
small thread keeps those promises while the flow waits in a pause; the roll-back decision itself
is a pause, so it is asked by the flow between steps (:func:`decision_due`).

The flow's side is at the end: :func:`watch_downtime` / :func:`stop_watching` keep the watcher
in the run's context, :func:`announce`, :func:`downtime_started` and :func:`downtime_ended` send
the notices the runbook's steps call for, and :func:`ask_rollback_if_due` pauses for the decision
(flow code only: Prefect pauses a flow, never a task).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING


from connectors.errors import GateRejected
from connectors.outputs import write_private_text
from flows.forms import RollbackDecision
from journal import ladder
from journal.anchor import current_anchor
from journal.configuration import resolve_notice_urls
from journal.events import EventKind
from journal.export import downtime_window
from journal.forecast import recorded_forecast
from journal.models import utcnow
from journal.notices import Notifier, next_update_due, summary_values
from journal.store import Journal
from journal.triage import issues, open_fires

if TYPE_CHECKING:
    from flows.run_context import RunContext

log = logging.getLogger("cloud2box.downtime")


def notifier_for(config, secrets, journal: Journal, run_id: str, mode: str) -> Notifier:
    """The run's notifier. A rehearsal rehearses its notices as files: nobody real is told anything."""
    section = config.notices
    if mode == "rehearsal" and not section.dry_run:
        section = section.model_copy(update={"dry_run": True})
    out_dir = section.out_dir or Path(config.journal.out_dir) / "notices" / run_id
    m = config.migration
    return Notifier(journal, run_id, section, resolve_notice_urls(section, secrets, config.source),
                    context={"name": m.name, "portal": m.portal, "box_portal": m.box_portal, "contact": m.contact,
                             "timezone": m.timezone}, out_dir=out_dir)


class DowntimeWatcher:
    """Keeps the promises made to users while the downtime lasts (one per run, in a thread)."""

    def __init__(self, notifier: Notifier, journal: Journal, run_id: str, ladder_section, out_dir: Path,
                 *, interval_s: float = 30.0, clock=utcnow) -> None:
        self.notifier, self.journal, self.run_id = notifier, journal, run_id
        self.ladder, self.out_dir, self.interval_s, self.clock = ladder_section, Path(out_dir), interval_s, clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"downtime-{run_id}", daemon=True)

    def start(self) -> "DowntimeWatcher":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.tick()
            except Exception as exc:  # a notice hiccup must not end the watch; the next tick tries again
                log.warning("downtime watch: %s", exc)

    def tick(self) -> None:
        """One look at the clock: send what is due (progress update, workaround, data-return plan)."""
        now = self.clock()
        start, end = downtime_window(self.journal, self.run_id)
        if start is None or end is not None:
            return
        down_min = (now - start).total_seconds() / 60
        for action in ladder.due_actions(start, now, self.ladder, ladder.fired_levels(self.journal, self.run_id)):
            if action.level == "workaround":
                self.notifier.send("workaround", started_at=start)
                ladder.record_fired(self.journal, self.run_id, action, "workaround notice sent")
            elif action.level == "data-return":
                plan = ladder.data_return_plan(self.journal, self.run_id, now=now,
                                               workaround=self.notifier.section.workaround)
                path = write_private_text(self.out_dir / f"data-return-plan-{self.run_id}.md", plan.to_markdown())
                ladder.record_fired(self.journal, self.run_id, action, f"data-return plan written to {path.name}",
                                    data={"file": str(path)})
            # "decision" is a pause: the flow asks it between steps (decision_due)
        due = next_update_due(self.journal, self.run_id)
        if due is not None and now >= due:
            current = [e for e in self.journal.steps(self.run_id) if e.outcome == "running"]
            doing = f"step {current[-1].step_id} ({current[-1].title}) is in progress" if current else "the move goes on"
            fires = open_fires(self.journal, self.run_id)
            known = doing + (f"; {len(fires)} blocking problem(s) being worked on" if fires else "; no blocking problem")
            self.notifier.send("progress", headline=f"down for {down_min:.0f} min", known=known,
                               impact=f"{self.notifier.context.get('audience', 'users')} cannot work in the CRM "
                                      f"since {start:%H:%M} UTC")


def decision_due(journal: Journal, run_id: str, ladder_section, now: dt.datetime | None = None):
    """The ladder's roll-back decision, when it is due and not yet taken (else None)."""
    start, end = downtime_window(journal, run_id)
    if start is None or end is not None:
        return None
    due = ladder.due_actions(start, now or utcnow(), ladder_section, ladder.fired_levels(journal, run_id))
    return next((a for a in due if a.level == "decision"), None)


def final_summary(notifier: Notifier, journal: Journal, run_id: str) -> None:
    """The post-move summary (seed 004 shape), sent when the run completes, with the journal's
    anchor: the customer keeps a copy of it that nobody with access to the journal can change."""
    notifier.send("summary", **summary_values(journal, run_id),
                  anchor=current_anchor(journal, reason=f"summary notice of run {run_id}").short)


# --- the flow's side: called between steps, with the run's context ------------------------------

def watch_downtime(run: RunContext) -> None:
    """Start the run's watcher if the downtime has started and not ended (a resumed run may be inside it)."""
    start, end = downtime_window(run.journal, run.run_id)
    if start and not end and run.watcher is None:
        run.watcher = DowntimeWatcher(run.notifier, run.journal, run.run_id, run.config.ladder, run.out_dir,
                                      interval_s=run.config.ladder.check_interval_s).start()


def stop_watching(run: RunContext) -> None:
    watcher, run.watcher = run.watcher, None
    if watcher:
        watcher.stop()


def expected_downtime_s(run: RunContext) -> tuple[float, float]:
    """P50/P90 seconds of the downtime: from the recorded forecast, else from the plan."""
    forecast = recorded_forecast(run.journal, run.run_id)
    window = forecast.downtime() if forecast else None
    if window:
        return window["p50_s"], window["p90_s"]
    steps = run.runbook.steps
    start = next(i for i, s in enumerate(steps) if s.downtime == "start")
    end = next(i for i, s in enumerate(steps) if s.downtime == "end")
    planned = sum(s.planned_s for s in steps[start + 1: end + 1])
    return planned, planned * run.config.forecast.manual_p90_factor


def announce(run: RunContext) -> None:
    """The advance notice of the downtime (once per run, whatever the attempts)."""
    if any(e.data.get("notice") == "announcement" for e in run.journal.events(run.run_id, EventKind.NOTICE)):
        return  # announced in an earlier attempt of this run
    p50, p90 = expected_downtime_s(run)
    start = next((s for s in run.runbook.steps if s.downtime == "start"), None)
    row = run.journal.get_run(run.run_id)
    window_start = run.planned_start(start) + dt.timedelta(seconds=start.planned_s) if start else None
    run.notifier.send("announcement", backup_date=row.cutoff or row.created_at, window_start=window_start,
                      window_end=window_start + dt.timedelta(seconds=p50) if window_start else None,
                      window_end_latest=window_start + dt.timedelta(seconds=p90) if window_start else None,
                      expected_duration=p50, latest_duration=p90)


def downtime_started(run: RunContext) -> None:
    start, _ = downtime_window(run.journal, run.run_id)
    p50, p90 = expected_downtime_s(run)
    run.notifier.send("downtime-started", started_at=start, expected_end=start + dt.timedelta(seconds=p50),
                      latest_end=start + dt.timedelta(seconds=p90))
    watch_downtime(run)


def downtime_ended(run: RunContext) -> None:
    stop_watching(run)
    start, end = downtime_window(run.journal, run.run_id)
    run.notifier.send("completed", started_at=start, ended_at=end,
                      open_issues=issues(run.journal, run.run_id, status="open"))


def ask_rollback_if_due(run: RunContext) -> None:
    """At the ladder's decision threshold, the customer decides: continue the move or roll back."""
    journal, cfg = run.journal, run.config
    action = decision_due(journal, run.run_id, cfg.ladder)
    if action is None:
        return
    fires = [f"#{i.id} {i.title}" for i in open_fires(journal, run.run_id)]
    recorded = recorded_forecast(journal, run.run_id)
    prompt = ladder.decision_prompt(portal=cfg.migration.portal, box_portal=cfg.migration.box_portal,
                                    downtime_min=action.downtime_min, open_fires=fires,
                                    forecast_end=(recorded.downtime() or {}).get("end_p90") if recorded else None)
    from flows import signing  # a customer of the roster decides, with their one-time code

    answer = RollbackDecision.model_validate(signing.ask_until_taken(
        run, base=RollbackDecision, name_field="decided_by", prompt=prompt,
        key=f"rollback-decision-{len(journal.events(run.run_id, EventKind.LADDER))}",
        what=f"the roll-back decision after {action.downtime_min:.0f} min of user downtime", verb="decide",
        action="The users have been down longer than planned: continue the move, or roll back to the cloud now. "
               "The prompt gives both options and their consequences.",
        signers=signing.signers_for(cfg, "customer")))
    ladder.record_fired(journal, run.run_id, action, f"{answer.decision} decided by {answer.decided_by} ({answer.role})"
                        + (f": {answer.comment}" if answer.comment else ""),
                        data={"decision": answer.decision, "by": answer.decided_by})
    if answer.decision == "roll-back":
        raise GateRejected(f"the customer ({answer.decided_by}, {answer.role}) decided to roll back to the cloud after "
                           f"{action.downtime_min:.0f} min of downtime: {answer.comment or 'no comment'}",
                           fix="tell users to work in the cloud again (see the data-return plan); plan a new cutover")

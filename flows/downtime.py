"""What the flow does while the CRM users are down (runbook steps marked downtime start → end).

Users are told when the downtime starts, get a progress update whenever the last notice promised
one, and are told when it ends; the escalation ladder (seed 002) sends the workaround, asks the
customer to decide on a roll-back and writes the data-return plan when its thresholds pass. A
small thread keeps those promises while the flow waits in a pause; the roll-back decision itself
is a pause, so it is asked by the flow between steps (:func:`decision_due`).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from pathlib import Path

from journal import ladder
from journal.configuration import resolve_notice_urls
from journal.export import downtime_window
from journal.models import utcnow
from journal.notices import Notifier, next_update_due, summary_values
from journal.store import Journal
from journal.triage import open_fires

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
                self.out_dir.mkdir(parents=True, exist_ok=True)
                path = self.out_dir / f"data-return-plan-{self.run_id}.md"
                path.write_text(plan.to_markdown(), encoding="utf-8")
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
    """The post-move summary (seed 004 shape), sent when the run completes."""
    notifier.send("summary", **summary_values(journal, run_id))

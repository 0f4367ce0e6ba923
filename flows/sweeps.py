"""Straggler sweeps while a step's pause is open (runbook ``sweep = true``: step 3.1).

A :class:`StragglerSweeper` thread runs the platform's sweep (``Platform.crm.sweep``) every
``[sweeps] interval_minutes`` (or at once when :meth:`trigger` is called), journals each sweep,
alerts the contractor when the loop guard quarantines a record or a request budget is spent, and
tells the people who still work in the cloud. When the step is confirmed the flow stops it, and
one last sweep moves what was created up to that moment. A sweep's failure is journaled and
alerted; it never stops the migration.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from pathlib import Path

from connectors.budget import RequestBudget
from connectors.errors import BudgetExhausted, ConfigError, MigrationError
from connectors.platform import SweepOutcome, SweepPolicy
from connectors.secrets import redact
from journal.configuration import resolve_notice_urls
from journal.events import EventKind
from journal.models import utcnow
from journal.notices import Notifier
from journal.sweeps import JournalSweepHistory, record_sweep, requests_today, sweeps

from .actions import ActionContext
from .actions.crm_delta import backup_marks, crm_clients, crm_section, cutoff_of, idmap_of
from .config import SweepSection

log = logging.getLogger("cloud2box.sweeps")


def alert_notifier(ctx: ActionContext, section: SweepSection) -> Notifier:
    """The contractor's channel for sync alerts (``[sweeps] alert_urls``); a rehearsal writes files."""
    notices = ctx.config.notices
    dry = notices.dry_run or ctx.mode == "rehearsal" or not section.alert_urls
    notices = notices.model_copy(update={"dry_run": dry, "language": "en"})
    out_dir = Path(ctx.config.journal.out_dir) / "alerts" / ctx.run_id
    urls = resolve_notice_urls(notices.model_copy(update={"urls": section.alert_urls}), ctx.secrets,
                               ctx.config.source)
    m = ctx.config.migration
    return Notifier(ctx.journal, ctx.run_id, notices, urls, out_dir=out_dir,
                    context={"name": m.name, "portal": m.portal, "box_portal": m.box_portal, "contact": m.contact,
                             "timezone": m.timezone})


class StragglerSweeper:
    """Sweeps for one run and step, in a thread (see the module doc). :class:`flows.presync.PreSyncer`
    is the same loop before the users stop in the cloud, with its own events, move and alerts."""

    EVENT, ALERT, NOUN, NOUNS = EventKind.SWEEP, EventKind.SWEEP_ALERT, "sweep", "sweeps"

    def __init__(self, ctx: ActionContext, section: SweepSection, *, users_notifier: Notifier | None = None,
                 alerts: Notifier | None = None, clock=utcnow) -> None:
        self.ctx, self.section, self.clock = ctx, section, clock
        self.users_notifier = users_notifier
        self.alerts = alerts or alert_notifier(ctx, section)
        self.crm = ctx.platform.crm
        crm = crm_section(ctx)
        self.cutoff = cutoff_of(ctx, crm)
        self.cloud, self.box = crm_clients(ctx, crm)
        self.idmap = idmap_of(ctx, crm)
        self.policy = SweepPolicy(quarantine_changes=section.quarantine_changes,
                                  quarantine_window_s=section.quarantine_window_minutes * 60,
                                  overlap_s=section.overlap_seconds, fallback_user_id=crm.fallback_user_id,
                                  use_batch_import=crm.use_batch_import)
        self.entities = list(crm.entities)
        self.history = JournalSweepHistory(ctx.journal, ctx.run_id, self.EVENT)
        self.backup_max_ids: dict[str, int] | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._last_sweep = 0.0  # monotonic time the last sweep started
        self._budget: RequestBudget | None = None  # the running sweep's (cancel() cuts it short)
        self.receiver = self._receiver()
        self._lock = threading.Lock()  # one sweep at a time (the thread, the final sweep)
        self._thread = threading.Thread(target=self._loop, name=f"{self.EVENT}-{ctx.run_id}", daemon=True)

    def _receiver(self):
        """The cloud's outgoing webhook events wake the sweeper early (``[sweeps] events_listen``)."""
        if not getattr(self.section, "events_listen", ""):
            return None
        events = self.ctx.platform.events
        if events is None:
            raise ConfigError(self.ctx.config.source, [f"[sweeps] events_listen is set, but the platform "
                                                       f"{self.ctx.platform.name!r} sends no change events; "
                                                       "leave it empty"])
        problems: list[str] = []
        token = self.ctx.secret_value(self.section.events_token_secret, problems, "the events' application_token")
        if problems:
            raise ConfigError(self.ctx.config.source, problems)
        host, _, port = self.section.events_listen.rpartition(":")
        try:
            return events.receiver(token, lambda event, record_id: self.trigger(), host=host, port=int(port))
        except OSError as exc:  # e.g. the port is taken: say so at the start of the step
            raise ConfigError(self.ctx.config.source, [f"[sweeps] events_listen = {self.section.events_listen!r} "
                                                       f"cannot listen: {exc.strerror or exc}"]) from None

    # -- control ---------------------------------------------------------------------------------
    def start(self) -> "StragglerSweeper":
        if self.receiver is not None:
            self.receiver.start()
            log.info("cloud events received at %s wake the sweeps", self.receiver.url)
        self._thread.start()
        return self

    def trigger(self) -> None:
        """Sweep now (e.g. the cloud sent an event), not at the next interval."""
        self._wake.set()

    def stop(self, *, final_sweep: bool = True) -> SweepOutcome | None:
        """Stop the thread; then one last sweep (what was created up to now moves too)."""
        self._signal_stop()
        if self.receiver is not None:
            self.receiver.close()
        self._thread.join(timeout=self.cloud.timeout * 4 + 30)
        try:
            return self.sweep_once() if final_sweep else None
        finally:
            self.cloud.session.close()
            self.box.session.close()

    def _signal_stop(self) -> None:
        """No new sweep starts; a waiting loop wakes to see it."""
        self._stop.set()
        self._wake.set()

    def _loop(self) -> None:
        for _ in range(self.section.max_sweeps):
            if self._stop.is_set():
                return
            self._last_sweep = time.monotonic()
            try:
                self.sweep_once()
            except Exception as exc:  # noqa: BLE001 — even the journal failing must not end the watch
                log.warning("sweep failed and could not be journaled: %s", redact(exc))
            self._wake.wait(self.section.interval_minutes * 60)
            self._wake.clear()
            # an event may wake us early, but never closer than min_gap_seconds to the last sweep:
            # a flood of events (a loop elsewhere) must not become a flood of sweeps
            gap = self.section.min_gap_seconds - (time.monotonic() - self._last_sweep)
            if gap > 0 and not self._stop.is_set():
                self._stop.wait(gap)
        self.ctx.journal.add_event(self.ctx.run_id, self.ALERT, f"{self.NOUNS} stopped after {self.section.max_sweeps} "
                                   f"{self.NOUNS} (max_sweeps)", step_id=self.ctx.step_id)

    # -- one sweep -------------------------------------------------------------------------------
    def _since(self, done: list) -> dt.datetime:
        """The start of the last sweep; before the first one, the start of the delta transfer."""
        if done:
            return dt.datetime.fromisoformat(done[-1].data["started_at"])
        moved = [e for e in self.ctx.journal.steps(self.ctx.run_id)
                 if e.action == "transfer_crm_delta" and e.outcome == "done" and e.actual_start]
        if moved:
            start = moved[-1].actual_start
            return start if start.tzinfo else start.replace(tzinfo=dt.timezone.utc)
        return self.cutoff

    @staticmethod
    def _after_ids(done: list) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in done:
            for entity, high in (e.data.get("high_water") or {}).items():
                out[entity] = max(out.get(entity, 0), int(high))
        return out

    def sweep_once(self) -> SweepOutcome | None:
        """Run, journal and announce one sweep. Never raises: a failure is journaled and alerted
        (a sweep must not stop the migration), and the next sweep tries again from the same point."""
        with self._lock:
            done = sweeps(self.ctx.journal, self.ctx.run_id, self.EVENT)
            number = len(done) + 1
            now = self.clock()
            req0 = self.cloud.requests + self.box.requests
            try:
                budget = RequestBudget(per_sweep=self.section.requests_per_sweep,
                                       per_day=self.section.requests_per_day,
                                       used_today=requests_today(self.ctx.journal, self.ctx.run_id, now,
                                                                 kinds=(self.EVENT, self.ALERT)))
                self._budget = budget
                self.cloud.budget = self.box.budget = budget
                since = self._since(done)
                try:
                    if self.backup_max_ids is None:  # as step 2.11 journaled them (or taken now, before any write)
                        marks = backup_marks(self.ctx, self.box, self.cutoff, self.idmap)
                        self.backup_max_ids = {e: m["max_id"] for e, m in marks.items()}  # timeline, smart processes too
                    user_map = self.crm.map_users(self.cloud, self.box)  # each time: users are invited meanwhile
                    outcome = self._move(since=since, backup_max_ids=self.backup_max_ids,
                                         after_ids=self._after_ids(done), user_map=user_map, policy=self.policy,
                                         entities=self.entities, now=now)
                except BudgetExhausted as exc:
                    outcome = SweepOutcome(started_at=now, since=since, stopped=exc.message)
                finally:
                    self.cloud.budget = self.box.budget = None
                outcome.requests = self.cloud.requests + self.box.requests - req0
                if outcome.stopped or outcome.failures:
                    # not finished: the next sweep lists from where this one started, nothing is skipped
                    outcome.started_at, outcome.high_water = since, {}
                else:
                    outcome.started_at = now  # the next sweep lists from here (minus the overlap)
                record_sweep(self.ctx.journal, self.ctx.run_id, outcome, step_id=self.ctx.step_id, number=number,
                             kinds=(self.EVENT, self.ALERT), noun=self.NOUN)
                log.info("%s %s: %s", self.NOUN, number, outcome.summary())
                self._announce(number, outcome)
                return outcome
            except Exception as exc:  # noqa: BLE001 — whatever broke, the customer's test period goes on
                text = redact(exc.message if isinstance(exc, MigrationError) else f"{type(exc).__name__}: {exc}")
                self.ctx.journal.add_event(self.ctx.run_id, self.ALERT, f"{self.NOUN} {number} failed: {text}",
                                           data={"number": number,
                                                 "requests": self.cloud.requests + self.box.requests - req0},
                                           step_id=self.ctx.step_id)
                self._alert(f"{self.NOUN} {number} failed", text, f"the {self.NOUN} stopped; the next one starts "
                            "again from the same point", getattr(exc, "fix", None) or "check the portals and the journal")
                return None

    def _move(self, **kw) -> SweepOutcome:
        """The platform's sweep (the pre-sync moves with its own)."""
        return self.crm.sweep(self.cloud, self.box, self.idmap, self.history, **kw)

    def _announce(self, number: int, outcome: SweepOutcome) -> None:
        for q in outcome.newly_quarantined:
            self._alert(f"{q['entity']} {q['cloud_id']} quarantined",
                        f"It changed {q['changes']} times within {q['window_s'] / 60:.0f} minutes between sweeps: "
                        f"something writes it again and again (seed 000: a two-way sync without a loop guard).",
                        "the record is no longer synced to the box; everything else is",
                        "find and stop what keeps writing the record in the cloud, then release it: "
                        f"cloud2box sweep release {q['entity']} {q['cloud_id']} --run {self.ctx.run_id} --config CONFIG --by NAME")
        if outcome.stopped:
            self._alert(f"{self.NOUN} {number} stopped by its request budget", outcome.stopped,
                        f"the {self.NOUN} stopped; what it had imported stays; the migration goes on",
                        "if the traffic is legitimate raise [sweeps] requests_per_sweep / requests_per_day, "
                        "else look for a loop")
        if outcome.stragglers and self.users_notifier is not None and self.section.notify_stragglers:
            names = sorted(s["user_id"] for s in outcome.stragglers)
            told = self.ctx.journal.events(self.ctx.run_id, EventKind.STRAGGLERS_TOLD)
            if not told or told[-1].data.get("users") != names:  # tell each new set of people once
                result = self.users_notifier.send("stragglers", since=outcome.since, stragglers=outcome.stragglers)
                self.ctx.journal.add_event(self.ctx.run_id, EventKind.STRAGGLERS_TOLD,
                                           f"{len(names)} user(s) still in the cloud told to use the box",
                                           data={"users": names, "delivered": result.delivered},
                                           step_id=self.ctx.step_id)

    def _alert(self, headline: str, detail: str, action: str, fix: str) -> None:
        try:
            self.alerts.send("sync-alert", headline=headline, detail=detail, action=action, fix=fix)
        except Exception as exc:  # an alert channel hiccup is journaled by the notifier; never stop here
            log.warning("sync alert not sent: %s", redact(exc))


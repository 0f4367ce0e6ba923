"""The journal's side of the straggler sweeps: each sweep, each quarantine and release, as events.

Everything a sweep saw is a chained ``sweep`` event (what changed, what moved, who still works in
the cloud, requests spent), so the loop guard's memory is the audit record itself: the change
history of a record is read back from the sweep events of the last window, the quarantine from
``quarantine`` / ``quarantine-release`` events, the day's spent requests from the day's sweeps.
"""

from __future__ import annotations

import datetime as dt

from .events import EventKind
from .export import markdown_table
from .models import utcnow
from .triage import issues, report_issue, resolve_issue


def _aware(d: dt.datetime) -> dt.datetime:
    return d if d.tzinfo else d.replace(tzinfo=dt.timezone.utc)


class JournalSweepHistory:
    """The sweep's ``SweepHistory`` (what the loop guard remembers), read from a run's journal events."""

    def __init__(self, journal, run_id: str, kind: EventKind = EventKind.SWEEP) -> None:
        self.journal, self.run_id, self.kind = journal, run_id, kind  # kind: SWEEP, or PRESYNC for the pre-sync

    def observed(self, since: dt.datetime) -> dict[tuple[str, str], set[str]]:
        """Changes seen at or after ``since``; for a released record only those after its release
        (it starts with a clean slate)."""
        released = {(e.data["entity"], str(e.data["cloud_id"])): _aware(e.at)
                    for e in self.journal.events(self.run_id, EventKind.QUARANTINE_RELEASE)}
        out: dict[tuple[str, str], set[str]] = {}
        for e in self.journal.events(self.run_id, self.kind):
            at = _aware(e.at)
            if at < since:
                continue
            for entity, rows in (e.data.get("observed") or {}).items():
                for rid, modified in rows.items():
                    if at >= released.get((entity, rid), since):
                        out.setdefault((entity, rid), set()).add(modified)
        return out

    def quarantined(self) -> dict[str, set[str]]:
        return quarantined(self.journal, self.run_id)

    def released_since_last_sweep(self) -> dict[str, set[str]]:
        done = self.journal.events(self.run_id, self.kind)
        last = _aware(done[-1].at) if done else None
        out: dict[str, set[str]] = {}
        for e in self.journal.events(self.run_id, EventKind.QUARANTINE_RELEASE):
            if last is None or _aware(e.at) >= last:
                out.setdefault(e.data["entity"], set()).add(str(e.data["cloud_id"]))
        return out


def quarantined(journal, run_id: str) -> dict[str, set[str]]:
    """entity → cloud IDs in quarantine now (quarantined and not released since)."""
    state: dict[tuple[str, str], bool] = {}
    events = journal.events(run_id, EventKind.QUARANTINE) + journal.events(run_id, EventKind.QUARANTINE_RELEASE)
    for e in sorted(events, key=lambda e: (e.at, e.id)):
        state[(e.data["entity"], str(e.data["cloud_id"]))] = e.kind == EventKind.QUARANTINE
    out: dict[str, set[str]] = {}
    for (entity, rid), on in state.items():
        if on:
            out.setdefault(entity, set()).add(rid)
    return out


def requests_today(journal, run_id: str, now: dt.datetime | None = None, *,
                   kinds: tuple[EventKind, EventKind] = (EventKind.SWEEP, EventKind.SWEEP_ALERT)) -> int:
    """Requests the run's sweeps (``kinds``: the sweep's event and its alert) spent since midnight
    UTC (the daily budget's count)."""
    now = now or utcnow()
    midnight = _aware(now).replace(hour=0, minute=0, second=0, microsecond=0)
    # failed sweeps spent requests too
    spent = journal.events(run_id, kinds[0]) + journal.events(run_id, kinds[1])
    return sum(int(e.data.get("requests", 0)) for e in spent if _aware(e.at) >= midnight)


def sweeps(journal, run_id: str, kind: EventKind = EventKind.SWEEP) -> list:
    return journal.events(run_id, kind)


def record_sweep(journal, run_id: str, outcome, *, step_id: str | None, number: int,
                 kinds: tuple[EventKind, EventKind] = (EventKind.SWEEP, EventKind.SWEEP_ALERT),
                 noun: str = "sweep") -> None:
    """Journal one sweep (``kinds``: its event and alert kinds, ``noun`` what it is called); each newly
    quarantined record gets its own event and an issue."""
    journal.add_event(run_id, kinds[0], f"{noun} {number}: {outcome.summary()}",
                      data={"number": number, **outcome.as_data()}, step_id=step_id)
    for q in outcome.newly_quarantined:
        text = (f"{q['entity']} {q['cloud_id']} ({q['title'] or 'no title'}) changed {q['changes']} times within "
                f"{q['window_s'] / 60:.0f} min: quarantined, not synced (a sync loop?)")
        journal.add_event(run_id, EventKind.QUARANTINE, text, data=q, step_id=step_id)
        report_issue(journal, run_id, title=f"sync loop suspected: {text}", reported_by="cloud2box loop guard",
                     severity="emergency", step_id=step_id, source="check",
                     detail="Find what writes this record in the cloud again and again (a two-way integration, a "
                            "robot); stop it, then release the record: cloud2box sweep release")
    if outcome.stopped:
        journal.add_event(run_id, kinds[1], f"{noun} {number} stopped: {outcome.stopped}",
                          data={"number": number, "stopped": outcome.stopped}, step_id=step_id)


def release(journal, run_id: str, entity: str, cloud_id: str, *, by: str) -> None:
    """Take a record out of quarantine: the next sweep syncs it again."""
    if str(cloud_id) not in quarantined(journal, run_id).get(entity, set()):
        raise KeyError(f"{entity} {cloud_id} is not in quarantine in run {run_id}")
    journal.add_event(run_id, EventKind.QUARANTINE_RELEASE, f"{entity} {cloud_id} released from quarantine by {by}",
                      data={"entity": entity, "cloud_id": str(cloud_id), "by": by})
    for issue in issues(journal, run_id, status="open"):
        if issue.title.startswith("sync loop suspected: ") and issue.title.split(": ", 1)[1].startswith(
                f"{entity} {cloud_id} "):
            resolve_issue(journal, issue.id, resolved_by=by, resolution=f"released from quarantine by {by}: "
                                                                         "the loop was found and stopped")


def sweep_totals(done: list) -> dict:
    """Totals of sweep events: records moved, echoes skipped, requests, budget stops, and who still
    works in the cloud (merged over the sweeps, most records first)."""
    totals = {k: sum(int(e.data.get(k, 0)) for e in done) for k in ("created", "updated", "echoes_skipped", "requests")}
    people: dict[str, dict] = {}
    for e in done:
        for s in e.data.get("stragglers") or []:
            entry = people.setdefault(s["user_id"], {**s, "records": 0})
            entry["records"] += int(s.get("records", 0))
            entry["last_at"] = max(entry["last_at"], s["last_at"])
    return {**totals, "count": len(done), "stopped": sum(1 for e in done if e.data.get("stopped")),
            "stragglers": sorted(people.values(), key=lambda p: -p["records"])}


_STRAGGLER_COLUMNS = {"name": "user", "email": "e-mail", "records": "records", "last_at": "last change"}
_BRIEF_STRAGGLER_COLUMNS = {"name": "user", "records": "records", "last_at": "last change"}  # fits the resume modal


def sweeps_markdown(journal, run_id: str, *, brief: bool = False) -> str:
    """What the sweeps did, for prompts and gates: totals, who still works in the cloud, quarantine.
    ``brief``: for a prompt, the people without their e-mail (three columns; the review has it)."""
    done = sweeps(journal, run_id)
    if not done:
        return ""
    totals = sweep_totals(done)
    created, updated, echoes = totals["created"], totals["updated"], totals["echoes_skipped"]
    requests, stopped, people = totals["requests"], totals["stopped"], totals["stragglers"]
    held = quarantined(journal, run_id)
    lines = [f"**Straggler sweeps:** {len(done)} sweep(s), {created} record(s) created and {updated} updated on the "
             f"box, {echoes} echo(es) of our own writes skipped, {requests} request(s)"
             + (f", {stopped} stopped by the request budget" if stopped else "") + "."]
    if people:
        lines += ["", "Still working in the cloud (tell them to use the box):", "",
                  markdown_table(people, _BRIEF_STRAGGLER_COLUMNS if brief else _STRAGGLER_COLUMNS).rstrip("\n")]
    if held:
        listed = ", ".join(f"{e} {i}" for e, ids in held.items() for i in sorted(ids, key=int))
        lines += ["", f"> **In quarantine (changed again and again, not synced):** {listed}. Find what keeps "
                      f"writing them in the cloud, stop it, then release them (`cloud2box sweep release`)."]
    return "\n".join(lines)

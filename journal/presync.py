"""The journal's side of the pre-sync (phase 2): its passes, how far behind the box is, and the
forecast of the freeze (step 2.11) they make possible.

A pass is a ``presync`` event written by :mod:`flows.presync` (the data of a
``connectors.platform.SweepOutcome``). What step 2.11 needs from them:

- **where to start**: the last pass's ``started_at`` (a pass that stopped or failed writes the
  start of its own window, so nothing is skipped) minus the overlap, and the highest cloud IDs
  the passes handled (creations above them are new);
- **what is already proven**: each pass reconciled what it moved and proved every record the cloud
  created up to its marks present on the box (``proven``: cloud and box IDs per entity), so 2.11
  proves only what came after them; a record changed after its pass changes its modification time
  and is listed again by the next pass or by 2.11;
- **what was deleted in the cloud**: the latest pass that compared the whole portal's IDs.

The forecast of 2.11 comes from the passes too (:func:`freeze_forecast`): the pass time explained
by a fixed part plus records ÷ rate, and the cloud's changes per hour, over the window 2.11 will
have to move (up to one interval since the last pass, plus the overlap).
"""

from __future__ import annotations

import datetime as dt
import statistics
from dataclasses import dataclass, field

from .events import EventKind
from .forecast import human_duration


def _aware(d: dt.datetime) -> dt.datetime:
    return d if d.tzinfo else d.replace(tzinfo=dt.timezone.utc)


def _started(e) -> dt.datetime:
    """When a finished pass started (its window's end: the next one lists from there)."""
    return _aware(dt.datetime.fromisoformat(e.data["started_at"]))


def passes(journal, run_id: str) -> list:
    return journal.events(run_id, EventKind.PRESYNC)


def _good(e) -> bool:
    return not e.data.get("stopped") and not e.data.get("failures")


@dataclass
class PresyncState:
    """What the passes of a run leave for step 2.11, the prompts and the forecast."""

    passes: int = 0
    good_passes: int = 0
    last_at: dt.datetime | None = None  # when the last pass was journaled
    resume_from: dt.datetime | None = None  # the next pass (or 2.11) lists changes from here, minus the overlap
    after_ids: dict[str, int] = field(default_factory=dict)  # entity → highest cloud ID the passes handled
    moved: int = 0  # records created or updated on the box by the passes
    deleted_in_cloud: dict[str, list[str]] | None = None  # from the latest ID-set comparison
    deleted_scanned_at: dt.datetime | None = None
    failed_passes: int = 0  # presync-alert events: failed or stopped passes
    proven: dict[str, dict[str, int]] = field(default_factory=dict)  # the last good pass's presence marks

    @property
    def usable(self) -> bool:
        """2.11 may move only what changed since ``resume_from``: at least one pass finished."""
        return self.good_passes > 0 and self.resume_from is not None

    def as_data(self) -> dict:
        return {"passes": self.passes, "good_passes": self.good_passes, "failed_passes": self.failed_passes,
                "last_at": self.last_at.isoformat() if self.last_at else None,
                "resume_from": self.resume_from.isoformat() if self.resume_from else None,
                "after_ids": self.after_ids, "moved": self.moved, "proven": self.proven,
                "deleted_scanned_at": self.deleted_scanned_at.isoformat() if self.deleted_scanned_at else None}


def presync_state(journal, run_id: str) -> PresyncState:
    done = passes(journal, run_id)
    state = PresyncState(passes=len(done), good_passes=sum(1 for e in done if _good(e)),
                         failed_passes=len(journal.events(run_id, EventKind.PRESYNC_ALERT)))
    for e in done:
        for entity, high in (e.data.get("high_water") or {}).items():
            state.after_ids[entity] = max(state.after_ids.get(entity, 0), int(high))
        state.moved += int(e.data.get("created", 0)) + int(e.data.get("updated", 0))
        if _good(e) and e.data.get("proven"):
            state.proven = e.data["proven"]
        if e.data.get("deleted_in_cloud") is not None:
            state.deleted_in_cloud, state.deleted_scanned_at = e.data["deleted_in_cloud"], _aware(e.at)
    if done:
        state.last_at = _aware(done[-1].at)
        state.resume_from = _started(done[-1])
    return state


@dataclass
class FreezeForecast:
    p50_s: float
    p90_s: float
    records_p50: float
    records_p90: float
    basis: str


def freeze_forecast(journal, run_id: str, *, interval_s: float, overlap_s: float,
                    p90_factor: float = 1.25) -> FreezeForecast | None:
    """The duration of 2.11 after the pre-sync, from the run's finished passes (None before two).

    A pass's time is a fixed part (listing, reconciling, the users and field definitions) plus
    records ÷ rate: fitted over the passes (least squares; with fewer than three distinct sizes
    the fixed part is the shortest pass and the rate the total). The first pass (everything since
    the backup) is the rate's best sample but not the change rate's: the cloud's changes per hour
    are what the later passes moved over the time they covered. 2.11 moves the changes of up to
    one interval (P50: half of it) plus the overlap, and proves presence above the last pass's marks
    as a pass does (the marks keep the gap out of it); it also reads the users, the field definitions
    and the deletions' list once more: P90 takes ``p90_factor`` over the fixed part too.
    """
    good = [e for e in passes(journal, run_id) if _good(e)]
    if len(good) < 2:
        return None
    sizes = [float(e.data.get("records", 0)) for e in good]
    secs = [float(e.data.get("seconds", 0.0)) for e in good]
    fixed, per_record = min(secs), sum(secs) / max(1.0, sum(sizes))
    if len(set(sizes)) >= 3:
        slope, intercept = statistics.linear_regression(sizes, secs)
        if slope > 0 and intercept >= 0:
            fixed, per_record = intercept, slope
    later = good[1:]
    span_s = (_started(later[-1]) - _started(good[0])).total_seconds()
    moved_later = sum(int(e.data.get("created", 0)) + int(e.data.get("updated", 0)) for e in later)
    per_hour = moved_later / (span_s / 3600) if span_s > 0 else 0.0
    records_p50 = per_hour * (interval_s / 2 + overlap_s) / 3600
    records_p90 = per_hour * (interval_s + overlap_s) / 3600
    p50 = fixed + records_p50 * per_record
    p90 = (fixed + records_p90 * per_record) * p90_factor
    basis = (f"pre-sync: {len(good)} passes, the cloud changes {per_hour:.0f} records/h, {records_p50:.0f} (P50) to "
             f"{records_p90:.0f} (P90) records to move at {1 / per_record if per_record else 0:.1f} records/s "
             f"+ {fixed:.0f} s fixed")
    return FreezeForecast(p50, p90, records_p50, records_p90, basis)


def presync_markdown(journal, run_id: str, *, now: dt.datetime, interval_s: float, overlap_s: float,
                     backlog: dict[str, int] | None = None, p90_factor: float = 1.25) -> str:
    """The lag, for the prompts of the steps while the pre-sync runs and for gate 2."""
    state = presync_state(journal, run_id)
    if not state.passes:
        return ("**Pre-sync:** no pass has finished yet; step 2.11 will move everything made in the cloud since "
                "the backup.")
    ago = human_duration((now - state.last_at).total_seconds()) if state.last_at else "?"
    lines = [f"**Pre-sync:** {state.passes} pass(es), the last {ago} ago "
             f"({state.last_at:%Y-%m-%d %H:%M} UTC); {state.moved} record(s) moved to the box so far"
             + (f"; {state.failed_passes} pass(es) failed or stopped (see the journal)" if state.failed_passes else "")
             + "."]
    if backlog is not None:
        behind = sum(backlog.values())
        lines.append(f"The box is **{behind} record(s) behind** the cloud now ("
                     + ", ".join(f"{e} {n}" for e, n in backlog.items()) + ").")
    fc = freeze_forecast(journal, run_id, interval_s=interval_s, overlap_s=overlap_s, p90_factor=p90_factor)
    if fc is not None:
        lines.append(f"Step 2.11 (the freeze) is forecast at **P50 {human_duration(fc.p50_s)}, P90 "
                     f"{human_duration(fc.p90_s)}** ({fc.basis}).")
    if state.deleted_in_cloud:
        n = sum(len(v) for v in state.deleted_in_cloud.values())
        lines.append(f"{n} record(s) were deleted in the cloud since the backup (compared at "
                     f"{state.deleted_scanned_at:%H:%M} UTC): they stay on the box; the customer decides.")
    lines.append("Records the pre-sync moved carry the source mark `cloud2box` (ORIGINATOR_ID): they are not "
                 "test data; delete only what you made on the box during the tests.")
    return "\n\n".join(lines)


def refresh_forecast(journal, run_id: str, fc: FreezeForecast) -> bool:
    """Put this run's own pass-based forecast of the CRM delta step into the recorded forecast (the
    downtime notices quote it); False when the run has no recorded forecast or no such step."""
    from .forecast import recorded_forecast

    recorded = recorded_forecast(journal, run_id)
    row = next((r for r in recorded.rows if r.action == "transfer_crm_delta"), None) if recorded else None
    if row is None:
        return False
    row.kind, row.unit, row.amount, row.p50_s, row.p90_s = "automated", "records", fc.records_p50, fc.p50_s, fc.p90_s
    row.basis = fc.basis + " (this run)"
    recorded.retime()
    recorded.record(journal, run_id, f"forecast of step {row.step_id} updated from this run's pre-sync passes: "
                                     f"P50 {human_duration(fc.p50_s)}, P90 {human_duration(fc.p90_s)}")
    return True


def presync_summary(journal, run_id: str) -> str:
    """For gate 2: what the pre-sync did and what the freeze then took (step 2.11's measured time)."""
    state = presync_state(journal, run_id)
    if not state.passes and not state.failed_passes:
        return ""
    text = (f"**Pre-sync:** {state.passes} pass(es) moved {state.moved} record(s) before the users stopped in the "
            "cloud" + (f"; {state.failed_passes} failed or stopped" if state.failed_passes else "") + ".")
    moved = [e for e in journal.steps(run_id) if e.action == "transfer_crm_delta" and e.outcome == "done"]
    if moved:
        last = moved[-1]
        records = int((last.counters or {}).get("records", 0))
        text += (f" The freeze (step {last.step_id}) then moved {records} record(s) in "
                 f"{human_duration(last.duration_s)}" + (" from the last pass on" if (last.evidence or {}).get("presync")
                                                           else ", the whole delta (no finished pass)") + ".")
    if state.deleted_in_cloud:
        n = sum(len(v) for v in state.deleted_in_cloud.values())
        text += f" {n} record(s) deleted in the cloud since the backup are listed for the customer (kept on the box)."
    return text


__all__ = ["FreezeForecast", "PresyncState", "freeze_forecast", "passes", "presync_markdown", "presync_state",
           "presync_summary", "refresh_forecast"]

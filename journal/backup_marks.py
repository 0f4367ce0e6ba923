"""The backup's high-water marks of the CRM, as the journal keeps them: event ``crm-backup-marks``.

Per entity, the highest record ID the backup holds and how many records the box had up to it,
read from the restored box once, before anything was imported into it (step 2.11, or the first
sweep). Afterwards the box cannot tell them any more: a record moved from the cloud may look like
one of the backup's. Re-runs of 2.11, the sweeps and the checks read them from here.
"""

from __future__ import annotations

import datetime as dt

from .events import EventKind


def _same_time(a: str | None, b: dt.datetime) -> bool:
    try:
        when = dt.datetime.fromisoformat(str(a))
    except ValueError:
        return False
    return when.tzinfo is not None and when == b


def journaled_marks(journal, run_id: str, cutoff: dt.datetime) -> dict[str, dict[str, int]] | None:
    """The marks journaled for ``run_id`` and this cutoff (the latest; entity → ``{"max_id",
    "count"}``), or None when none were taken yet."""
    for event in reversed(journal.events(run_id, EventKind.CRM_BACKUP_MARKS)):
        data = event.data or {}
        if _same_time(data.get("cutoff"), cutoff) and isinstance(data.get("entities"), dict):
            return {e: {"max_id": int(m["max_id"]), "count": int(m["count"])} for e, m in data["entities"].items()}
    return None


def record_marks(journal, run_id: str, cutoff: dt.datetime, marks: dict[str, dict[str, int]], *,
                 migration: str, step_id: str | None = None, box_written_before: bool = False) -> None:
    """Journal the marks just taken. ``box_written_before``: the box already held migrated records
    (a journal older than these marks), so they were taken leaving those out."""
    how = "leaving out records migrated earlier" if box_written_before else "before anything was imported"
    summary = ", ".join(f"{e} ≤ {m['max_id']} ({m['count']})" for e, m in marks.items())
    journal.add_event(run_id, EventKind.CRM_BACKUP_MARKS, f"the backup's highest IDs (records), read from the box "
                      f"{how}: {summary}",
                      data={"cutoff": cutoff.isoformat(), "migration": migration, "entities": marks,
                            "box_written_before": box_written_before}, step_id=step_id)


__all__ = ["journaled_marks", "record_marks"]

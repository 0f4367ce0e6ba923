"""The escalation ladder during user downtime (seed 002), as a pure function plus journal helpers.

- at ``workaround_after_min`` (1 h): a notice with the workaround for users;
- at ``decision_after_min`` (4 h): a decision pause for the customer — stay, or roll back to the
  cloud, with the consequences spelled out (:func:`decision_prompt`);
- at ``data_return_after_min`` (12 h): a data-return plan saying which records were created where
  (:func:`data_return_plan`, generated from the journal).

:func:`due_actions` is pure: ``(downtime start, now, thresholds, already fired) → actions``, so a
test drives it with a fake clock. The flow polls it while the downtime lasts, performs each action
and records it with :func:`record_fired`; :func:`fired_levels` reads them back after a restart.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Iterable, Literal

from .configuration import LadderSection
from .counters import StepCounters
from .events import EventKind
from .export import downtime_window, markdown_table

Level = Literal["workaround", "decision", "data-return"]


@dataclass(frozen=True)
class LadderAction:
    level: Level
    threshold_min: float
    due_at: dt.datetime
    downtime_min: float  # how long users had been down when the action became due (at ``now``)

    @property
    def description(self) -> str:
        return {
            "workaround": "send users the workaround notice",
            "decision": "pause for the customer's decision: continue, or roll back to the cloud",
            "data-return": "generate the data-return plan (which records were created where)",
        }[self.level]


def thresholds(section: LadderSection) -> dict[Level, float]:
    return {"workaround": section.workaround_after_min, "decision": section.decision_after_min,
            "data-return": section.data_return_after_min}


def due_actions(downtime_start: dt.datetime | None, now: dt.datetime, section: LadderSection,
                fired: Iterable[str] = ()) -> list[LadderAction]:
    """Every ladder step due at ``now`` and not fired yet, lowest first.

    Nothing is due before the downtime starts, when the ladder is disabled, or after every level
    fired. A process that was down past several thresholds gets all of them at once, in order.
    """
    if downtime_start is None or not section.enabled:
        return []
    done = set(fired)
    down_min = (now - downtime_start).total_seconds() / 60
    out = []
    for level, minutes in thresholds(section).items():
        if level not in done and down_min >= minutes:
            out.append(LadderAction(level, minutes, downtime_start + dt.timedelta(minutes=minutes), down_min))
    return out


def next_due_at(downtime_start: dt.datetime | None, section: LadderSection, fired: Iterable[str] = ()
                ) -> dt.datetime | None:
    """When the next not-yet-fired level becomes due (None: nothing left), for the flow's sleep."""
    if downtime_start is None or not section.enabled:
        return None
    done = set(fired)
    pending = [m for level, m in thresholds(section).items() if level not in done]
    return downtime_start + dt.timedelta(minutes=min(pending)) if pending else None


# -- journal helpers ----------------------------------------------------------------------------

def fired_levels(journal, run_id: str) -> set[str]:
    return {e.data.get("level") for e in journal.events(run_id, EventKind.LADDER)}


def record_fired(journal, run_id: str, action: LadderAction, detail: str = "", data: dict | None = None) -> None:
    journal.add_event(run_id, EventKind.LADDER,
                      f"escalation after {action.threshold_min:g} min of downtime: {action.description}"
                      + (f" — {detail}" if detail else ""),
                      data={"level": action.level, "threshold_min": action.threshold_min,
                            "downtime_min": round(action.downtime_min, 1), **(data or {})})


def downtime_start(journal, run_id: str) -> dt.datetime | None:
    """When the user downtime started: the 'downtime-start' event, else the confirmed start step."""
    events = journal.events(run_id, EventKind.DOWNTIME_START)
    if events:
        return events[0].at
    return downtime_window(journal, run_id)[0]


ROLLBACK_CONSEQUENCES = [
    "Users go back to the cloud portal today; the box is not used until a new cutover.",
    "Records created in the box since the downtime started must be copied back to the cloud "
    "(the data-return plan lists them).",
    "A new cutover needs a new backup from the vendor, which is paid again, and a new downtime.",
    "The cloud subscription must stay active until the new cutover.",
]

CONTINUE_CONSEQUENCES = [
    "Users keep working with the workaround until the box is ready.",
    "Records kept in the workaround must be entered into the box when it is back.",
]


def decision_prompt(*, portal: str, box_portal: str, downtime_min: float, open_fires: list[str],
                    forecast_end: dt.datetime | None = None) -> str:
    """The Markdown shown in the customer's decision pause at the 4-hour mark."""
    lines = [
        f"### Decision needed: the CRM has been down for {downtime_min / 60:.1f} h",
        "",
        f"The move from **{portal}** to **{box_portal or 'the box'}** is taking longer than planned.",
    ]
    if forecast_end:
        lines.append(f"Current forecast for the end of the downtime: **{forecast_end:%Y-%m-%d %H:%M} UTC**.")
    if open_fires:
        lines += ["", "Blocking problems (fires):", *[f"- {f}" for f in open_fires]]
    lines += ["", "**Option A — continue the move.**", *[f"- {c}" for c in CONTINUE_CONSEQUENCES],
              "", "**Option B — roll back to the cloud.**", *[f"- {c}" for c in ROLLBACK_CONSEQUENCES],
              "", "Choose and sign with your name and role."]
    return "\n".join(lines)


# What the delta step's counters say was moved (flows/actions/crm_delta.py).
_MOVED_COUNTERS = {"created", "updated", "deleted_in_cloud"}
_PLAN_COLUMNS = {"where": "where the records are", "period": "created between", "what": "what", "count": "count",
                 "how": "how they return"}


@dataclass(frozen=True)
class DataReturnPlan:
    run_id: str
    generated_at: dt.datetime
    cutoff: dt.datetime | None
    downtime_start: dt.datetime | None
    rows: list[dict]  # where, period, what, count, how it returns

    def to_markdown(self) -> str:
        def t(x):
            return f"{x:%Y-%m-%d %H:%M} UTC" if x else "unknown"

        return "\n".join([f"# Data-return plan — run {self.run_id}", "",
                          f"Generated {t(self.generated_at)} from the journal. Backup cutoff: {t(self.cutoff)}; "
                          f"user downtime started: {t(self.downtime_start)}.", "",
                          markdown_table(self.rows, _PLAN_COLUMNS)])


def data_return_plan(journal, run_id: str, *, now: dt.datetime, workaround: str) -> DataReturnPlan:
    """Which records were created where, from the journal: backup, cloud delta, workaround."""
    run = journal.get_run(run_id)
    start = downtime_start(journal, run_id)
    steps = journal.steps(run_id)

    def t(x):
        return f"{x:%Y-%m-%d %H:%M}" if x else "?"

    moved = {}
    for e in steps:
        counters = StepCounters.read(e.counters)
        if e.outcome == "done" and counters.records is not None:
            moved[e.step_id] = (e.title, counters)
    rows = [{"where": "box (restored backup)", "period": f"… → {t(run.cutoff)}", "what": "all CRM records",
             "count": "all", "how": "already on the box"}]
    if moved:
        for step_id, (title, counters) in moved.items():
            per = ", ".join(f"{k} {v:g}" for k, v in counters.model_dump(include=_MOVED_COUNTERS).items()
                            if v is not None)
            rows.append({"where": "cloud → box", "period": f"{t(run.cutoff)} → {t(start)}",
                         "what": f"created/changed after the backup (step {step_id}: {title})" + (f"; {per}" if per else ""),
                         "count": counters.records, "how": "transferred; kept in the id map"})
    else:
        rows.append({"where": "cloud", "period": f"{t(run.cutoff)} → {t(start)}",
                     "what": "leads, deals, contacts, companies created or changed after the backup",
                     "count": "not yet transferred", "how": "delta transfer (step 2.11) before users start on the box"})
    rows.append({"where": "workaround", "period": f"{t(start)} → {t(now)}", "what": workaround.replace("|", "/"),
                 "count": "count with the sales team", "how": "entered into the box by the users when it is back"})
    rows.append({"where": "cloud (stragglers)", "period": f"{t(start)} → {t(now)}",
                 "what": "records created in the cloud after the stop", "count": "swept in phase 3",
                 "how": "found by creation date and transferred (step 3.1)"})
    return DataReturnPlan(run_id, now, run.cutoff, start, rows)

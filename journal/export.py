"""Journal exports: one row per step execution, as CSV (for auditors' spreadsheets) and Markdown."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd

from connectors.outputs import markdown_text, write_csv, write_private_text

from .models import StepExecution
from .store import Journal

COLUMNS = [
    "run_id", "mode", "phase", "step", "title", "owner", "urgency", "action", "attempt", "outcome", "actor",
    "planned_start_utc", "planned_end_utc", "planned_min", "actual_start_utc", "actual_end_utc", "actual_min",
    "over_plan_min", "downtime", "notes", "error", "evidence", "counters",
]

def _iso(t: dt.datetime | None) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if t else ""


def _minutes(seconds: float | None) -> float | None:
    return round(seconds / 60, 2) if seconds is not None else None


def step_row(e: StepExecution, mode: str = "") -> dict:
    over = None
    if e.duration_s is not None:
        over = _minutes(max(0.0, e.duration_s - e.planned_duration_s))
    return {
        "run_id": e.run_id, "mode": mode, "phase": e.phase, "step": e.step_id, "title": e.title, "owner": e.owner,
        "urgency": e.urgency, "action": e.action, "attempt": e.attempt, "outcome": e.outcome, "actor": e.actor or "",
        "planned_start_utc": _iso(e.planned_start), "planned_end_utc": _iso(e.planned_end),
        "planned_min": _minutes(e.planned_duration_s), "actual_start_utc": _iso(e.actual_start),
        "actual_end_utc": _iso(e.actual_end), "actual_min": _minutes(e.duration_s), "over_plan_min": over,
        "downtime": e.downtime or "", "notes": e.notes or "", "error": e.error or "",
        "evidence": json.dumps(e.evidence, ensure_ascii=False, sort_keys=True) if e.evidence else "",
        "counters": json.dumps(e.counters, sort_keys=True) if e.counters else "",
    }


def journal_frame(journal: Journal, run_id: str) -> pd.DataFrame:
    run = journal.get_run(run_id)
    return pd.DataFrame([step_row(e, run.mode) for e in journal.steps(run_id)], columns=COLUMNS)


def markdown_table(rows: list[dict], columns: list[str] | dict[str, str]) -> str:
    """A GitHub-flavoured Markdown table, each line ending in a newline; every cell is inert text
    (:func:`connectors.outputs.markdown_text`: one line, pipes, HTML and Markdown escaped).

    ``columns``: the keys of ``rows`` to show, in order; a dict maps each key to its heading.
    """
    cell = markdown_text

    headings = columns if isinstance(columns, dict) else {c: c for c in columns}
    head = "| " + " | ".join(headings.values()) + " |\n|" + "---|" * len(headings) + "\n"
    return head + "".join("| " + " | ".join(cell(r.get(c)) for c in headings) + " |\n" for r in rows)


SUMMARY_COLUMNS = ["step", "title", "owner", "outcome", "actor", "planned_min", "actual_min", "over_plan_min"]
REVIEW_COLUMNS = [c for c in COLUMNS if c not in ("run_id", "mode")]  # the full review: every column that varies
BRIEF_COLUMNS = {"step": "step", "outcome": "outcome — by", "minutes": "min (plan)"}  # fits the resume modal


def brief_table(rows: list[dict]) -> str:
    """The phase's journal rows (:func:`step_row`) as a three-column table for a prompt: the resume
    modal shows the prompt in a narrow box; every column is in the full review."""
    def minutes(r: dict) -> str:
        actual = "…" if r["actual_min"] is None else f"{r['actual_min']:g}"
        return f"{actual} ({r['planned_min']:g})" if r["planned_min"] is not None else actual

    brief = [{"step": f"{r['step']} {r['title']}", "outcome": f"{r['outcome']} — {r['actor']}" if r["actor"]
              else r["outcome"], "minutes": minutes(r)} for r in rows]
    return markdown_table(brief, BRIEF_COLUMNS)


def phase_rows(journal: Journal, run_id: str, phase: int) -> list[dict]:
    return [step_row(e) for e in journal.steps(run_id) if e.phase == phase]


def downtime_window(journal: Journal, run_id: str) -> tuple[dt.datetime | None, dt.datetime | None]:
    """The user downtime: confirmation of the 'start' step to confirmation of the 'end' step."""
    done = [e for e in journal.steps(run_id) if e.outcome == "done" and e.downtime]
    start = next((e.actual_end for e in done if e.downtime == "start"), None)
    end = next((e.actual_end for e in done if e.downtime == "end"), None)
    return start, end


def render_markdown(journal: Journal, run_id: str) -> str:
    run = journal.get_run(run_id)
    tz = ZoneInfo(run.timezone)
    rows = [step_row(e, run.mode) for e in journal.steps(run_id)]
    out = [
        f"# Migration journal — {run.name} ({run.mode})",
        "",
        f"- Run: `{run.id}` · portal {run.portal} · status **{run.status}**"
        + (f" — {markdown_text(run.status_detail)}" if run.status_detail else ""),
        f"- Started {_iso(run.created_at)} UTC ({run.created_at.astimezone(tz):%Y-%m-%d %H:%M} {run.timezone})"
        + (f", ended {_iso(run.ended_at)} UTC" if run.ended_at else ""),
        f"- Attempts (runs of the flow): {run.attempts}",
    ]
    start, end = downtime_window(journal, run_id)
    if start:
        out.append(f"- User downtime: {_iso(start)} → {_iso(end) if end else 'ongoing'} UTC"
                   + (f" ({(end - start).total_seconds() / 60:.1f} min)" if end else ""))
    for phase in sorted({r["phase"] for r in rows}):
        out += ["", f"## Phase {phase}", "", markdown_table([r for r in rows if r["phase"] == phase],
                                                             SUMMARY_COLUMNS + ["notes"])]
    signoffs = journal.signoffs(run_id)
    if signoffs:
        out += ["", "## Sign-offs", "", markdown_table(
            [{"phase": s.phase, "signer": s.signer, "role": s.role, "decision": s.decision,
              "signed_at_utc": _iso(s.signed_at), "comment": s.comment or ""} for s in signoffs],
            ["phase", "signer", "role", "decision", "signed_at_utc", "comment"])]
    return "\n".join(out) + "\n"


def export_run(journal: Journal, run_id: str, out_dir: str | Path) -> dict[str, Path]:
    """Write journal.csv (one row per step execution) and journal.md; return their paths."""
    out = Path(out_dir)
    return {"csv": write_csv(journal_frame(journal, run_id), out / "journal.csv"),
            "markdown": write_private_text(out / "journal.md", render_markdown(journal, run_id))}

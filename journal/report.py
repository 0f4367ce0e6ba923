"""The auditor's report of one run: a self-contained HTML file plus CSV and Markdown.

It shows the run (portal, mode, the backup cutoff and where it was read from, window in UTC and
local time, the user downtime), the journal's integrity (hash chain), each phase's steps (owner,
actor, planned vs actual start/end/duration, outcome, a summary of the evidence, deviations over
plan flagged), sign-offs, the risk decisions (who accepted or planned what at which gate), issues
with severity and status, forecast vs actual (when a forecast was recorded), notices, and two
charts (the plan and the actual run each on its own time axis, throughput over time); the whole
evidence per step and the event log are its appendices. The HTML has inline CSS and its charts
embedded as base64 PNG, so it can be mailed or archived as one file; it prints on A4 portrait, and
:func:`write_report` prints it to report.pdf with headless Chromium when one is installed
(:mod:`journal.pdf`).

Every text comes from the journal, which is redacted when written; the template redacts again
and HTML-escapes everything.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

import jinja2
import pandas as pd
from markupsafe import Markup, escape

from checklists.risks import RISKS_PATH, load_risks
from checklists.runbook import OWNER_LABELS
from connectors.secrets import redact

from . import evidence as ev
from .chain import verify_run
from .charts import data_uri, gantt_png, throughput_png
from .configuration import TEMPLATES_DIR
from .events import EventKind
from connectors.outputs import markdown_text as md, write_csv, write_private_text

from .export import downtime_window, journal_frame, markdown_table
from .forecast import compare, human_duration, recorded_forecast
from .models import utcnow
from .pdf import print_pdf
from .risks import risk_decisions
from .presync import presync_summary
from .sweeps import sweep_totals
from .triage import issues as list_issues

log = logging.getLogger("cloud2box")

# A step may run this much over plan before it is flagged as a deviation.
DEVIATION_TOLERANCE = 0.10
_STREAM_KINDS = {EventKind.ETA, EventKind.FORECAST_ETA}  # many per step: charted, counted, not listed one by one


@dataclass
class StepView:
    step_id: str
    phase: int
    title: str
    owner: str
    owner_label: str
    actor: str
    attempt: int
    outcome: str
    planned_start: dt.datetime | None
    planned_end: dt.datetime | None
    planned_s: float
    actual_start: dt.datetime | None
    actual_end: dt.datetime | None
    actual_s: float | None
    over_s: float | None
    deviation: bool
    facts: list[tuple[str, str]]  # a few counters and short evidence values; the rest is in the appendix
    anchor: str | None  # the step's entry in the evidence appendix, when it has more than the facts
    notes: str
    error: str
    downtime: str | None


NOTES_IN_TABLE = 240  # characters of a step's notes shown in the steps table; all of them in the appendix


def _anchor(e) -> str:
    return f"evidence-{e.step_id}" + (f"-{e.attempt}" if e.attempt > 1 else "")


def _step_view(e) -> StepView:
    over = None if e.duration_s is None else e.duration_s - e.planned_duration_s
    in_appendix = ev.has_details(e.evidence, e.counters) or len(e.notes or "") > NOTES_IN_TABLE
    return StepView(
        step_id=e.step_id, phase=e.phase, title=e.title, owner=e.owner, owner_label=OWNER_LABELS.get(e.owner, e.owner),
        actor=e.actor or "", attempt=e.attempt, outcome=e.outcome, planned_start=e.planned_start,
        planned_end=e.planned_end, planned_s=e.planned_duration_s, actual_start=e.actual_start,
        actual_end=e.actual_end, actual_s=e.duration_s, over_s=over,
        deviation=(e.outcome == "failed") or (over is not None and over > DEVIATION_TOLERANCE * e.planned_duration_s),
        facts=ev.summary(e.evidence, e.counters), anchor=_anchor(e) if in_appendix else None,
        notes=e.notes or "", error=e.error or "", downtime=e.downtime,
    )


def _appendix(executions) -> list[dict]:
    """Appendix A: each step execution's whole evidence, counters and notes."""
    out = []
    for e in executions:
        if not (ev.has_details(e.evidence, e.counters) or len(e.notes or "") > NOTES_IN_TABLE):
            continue
        out.append({"anchor": _anchor(e), "step_id": e.step_id, "attempt": e.attempt, "title": e.title,
                    "outcome": e.outcome, "evidence": ev.tree(e.evidence) if e.evidence else None,
                    "counters": ev.tree(e.counters) if e.counters else None,
                    "notes": e.notes if len(e.notes or "") > NOTES_IN_TABLE else ""})
    return out


def _as_utc(value) -> dt.datetime | None:
    """A journaled time (a datetime or ISO 8601 text) in UTC; None when there is none to read."""
    if not value:
        return None
    try:
        t = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def _cutoff(run, executions, events) -> dict:
    """The backup's cutoff and where it was read from: the run, else what the CRM delta used."""
    if run.cutoff:
        return {"at": run.cutoff, "source": "recorded in the run's journal"}
    for e in reversed(executions):
        at = _as_utc((e.evidence or {}).get("cutoff"))
        if at:
            return {"at": at, "source": f"the cutoff step {e.step_id} used (its evidence; the run recorded none)"}
    for x in reversed(events):
        at = _as_utc((x.data or {}).get("cutoff")) if x.kind == EventKind.CRM_DELTA_EXPORT else None
        if at:
            return {"at": at, "source": f"the cutoff step {x.step_id} exported from (its crm_delta_export event; "
                                        "the run recorded none)"}
    at = _as_utc(((run.config_snapshot or {}).get("crm_delta") or {}).get("cutoff"))
    if at:
        return {"at": at, "source": "the config ([crm_delta] cutoff); no step recorded one"}
    return {"at": None, "source": None}


_DECISIONS = {"accepted": "accepted", "mitigation-planned": "mitigation planned", "verified": "verified",
              "open": "open"}


def _risk_rows(journal, run, signoffs) -> list[dict]:
    """Each risk decision: the risk, the decision, who made it (signer and role), when, at which gate.

    Decisions are taken with a gate's approval (flows/gates.py): the gate is the signer's latest
    sign-off at or just before the decision.
    """
    decisions = risk_decisions(journal, run.id)
    if not decisions:
        return []
    path = ((run.config_snapshot or {}).get("runbook") or {}).get("risks") or RISKS_PATH
    try:
        titles = {r.id: r.title for r in load_risks(path).risks}
    except Exception:  # the register moved or changed since the run: the journal's ids still say what was decided
        try:
            titles = {r.id: r.title for r in load_risks(RISKS_PATH).risks}
        except Exception:
            titles = {}
    rows = []
    for d in decisions:
        gate = max((so for so in signoffs if so.signer == d.decided_by
                    and so.signed_at <= d.at + dt.timedelta(seconds=5)), key=lambda so: so.signed_at, default=None)
        rows.append({"risk_id": d.risk_id, "risk": titles.get(d.risk_id, ""), "status": d.status,
                     "decision": _DECISIONS.get(d.status, d.status), "note": d.note or "",
                     "by": d.decided_by or "", "role": gate.role if gate else "", "at": d.at,
                     "gate": gate.phase if gate else None})
    rows.sort(key=lambda r: (r["status"] != "accepted", r["risk_id"]))  # what was accepted unmitigated first
    return rows


def build_context(journal, run_id: str) -> dict:
    """Everything the report shows, as plain values (used by the HTML and Markdown renderers)."""
    run = journal.get_run(run_id)
    tz = ZoneInfo(run.timezone)
    executions = journal.steps(run_id)
    steps = [_step_view(e) for e in executions]
    phases = []
    signoffs = journal.signoffs(run_id)
    for number in sorted({s.phase for s in steps} | {s.phase for s in signoffs}):
        phases.append({"number": number, "steps": [s for s in steps if s.phase == number],
                       "signoffs": [s for s in signoffs if s.phase == number]})
    start, end = downtime_window(journal, run_id)
    down_steps = ({s.downtime: s.step_id for s in steps if s.downtime})
    events = journal.events(run_id)
    if not start:  # a run journaled without the steps' downtime marks: its downtime events
        start = next((e.at for e in events if e.kind == EventKind.DOWNTIME_START), None)
        end = next((e.at for e in events if e.kind == EventKind.DOWNTIME_END), None) if start else None
    gates = [(f"G{so.phase}" + ("" if so.decision == "approve" else f" {so.decision}"), so.signed_at)
             for so in signoffs]
    forecast = recorded_forecast(journal, run_id)
    found = list_issues(journal, run_id)
    chain = verify_run(journal, run_id)
    return {
        "run": run, "tz": run.timezone, "tzinfo": tz, "generated_at": utcnow(),
        "cutoff": _cutoff(run, executions, events), "risk_decisions": _risk_rows(journal, run, signoffs),
        "appendix": _appendix(executions), "notes_in_table": NOTES_IN_TABLE,
        "window": (min([e.actual_start for e in executions if e.actual_start] or [run.created_at]), run.ended_at),
        "downtime": {"start": start, "end": end, "start_step": down_steps.get("start"),
                     "end_step": down_steps.get("end"),
                     "seconds": (end - start).total_seconds() if start and end else None},
        "phases": phases, "steps": steps, "signoffs": signoffs,
        "deviations": [s for s in steps if s.deviation], "tolerance_pct": DEVIATION_TOLERANCE * 100,
        "issues": found, "open_issues": [i for i in found if i.status == "open"],
        "forecast": forecast, "forecast_rows": compare(forecast, journal, run_id) if forecast else [],
        "notices": [e for e in events if e.kind == EventKind.NOTICE],
        "events": [e for e in events if e.kind not in _STREAM_KINDS],
        "stream_counts": {k: sum(1 for e in events if e.kind == k) for k in _STREAM_KINDS},
        "chain": chain,
        "verifications": [{"step": e.step_id, "at": e.at, "summary": e.data.get("summary", ""),
                           "where": (f"the gate of phase {e.step_id.split('-', 1)[1]}"
                                     if str(e.step_id).startswith("gate-") else f"step {e.step_id}"),
                           "results": e.data.get("results", [])} for e in events if e.kind == EventKind.VERIFICATION],
        "sweeps": _sweeps_view(events),
        "presync": presync_summary(journal, run_id),
        "crm_moved": _crm_moved_view(events),
        "charts": {"gantt": data_uri(gantt_png(executions, gates=gates, downtime=(start, end))),
                   "throughput": data_uri(throughput_png(events))},
    }


def _crm_moved_view(events) -> dict | None:
    """The last CRM reconciliation's per-entity table (what the delta moved and what the box holds)."""
    done = [e for e in events if e.kind == EventKind.CRM_RECONCILIATION and (e.data or {}).get("per_entity")]
    if not done:
        return None
    last = done[-1]
    return {"step": last.step_id, "at": last.at, "ok": bool(last.data.get("ok")),
            "rows": [{"entity": k, **v} for k, v in last.data["per_entity"].items()]}


def _sweeps_view(events) -> dict | None:
    done = [e for e in events if e.kind == EventKind.SWEEP]
    if not done:
        return None
    return {**sweep_totals(done), "quarantined": [e.data for e in events if e.kind == EventKind.QUARANTINE]}


# -- HTML ---------------------------------------------------------------------------------------

_LONG_TOKEN = re.compile(r"\S{25,}")
_SOFT_BREAK_AFTER = frozenset("/\\_.-=&:,;@|")


def wrap(value) -> Markup:
    """Redacted, escaped text with break opportunities (``<wbr>``) inside long tokens — paths,
    hashes, URLs — so a narrow column wraps them without splitting short words (copied text keeps
    no trace of them)."""
    if value is None:
        return Markup("")
    text = redact(value) if isinstance(value, str) else str(value)

    def soften(token: str) -> str:
        out, run = [], 0
        for ch in token:
            out.append(str(escape(ch)))
            run += 1
            if ch in _SOFT_BREAK_AFTER or run >= 12:
                out.append("<wbr>")
                run = 0
        return "".join(out)

    out, last = [], 0
    for m in _LONG_TOKEN.finditer(text):
        out += [str(escape(text[last:m.start()])), soften(m.group(0))]
        last = m.end()
    out.append(str(escape(text[last:])))
    return Markup("".join(out))


def _env(tz: ZoneInfo, tz_name: str) -> jinja2.Environment:
    def finalize(value):
        if value is None:
            return ""
        if isinstance(value, Markup):
            return value
        return redact(value) if isinstance(value, str) else value

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)), autoescape=True,
                             undefined=jinja2.StrictUndefined, finalize=finalize, trim_blocks=True, lstrip_blocks=True)

    def utc(t):
        return f"{t.astimezone(dt.timezone.utc):%Y-%m-%d %H:%M:%S}" if t else ""

    def local(t):
        return f"{t.astimezone(tz):%Y-%m-%d %H:%M:%S}" if t else ""

    def both(t):
        return f"{utc(t)} UTC ({t.astimezone(tz):%H:%M:%S} {tz_name})" if t else ""

    def hm(t):
        return f"{t.astimezone(dt.timezone.utc):%Y-%m-%d %H:%M}" if t else ""

    def hms_after(t, start=None):
        """An end time: the time alone when it is on the start's day."""
        if not t:
            return ""
        t = t.astimezone(dt.timezone.utc)
        same_day = start is not None and t.date() == start.astimezone(dt.timezone.utc).date()
        return f"{t:%H:%M:%S}" if same_day else utc(t)

    env.filters.update(wrap=wrap, utc=utc, local=local, both=both, hm=hm, hms=utc, hms_after=hms_after,
                       duration=human_duration,
                       minutes=lambda s: "" if s is None else f"{s / 60:.1f}",
                       pct=lambda x: "" if x is None else f"{x:+.0f} %")
    return env


def render_html(context: dict) -> str:
    ctx = dict(context)
    ctx["charts"] = {k: Markup(v) if v else None for k, v in context["charts"].items()}
    return _env(context["tzinfo"], context["tz"]).get_template("report.html.j2").render(**ctx)


# -- Markdown -----------------------------------------------------------------------------------

def _t(t) -> str:
    return f"{t.astimezone(dt.timezone.utc):%Y-%m-%d %H:%M:%S}" if t else ""


def render_markdown(context: dict) -> str:
    run, tz = context["run"], context["tzinfo"]

    def both(t):
        return f"{_t(t)} UTC ({t.astimezone(tz):%H:%M} {context['tz']})" if t else "—"

    chain = context["chain"]
    down = context["downtime"]
    out = [f"# Migration report — {run.name} ({run.mode})", "",
           f"- Run `{run.id}` · portal {md(run.portal)} · mode **{run.mode}** · status **{run.status}**"
           + (f" — {md(run.status_detail)}" if run.status_detail else ""),
           f"- Window: {both(context['window'][0])} → {both(context['window'][1])}",
           f"- Backup cutoff: {both(context['cutoff']['at'])}"
           + (f" — {context['cutoff']['source']}" if context["cutoff"]["source"] else " — not recorded"),
           f"- User downtime ({down['start_step'] or '?'} → {down['end_step'] or '?'}): {both(down['start'])} → "
           f"{both(down['end'])}" + (f", {human_duration(down['seconds'])}" if down["seconds"] is not None else ""),
           f"- Journal integrity: {chain.status.upper()} ({chain.mode}) — {chain.entries} chained entries, "
           f"head hash `{chain.head_hash}`"]
    if chain.status == "tampered":
        out += [f"  - {md(p.message)}" for p in chain.problems]
    elif not chain.proven:
        out += [f"  - {md(chain.summary())}"]
    cols = ["step", "title", "owner", "actor", "planned_start_utc", "planned_min", "actual_start_utc",
            "actual_end_utc", "actual_min", "outcome", "deviation", "evidence"]
    for phase in context["phases"]:
        rows = [{"step": s.step_id + (f" #{s.attempt}" if s.attempt > 1 else ""), "title": s.title,
                 "owner": s.owner_label, "actor": s.actor, "planned_start_utc": _t(s.planned_start),
                 "planned_min": f"{s.planned_s / 60:.1f}", "actual_start_utc": _t(s.actual_start),
                 "actual_end_utc": _t(s.actual_end), "actual_min": "" if s.actual_s is None else f"{s.actual_s / 60:.1f}",
                 "outcome": s.outcome, "deviation": "OVER PLAN" if s.deviation and s.outcome != "failed"
                 else ("FAILED" if s.outcome == "failed" else ""),
                 "evidence": redact("; ".join(f"{k}: {v}" for k, v in s.facts))} for s in phase["steps"]]
        out += ["", f"## Phase {phase['number']}", "", markdown_table(rows, cols)]
        for so in phase["signoffs"]:
            out.append(f"- Sign-off: **{so.decision}** by {md(so.signer)} ({md(so.role)}) at {both(so.signed_at)}"
                       + (f" — {md(so.comment)}" if so.comment else ""))
    if context["risk_decisions"]:
        out += ["", "## Risk decisions", "", markdown_table(
            [{"risk": f"{r['risk_id']} {r['risk']}".strip(), "decision": r["decision"], "by": r["by"]
              + (f" ({r['role']})" if r["role"] else ""), "at_utc": _t(r["at"]),
              "gate": f"gate {r['gate']}" if r["gate"] else "", "note": r["note"]} for r in context["risk_decisions"]],
            ["risk", "decision", "by", "at_utc", "gate", "note"])]
    out += ["", "## Deviations", ""]
    out += [f"- {s.step_id} {s.title}: " + (f"failed — {md(s.error)}" if s.outcome == "failed" else
            f"{human_duration(s.actual_s)} against {human_duration(s.planned_s)} planned (+{human_duration(s.over_s)})")
            for s in context["deviations"]] or ["- none"]
    out += ["", "## Issues", ""]
    out += [markdown_table([{"#": i.id, "severity": i.severity, "status": i.status, "step": i.step_id or "",
                             "issue": i.title, "reported_by": i.reported_by, "at_utc": _t(i.at),
                             "resolution": i.resolution or ""} for i in context["issues"]],
                           ["#", "severity", "status", "step", "issue", "reported_by", "at_utc", "resolution"])
            if context["issues"] else "- none"]
    for v in context["verifications"]:
        out += ["", f"## Verification before {v['where']} ({_t(v['at'])} UTC): {v['summary']}", "",
                markdown_table([{"check": r["id"], "result": r["status"], "severity_if_failed": r["severity"],
                                 "finding": r["summary"]} for r in v["results"]],
                               ["check", "result", "severity_if_failed", "finding"])]
    moved = context["crm_moved"]
    if moved:
        out += ["", f"## CRM records moved (step {moved['step']}, reconciliation "
                    f"{'OK' if moved['ok'] else 'FAILED'})", "",
                markdown_table([{"entity": r["entity"], "in the delta": r["delta"], "on the box as in the cloud":
                                 r["matched"], "problems": r["problems"]} for r in moved["rows"]],
                               ["entity", "in the delta", "on the box as in the cloud", "problems"])]
    if context["presync"]:
        out += ["", "## Pre-sync (steps 2.5–2.10)", "", context["presync"].replace("**", "")]
    sw = context["sweeps"]
    if sw:
        out += ["", "## Straggler sweeps", "",
                f"- {sw['count']} sweep(s): {sw['created']} created and {sw['updated']} updated on the box, "
                f"{sw['echoes_skipped']} echo(es) of our own writes skipped, {sw['requests']} request(s), "
                f"{sw['stopped']} stopped by a request budget"]
        out += [f"- still in the cloud: {md(p['name'])} ({md(p.get('email', ''))}), {p['records']} record(s)"
                for p in sw["stragglers"]]
        out += [f"- quarantined: {q['entity']} {q['cloud_id']} ({q['changes']} changes)" for q in sw["quarantined"]]
    if context["forecast_rows"]:
        out += ["", "## Forecast vs actual", "", markdown_table(
            [{"step": r["step"], "title": r["title"], "kind": r["kind"], "forecast from": r["method"],
              "p50": human_duration(r["p50_s"]), "p90": human_duration(r["p90_s"]),
              "actual": human_duration(r["actual_s"]),
              "error": "" if r["error_pct"] is None else f"{r['error_pct']:+.0f} %"} for r in context["forecast_rows"]],
            ["step", "title", "kind", "forecast from", "p50", "p90", "actual", "error"]), FORECAST_LEGEND_MD]
    if context["notices"]:
        out += ["", "## Notices", ""]
        out += [f"- {_t(n.at)} UTC — {md(n.message)}" for n in context["notices"]]
    return "\n".join(out) + "\n"


FORECAST_LEGEND_MD = (
    "*kind*: automated (an action runs the step) or manual (a person confirms it). *forecast from*: the "
    "rehearsal's measured rate scaled to this run's amount, the rehearsal's duration, or the plan. *p50* / *p90*: "
    "the forecast duration the step should not exceed with 50 % / 90 % likelihood. *error* = (P50 − actual) ÷ "
    "actual: +162 % means the forecast was 2.62 × the actual duration (the step ran faster than forecast), "
    "−40 % that it took longer than forecast.")


# -- files --------------------------------------------------------------------------------------

SIGNOFF_COLUMNS = ["phase", "signer", "role", "decision", "signed_at_utc", "comment"]
ISSUE_COLUMNS = ["id", "severity", "status", "step", "title", "detail", "reported_by", "at_utc", "source",
                 "resolved_by", "resolved_at_utc", "resolution", "root_cause"]


def write_report(journal, run_id: str, out_dir: str | Path, *, pdf: bool = True) -> dict[str, Path]:
    """``cloud2box report --run ID --out DIR``: write report.html, report.md and CSV files (each
    0600, cells neutralised), and with ``pdf`` report.pdf printed from the HTML (A4 portrait) by
    headless Chromium. Without a Chromium the PDF is left out and the reason logged: the HTML is
    the report.

    Returns the paths: ``html``, ``markdown``, ``steps_csv``, ``signoffs_csv``, ``issues_csv``, and
    ``pdf`` when it was written.
    """
    out = Path(out_dir)
    context = build_context(journal, run_id)
    steps = journal_frame(journal, run_id)
    steps["deviation"] = [("failed" if s.outcome == "failed" else "over plan") if s.deviation else ""
                          for s in context["steps"]]
    signoffs = [{"phase": s.phase, "signer": s.signer, "role": s.role, "decision": s.decision,
                 "signed_at_utc": _t(s.signed_at), "comment": s.comment or ""} for s in context["signoffs"]]
    issues = [{"id": i.id, "severity": i.severity, "status": i.status, "step": i.step_id or "", "title": i.title,
               "detail": i.detail or "", "reported_by": i.reported_by, "at_utc": _t(i.at), "source": i.source,
               "resolved_by": i.resolved_by or "", "resolved_at_utc": _t(i.resolved_at),
               "resolution": i.resolution or "", "root_cause": i.root_cause or ""} for i in context["issues"]]
    paths = {"html": write_private_text(out / "report.html", render_html(context)),
             "markdown": write_private_text(out / "report.md", render_markdown(context)),
             "steps_csv": write_csv(steps, out / "steps.csv"),
             "signoffs_csv": write_csv(pd.DataFrame(signoffs, columns=SIGNOFF_COLUMNS), out / "signoffs.csv"),
             "issues_csv": write_csv(pd.DataFrame(issues, columns=ISSUE_COLUMNS), out / "issues.csv")}
    if pdf:
        printed = print_pdf(paths["html"], out / "report.pdf")
        if printed.path:
            paths["pdf"] = printed.path
        else:
            log.warning("report of run %s: %s; the HTML report is complete without it", run_id, printed.note)
    return paths


def report_markdown(journal, run_id: str) -> str:
    """The Markdown report alone (for a Prefect markdown artifact)."""
    return render_markdown(build_context(journal, run_id))

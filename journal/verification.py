"""The journal's side of the post-migration verification: results as events, failures as issues.

Each run of the checks is one chained ``verification`` event (every check's status, finding and
evidence). A failed check opens an issue with the check's severity — one open issue per check,
not one per run of it — so a fire blocks the next gate; a check that passes again resolves its
issue. A check that did not run changes nothing: not run is not passed.
"""

from __future__ import annotations

from connectors.outputs import markdown_text

from .events import EventKind
from .export import _iso, markdown_table
from .triage import issues, report_issue, resolve_issue

REPORTER = "cloud2box verification"
_COLUMNS = {"check": "check", "result": "result", "severity": "severity if failed", "finding": "finding"}
_REVIEW_COLUMNS = {"id": "check", "title": "what", "status": "result", "severity": "severity if failed",
                   "summary": "finding", "fix": "fix"}
_MARKS = {"passed": "✅ passed", "failed": "❌ FAILED", "not-run": "⚪ not run"}
BRIEF_FAILED = 6  # failed checks listed in a prompt; the full review lists them all


def _tag(check_id: str) -> str:
    return f"[verify:{check_id}]"


def record_verification(journal, run_id: str, verification, *, step_id: str | None) -> dict:
    """Journal ``verification`` (a :class:`checklists.verify.Verification`); returns what changed:
    ``{"opened": [issue ids], "resolved": [issue ids]}``."""
    journal.add_event(run_id, EventKind.VERIFICATION, f"verification before {step_id}: {verification.summary()}",
                      data={"summary": verification.summary(), "results": [r.as_dict() for r in verification.results]},
                      step_id=step_id)
    open_by_check = {}
    for issue in issues(journal, run_id, status="open"):
        if issue.title.startswith("[verify:"):
            open_by_check[issue.title.split("]", 1)[0] + "]"] = issue
    # a fire closed by hand with the customer's consent stays closed while its check still fails
    overridden = {i.title.split("]", 1)[0] + "]" for i in issues(journal, run_id, status="overridden")
                  if i.title.startswith("[verify:")}
    opened, resolved = [], []
    for r in verification.results:
        existing = open_by_check.get(_tag(r.id))
        if r.status == "failed" and existing is None and _tag(r.id) not in overridden:
            issue = report_issue(journal, run_id, title=f"{_tag(r.id)} {r.title}: {r.summary}", detail=r.fix,
                                 reported_by=REPORTER, severity=r.severity, step_id=step_id, source="check")
            opened.append(issue.id)
        elif r.status == "passed" and existing is not None:
            resolve_issue(journal, existing.id, resolved_by=REPORTER,
                          resolution=f"the check passed again before {step_id}: {r.summary}")
            resolved.append(existing.id)
    return {"opened": opened, "resolved": resolved}


def verification_markdown(verification) -> str:
    """The results of a :class:`checklists.verify.Verification` for a prompt or an artifact."""
    return (f"**Verification:** {verification.summary()}. A check that did not run is not a pass.\n\n"
            + markdown_table(verification.rows(), _COLUMNS).rstrip("\n"))


def verification_brief(verification, *, fires_listed: bool = False) -> str:
    """The results for a prompt: the counts, then each failed check as one bullet with its finding
    and its fix (no table: the resume modal is narrow; the full review has the table).
    ``fires_listed``: the prompt lists the open fires already (a gate): their checks are not repeated."""
    lines = [f"**Verification:** {verification.summary()}. A check that did not run is not a pass."]
    failed = [r for r in verification.failed if not (fires_listed and r.severity == "fire")]
    if failed:
        lines.append("")
        lines += [f"- ❌ **{markdown_text(r.id)}** ({markdown_text(r.severity)}): {markdown_text(r.summary)}"
                  + (f" — *fix:* {markdown_text(r.fix)}" if r.fix else "") for r in failed[:BRIEF_FAILED]]
        if len(failed) > BRIEF_FAILED:
            lines.append(f"- … {len(failed) - BRIEF_FAILED} more failed check(s) in the full review")
    return "\n".join(lines)


def latest_verification_markdown(journal, run_id: str) -> str:
    """The run's latest verification from the journal, every check with its finding and its fix in
    columns of their own (for the full-page review; empty when the checks never ran)."""
    done = journal.events(run_id, EventKind.VERIFICATION)
    if not done:
        return ""
    last = done[-1]
    rows = [{**r, "status": _MARKS.get(r.get("status"), r.get("status")),
             "fix": r.get("fix", "") if r.get("status") == "failed" else ""} for r in last.data.get("results", [])]
    return (f"**Verification before {markdown_text(last.step_id)}** ({_iso(last.at)} UTC): "
            f"{markdown_text(last.data.get('summary', ''))}. A check that did not run is not a pass.\n\n"
            + markdown_table(rows, _REVIEW_COLUMNS).rstrip("\n"))

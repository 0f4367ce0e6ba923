"""The journal's side of the post-migration verification: results as events, failures as issues.

Each run of the checks is one chained ``verification`` event (every check's status, finding and
evidence). A failed check opens an issue with the check's severity — one open issue per check,
not one per run of it — so a fire blocks the next gate; a check that passes again resolves its
issue. A check that did not run changes nothing: not run is not passed.
"""

from __future__ import annotations

from .events import EventKind
from .export import markdown_table
from .triage import issues, report_issue, resolve_issue

REPORTER = "cloud2box verification"
_COLUMNS = {"check": "check", "result": "result", "severity": "severity if failed", "finding": "finding"}


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
    opened, resolved = [], []
    for r in verification.results:
        existing = open_by_check.get(_tag(r.id))
        if r.status == "failed" and existing is None:
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

"""Triage: issues found by checks or reported in a step's form, each with a severity.

Severities (seed 002, rules in ``checklists/triage.toml``): ``fire`` — CRM work blocked (cannot
create or see leads/deals, users cannot log in, calls not logged); ``emergency`` — wrong,
misleading or stale data, links, certificates; ``sla`` — minor or hard to reproduce.

Issues live in ``c2b_issues`` (chained like every journal table). A phase gate lists the open
issues (:func:`gate_issues_markdown`) and cannot be approved while a fire is open
(:func:`check_gate` raises :class:`GateBlocked`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import ForeignKey, Integer, String, Text, select
from sqlalchemy.orm import Mapped, mapped_column

from checklists.toml_model import load_model
from connectors.errors import ConfigError, FatalError
from connectors.secrets import redact

from .events import EventKind
from .models import Base, utcnow

Severity = Literal["fire", "emergency", "sla"]
SEVERITY_ORDER = {"fire": 0, "emergency": 1, "sla": 2}
DEFAULT_RULES_PATH = Path(__file__).resolve().parent.parent / "checklists" / "triage.toml"


class Issue(Base):
    """A problem found during a run, with its severity and status."""

    __tablename__ = "c2b_issues"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("c2b_runs.id"), index=True)
    step_id: Mapped[str | None] = mapped_column(String(16), nullable=True)
    title: Mapped[str] = mapped_column(String(500))
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    severity: Mapped[str] = mapped_column(String(16))  # fire|emergency|sla
    rule: Mapped[str | None] = mapped_column(String(64), nullable=True)  # the triage rule that decided, or "manual"
    status: Mapped[str] = mapped_column(String(16), default="open")  # open|resolved|overridden (closed by hand)
    source: Mapped[str] = mapped_column(String(16), default="check")  # check|form|ladder|manual
    reported_by: Mapped[str] = mapped_column(String(200))
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    resolved_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    resolution: Mapped[str | None] = mapped_column(Text, nullable=True)
    root_cause: Mapped[str | None] = mapped_column(Text, nullable=True)


# -- rules --------------------------------------------------------------------------------------

class SeverityInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str
    meaning: str
    response: str
    blocks_gate: bool = False


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    severity: Severity
    description: str = ""
    keywords: list[str] = Field(min_length=1)


class TriageRules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    severities: dict[Severity, SeverityInfo]
    rules: list[Rule]

    def classify(self, title: str, detail: str = "") -> tuple[Severity, str | None]:
        """The severity of an issue and the id of the rule that decided (None: no rule matched → sla)."""
        text = f"{title}\n{detail}".lower()
        for rule in sorted(self.rules, key=lambda r: SEVERITY_ORDER[r.severity]):
            if any(k.lower() in text for k in rule.keywords):
                return rule.severity, rule.id
        return "sla", None


def load_rules(path: str | Path | None = None) -> TriageRules:
    """Load the triage rules (default ``checklists/triage.toml``); ConfigError lists every problem."""
    path = Path(path or DEFAULT_RULES_PATH)
    rules = load_model(path, TriageRules, missing="triage rules file not found; the shipped one is checklists/triage.toml")
    missing = sorted(set(SEVERITY_ORDER) - set(rules.severities))
    if missing:
        raise ConfigError(str(path), [f"[severities] {m} is not described" for m in missing])
    return rules


# -- issues -------------------------------------------------------------------------------------

class GateBlocked(FatalError):
    """A gate was approved while a fire is open."""


@dataclass(frozen=True)
class IssueView:
    """A detached, read-only copy of an issue for reports, forms and notices."""

    id: int
    run_id: str
    step_id: str | None
    title: str
    detail: str | None
    severity: str
    rule: str | None
    status: str
    source: str
    reported_by: str
    at: dt.datetime
    resolved_at: dt.datetime | None
    resolved_by: str | None
    resolution: str | None
    root_cause: str | None

    @classmethod
    def of(cls, row: Issue) -> "IssueView":
        return cls(**{f: getattr(row, f) for f in cls.__dataclass_fields__})


def report_issue(journal, run_id: str, *, title: str, reported_by: str, detail: str = "",
                 severity: Severity | None = None, step_id: str | None = None, source: str = "check",
                 rules: TriageRules | None = None) -> IssueView:
    """Record an issue; without ``severity`` the triage rules decide it. Texts are redacted."""
    title, detail = redact(title), redact(detail) if detail else ""
    rule_id: str | None = "manual"
    if severity is None:
        severity, rule_id = (rules or load_rules()).classify(title, detail)
    with journal.session() as s:
        row = Issue(run_id=run_id, step_id=step_id, title=title, detail=detail or None, severity=severity,
                    rule=rule_id, source=source, reported_by=redact(reported_by))
        s.add(row)
        s.flush()
        view = IssueView.of(row)
    journal.add_event(run_id, EventKind.ISSUE, f"[{severity}] {title}",
                      data={"issue_id": view.id, "severity": severity, "rule": rule_id}, step_id=step_id)
    return view


def resolve_issue(journal, issue_id: int, *, resolved_by: str, resolution: str,
                  root_cause: str | None = None) -> IssueView:
    with journal.session() as s:
        row = s.get(Issue, issue_id)
        if row is None:
            raise FatalError(f"no issue {issue_id} in the journal", fix="list the run's issues in its report")
        row.status, row.resolved_at = "resolved", utcnow()
        row.resolved_by, row.resolution = redact(resolved_by), redact(resolution)
        if root_cause:
            row.root_cause = redact(root_cause)
        view = IssueView.of(row)
    journal.add_event(view.run_id, EventKind.ISSUE_RESOLVED, f"issue {issue_id} resolved: {view.resolution}",
                      data={"issue_id": issue_id}, step_id=view.step_id)
    return view


def get_issue(journal, issue_id: int) -> IssueView:
    with journal.session() as s:
        row = s.get(Issue, issue_id)
        if row is None:
            raise FatalError(f"no issue {issue_id} in the journal", fix="cloud2box issues list shows the run's issues")
        return IssueView.of(row)


def override_issue(journal, issue_id: int, *, by: str, reason: str, agreed_by: str, agreed_role: str) -> IssueView:
    """Close an open issue by hand, with a customer's consent (checked by the caller: their one-time
    code, flows.signing.override_fire): status ``overridden``, an ``issue-override`` event. A check's
    failure no longer opens it again in this run (journal.verification); the gates list it."""
    with journal.session() as s:
        row = s.get(Issue, issue_id)
        if row is None:
            raise FatalError(f"no issue {issue_id} in the journal", fix="cloud2box issues list shows the run's issues")
        row.status, row.resolved_at, row.resolved_by = "overridden", utcnow(), redact(by)
        row.resolution = redact(f"closed by hand (override) by {by}, agreed by {agreed_by} ({agreed_role}) with a "
                                f"one-time code: {reason}")
        view = IssueView.of(row)
    journal.add_event(view.run_id, EventKind.ISSUE_OVERRIDE, f"issue {issue_id} [{view.severity}] closed by hand by "
                      f"{by}, agreed by {agreed_by} ({agreed_role}): {reason}",
                      data={"issue_id": issue_id, "by": by, "agreed_by": agreed_by, "agreed_role": agreed_role,
                            "reason": reason}, step_id=view.step_id)
    return view


def overrides_brief(journal, run_id: str) -> str:
    """The issues closed by hand (overrides) as bullets for a gate's prompt; empty when none."""
    from connectors.outputs import markdown_text

    closed = issues(journal, run_id, status="overridden")
    if not closed:
        return ""
    agreed = {e.data.get("issue_id"): e.data for e in journal.events(run_id, EventKind.ISSUE_OVERRIDE)}
    lines = [f"**Closed by hand — overrides ({len(closed)}):**", ""]
    for i in closed:
        who = agreed.get(i.id, {})
        lines.append(f"- ⚠️ {i.severity} #{i.id} {markdown_text(i.title)} — closed by {markdown_text(i.resolved_by)}, "
                     f"agreed by {markdown_text(who.get('agreed_by', '?'))} ({markdown_text(who.get('agreed_role', '?'))})"
                     f": {markdown_text(who.get('reason', i.resolution or ''))}")
    return "\n".join(lines)


def issues(journal, run_id: str, *, status: str | None = None) -> list[IssueView]:
    """Issues of a run, most severe first, then oldest first."""
    with journal.session() as s:
        q = select(Issue).where(Issue.run_id == run_id)
        if status:
            q = q.where(Issue.status == status)
        rows = [IssueView.of(r) for r in s.scalars(q.order_by(Issue.at, Issue.id))]
    return sorted(rows, key=lambda i: (SEVERITY_ORDER.get(i.severity, 9), i.at, i.id))


def open_fires(journal, run_id: str) -> list[IssueView]:
    return [i for i in issues(journal, run_id, status="open") if i.severity == "fire"]


def check_gate(journal, run_id: str, phase: int, decision: str) -> None:
    """Raise :class:`GateBlocked` when ``decision`` is approve while a fire is open."""
    if decision != "approve":
        return
    fires = open_fires(journal, run_id)
    if fires:
        listed = "; ".join(f"#{i.id} {i.title}" for i in fires)
        raise GateBlocked(f"phase {phase} cannot be approved while {len(fires)} fire(s) are open: {listed}",
                          fix="resolve the fires (or roll back to the cloud), then sign the gate again")


def gate_issues_markdown(journal, run_id: str, rules: TriageRules | None = None, *, detail: bool = False) -> str:
    """The open issues as a Markdown section (empty issues → a one-line note); ``detail`` adds each
    issue's detail (a failed check's fix) as a column: the full-page review has the room."""
    open_ = issues(journal, run_id, status="open")
    if not open_:
        return "**Open issues:** none."
    from .export import markdown_table  # export imports the store, which imports this module

    rules = rules or load_rules()
    rows = [{"#": i.id, "severity": rules.severities[i.severity].label if i.severity in rules.severities
             else i.severity, "step": i.step_id, "issue": i.title, "reported by": i.reported_by,
             "fix / detail": i.detail or ""} for i in open_]
    columns = ["#", "severity", "step", "issue", "reported by"] + (["fix / detail"] if detail else [])
    lines = [f"**Open issues ({len(open_)}):**", "", markdown_table(rows, columns).rstrip("\n")]
    if any(i.severity == "fire" for i in open_):
        lines += ["", "> **A fire is open: this gate cannot be approved.** "
                      "Resolve it, or decide to roll back to the cloud."]
    return "\n".join(lines)


BRIEF_FIRES = 5  # fires listed one by one in a prompt; the full review lists every issue


def open_issues_brief(journal, run_id: str) -> str:
    """The open issues for a prompt: counts by severity and each fire as a bullet with its fix (no
    table: the resume modal is narrow; :func:`gate_issues_markdown` is the full list)."""
    from connectors.outputs import markdown_text

    open_ = issues(journal, run_id, status="open")
    if not open_:
        return "**Open issues:** none."
    counts = ", ".join(f"{n} {sev}" for sev in SEVERITY_ORDER if (n := sum(1 for i in open_ if i.severity == sev)))
    fires = [i for i in open_ if i.severity == "fire"]
    lines = [f"**Open issues:** {counts} (all of them in the full review)."]
    if fires:
        lines.append("")
        lines += [f"- 🔥 #{i.id} {markdown_text(i.title)}" + (f" — *fix:* {markdown_text(i.detail)}" if i.detail else "")
                  for i in fires[:BRIEF_FIRES]]
        if len(fires) > BRIEF_FIRES:
            lines.append(f"- … {len(fires) - BRIEF_FIRES} more fire(s) in the full review")
        lines += ["", "> **A fire is open: this gate cannot be approved.** "
                      "Resolve it, or decide to roll back to the cloud."]
    return "\n".join(lines)


def check_of(issue: IssueView) -> str | None:
    """The id of the check whose failure opened ``issue`` (``[verify:<id>] …``), or None."""
    if issue.source == "check" and issue.title.startswith("[verify:") and "]" in issue.title:
        return issue.title[len("[verify:"):issue.title.index("]")]
    return None


def fires_refusal(fires: list[IssueView], asked: list[IssueView] = ()) -> str:
    """Why an approval is not taken while ``fires`` are open, as the re-ask shows it: each fire, and
    for a failed check that it still fails when the answer arrived and its fix. ``asked``: the fires
    open when the question was put; one of them closed by hand whose check still fails is named."""
    asked_checks = {check_of(i): i for i in asked if check_of(i)}
    parts = []
    for fire in fires:
        check, text = check_of(fire), f"#{fire.id} {fire.title}"
        if check:
            before = asked_checks.get(check)
            if before is not None and before.id != fire.id:
                text += (f" (issue #{before.id} was resolved by hand after you were asked, but the check "
                         f"{check} still fails now)")
            else:
                text += f" (the check {check} still fails now)"
        if fire.detail:
            text += f"; fix: {fire.detail.rstrip('. ')}"
        parts.append(text)
    return (f"{len(fires)} fire(s) open when your answer arrived: {'; '.join(parts)}. Resolve them and approve "
            "again, or reject the phase (roll back to the cloud)")

"""The typed forms a person fills in the Prefect UI when a run pauses.

Every text field carries its limits in the model's JSON schema (``maxLength``, ``pattern``): the
Prefect server validates a resume against that schema, so the UI refuses a bad answer while the
person is still at the form, and whatever it accepts fits the journal on SQLite and PostgreSQL
(names ≤ 120 characters, an issue line ≤ 500, no NUL or other control character, no bidi override
that makes text read differently from what it is, a name not blank).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field
from prefect.input import RunInput

from checklists.runbook import OWNER_LABELS, Phase, Step
from connectors.outputs import markdown_text


# characters no answer may hold: C0/C1 controls and the bidi embeddings, overrides and isolates;
# one-line fields refuse tab and newlines too. Written for both regex dialects that read them:
# ECMAScript (the UI, jsonschema on the server) and Python's re (pydantic, regex_engine below).
_BAD = "\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f-\\x9f\\u202a-\\u202e\\u2066-\\u2069"
_BAD_IN_LINE = _BAD + "\\t\\n\\r"
NAME_PATTERN = f"^(?=.*\\S)[^{_BAD_IN_LINE}]*$"
TEXT_PATTERN = f"^[^{_BAD}]*$"
LINES_PATTERN = f"^(?:[^{_BAD}\\n]{{0,500}}\\n)*[^{_BAD}\\n]{{0,500}}$"  # each line ≤ 500 (an issue title)
LINK_PATTERN = f"^(?:https?://[^{_BAD_IN_LINE} ]+)?$"

Name = Annotated[str, Field(min_length=1, max_length=120, pattern=NAME_PATTERN)]
Text = Annotated[str, Field(max_length=4000, pattern=TEXT_PATTERN)]
IssueLines = Annotated[str, Field(max_length=4000, pattern=LINES_PATTERN)]
Link = Annotated[str, Field(max_length=500, pattern=LINK_PATTERN)]


class _Form(RunInput):
    model_config = ConfigDict(regex_engine="python-re")  # the patterns use a look-ahead


class ManualStepInput(_Form):
    """Confirmation of a manual runbook step."""

    # a choice without a default: the UI makes the person pick one, nothing is assumed from a forgotten tick
    outcome: Literal["done", "not done"] = Field(
        description="done: the step is finished; not done: report it as NOT done (the run stops at this step)")
    done_by: Name = Field(description="Your full name: who did the step")
    notes: Text = Field(default="", description="What was done, problems met, anything the auditor should know")
    evidence_link: Link = Field(default="", description="Link (https://…) to evidence (ticket, screenshot, "
                                                         "document), if any")
    issues: IssueLines = Field(default="", description="Problems found, one per line of at most 500 characters "
                                                        "(they are triaged: fire / emergency / sla)")


class GateSignOff(_Form):
    """A customer's sign-off of a phase."""

    signer: Name = Field(description="Your full name")
    role: Name = Field(description="Your role at the customer, e.g. Head of Sales, IT Director")
    decision: Literal["approve", "reject"] = Field(description="approve: the next phase may start; reject: the run stops here")
    comment: Text = Field(default="", description="Why, and any conditions")


class GateSignOffAcceptingRisks(GateSignOff):
    """Sign-off of a phase whose register holds high-impact risks with no mitigation."""

    accept_unmitigated_risks: bool = Field(
        default=False,
        description="Tick to accept the high-impact risks that have NO mitigation (listed above). "
                    "Approval is not taken without it.")


class RollbackDecision(_Form):
    """The customer's decision when the user downtime passes the ladder's decision threshold."""

    decided_by: Name = Field(description="Your full name")
    role: Name = Field(description="Your role at the customer")
    decision: Literal["continue", "roll-back"] = Field(
        description="continue: go on with the move; roll-back: users go back to the cloud portal now")
    comment: Text = Field(default="", description="Why")


# The Prefect UI shows a pause's prompt in a small scroll box (~230 px high, the modal's width) above
# the form: a prompt holds who, what, the decision and key numbers, and links the full review (a
# full-page artifact, journal.review). A table in a prompt has at most this many columns (tested).
MAX_PROMPT_COLUMNS = 3
REVIEW_HOLDS = "the phase's journal with every column, the checks with finding and fix, every open issue"


def _review_line(review_link: str | None, holds: str = REVIEW_HOLDS) -> list[str]:
    if not review_link:
        return []
    return [f"**Full review** ({holds}): [open it on its own page]({review_link})", ""]


def manual_step_prompt(step: Step, *, mode: str, portal: str, attempt: int, extra_sections: list[str] = (),
                       review_link: str | None = None) -> str:
    """The step's Markdown: who, what, the choice and its consequence, the link to the full review,
    then short sections (pre-sync, checks, sweeps) of at most three columns."""
    who = OWNER_LABELS[step.owner]
    lines = [
        f"### Step {step.id} — {step.title}",
        f"**Who:** {who} · **Phase:** {step.phase} · **Urgency:** {step.urgency} · "
        f"**Planned:** {_human_minutes(step.planned_minutes)} · **Run:** {mode} of {portal}",
        "",
        step.instructions or "Do the step as agreed in the runbook.",
        "",
    ]
    if step.downtime == "start":
        lines += ["> **User downtime starts when you confirm this step.** The CRM users stop working in the cloud.", ""]
    if step.downtime == "end":
        lines += ["> **User downtime ends when you confirm this step.** The CRM users work on the box from now on.", ""]
    if attempt > 1:
        lines += [f"_This step was tried before (attempt {attempt}); see the journal for what happened._", ""]
    if step.sweep:
        lines += ["_While this step is open, cloud2box sweeps what people still create in the cloud into the box "
                  "and tells them to use the box (see the journal's sweep events)._", ""]
    lines.append(f"When it is done, the **{who}** chooses *done* (or *not done*: the run stops here), names who "
                 "did it, and submits.")
    if review_link:
        lines += ["", *_review_line(review_link)[:1]]
    for section in extra_sections:  # results (verification, sweeps) after the instructions
        lines += ["", section]
    return "\n".join(lines)


def gate_prompt(phase: Phase, *, mode: str, portal: str, journal_table_md: str, extra_sections: list[str] = (),
                refused_reason: str | None = None, decide_first: list[str] = (), review_link: str | None = None,
                review_holds: str = REVIEW_HOLDS) -> str:
    """The gate's Markdown. What the signer must decide comes first: the UI shows the prompt in a
    small scroll box above the form. ``journal_table_md`` is the phase's short journal table
    (:func:`journal.export.brief_table`); the sections are short too; the rest is in the full review."""
    lines = [
        f"### Sign-off of phase {phase.number} — {phase.title}",
        f"**Who:** Customer · **Run:** {mode} of {portal}",
        "",
    ]
    if refused_reason:  # built from issue titles and check findings: shown as inert text
        lines += [f"> **Your last approval was not taken:** {markdown_text(refused_reason)}", ""]
    lines += [phase.gate, "",
              "**Decide:** *approve* signs the phase off and the run goes on; *reject* stops the run here (it can "
              "be re-run; completed steps are kept).", ""]
    if decide_first:
        lines += ["**Before you approve:**", "", *[f"- {item}" for item in decide_first], ""]
    lines += _review_line(review_link, review_holds)
    lines += ["What was done in this phase:", "", journal_table_md, ""]
    for section in extra_sections:
        lines += [section, ""]
    return "\n".join(lines).rstrip("\n")


def _human_minutes(minutes: float) -> str:
    if minutes >= 1440:
        return f"{minutes / 1440:g} d"
    if minutes >= 60:
        return f"{minutes / 60:g} h"
    return f"{minutes:g} min"

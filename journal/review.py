"""The full review behind a prompt: what a person deciding at a pause may want to read in full.

The Prefect UI shows a pause's prompt in a small scroll box above the form, so a prompt holds only
who, what, the decision and key numbers (no table wider than three columns). Everything else is
here, rendered from the journal as it is now, published as a full-page Markdown artifact (one per
phase, updated in place: :func:`flows.outputs.publish_review`) and linked from the prompt: the
phase's journal with every column, the latest checks with finding and fix, every open issue with
its fix, and the sections the caller adds (risk register, pre-sync, sweeps).
"""

from __future__ import annotations

import datetime as dt

from connectors.outputs import markdown_text

from .export import REVIEW_COLUMNS, markdown_table, phase_rows
from .triage import gate_issues_markdown
from .verification import latest_verification_markdown


def review_markdown(journal, run_id: str, *, phase: int, title: str, asked: str,
                    sections: list[tuple[str, str]] = (), now: dt.datetime | None = None) -> str:
    """The review of ``phase`` of ``run_id``; ``asked``: the pause it was written for ("step 2.8",
    "gate 2, ask 3"); ``sections``: ``(heading, markdown)`` pairs added at the end (empty ones left out)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    rows = phase_rows(journal, run_id, phase)
    out = [f"# Review of phase {phase} — {markdown_text(title)}", "",
           f"Written for the pause at **{markdown_text(asked)}**, {now:%Y-%m-%d %H:%M} UTC, from the journal (the "
           "record). This page is updated in place at each pause of the phase: it shows the latest state.", "",
           "## Phase journal", "",
           markdown_table(rows, REVIEW_COLUMNS).rstrip("\n") if rows else "_No step of this phase started yet._", "",
           "## Checks", "", latest_verification_markdown(journal, run_id) or "_The checks have not run in this run yet._",
           "", "## Open issues", "", gate_issues_markdown(journal, run_id, detail=True)]
    for heading, text in sections:
        if text:
            out += ["", f"## {heading}", "", text]
    return "\n".join(out) + "\n"

"""Every Prefect artifact of a run, and the files a run leaves behind.

Artifacts are views: the journal is the record. So publishing one never fails a step or a run —
a failure is logged and the run goes on. The exports and the auditor's report are written when
the run ends, however it ends.

A view that changes during the run (a phase's journal, its full review, the checks before a step
or gate) is one artifact updated in place (:func:`publish_in_place`), not a new version per step;
the journal anchor keeps a version per gate answer on purpose: each is a copy kept apart.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import (TableArtifact, create_markdown_artifact, create_progress_artifact,
                               create_table_artifact, update_progress_artifact)

from checklists.runbook import Phase, Step
from connectors.secrets import redact
from journal.anchor import Anchor, current_anchor, deliver, target_label
from journal.events import EventKind
from journal.export import SUMMARY_COLUMNS, export_run, phase_rows
from journal.pdf import print_pdf
from journal.report import report_markdown, write_report
from journal.review import review_markdown

if TYPE_CHECKING:
    from flows.run_context import RunContext


class ProgressArtifact:
    """Turns an action's progress callbacks into one Prefect progress artifact (≤ 1 update/s)."""

    def __init__(self, key: str, title: str) -> None:
        self.key, self.title = key, title
        self.artifact_id = None
        self.last = 0.0

    def __call__(self, done: float, total: float | None, message: str = "") -> None:
        now = time.monotonic()
        if self.artifact_id is not None and now - self.last < 1.0 and (total is None or done < total):
            return
        self.last = now
        pct = min(100.0, 100.0 * done / total) if total else 0.0
        description = f"{self.title}: {message}" if message else self.title
        try:
            if self.artifact_id is None:
                self.artifact_id = create_progress_artifact(pct, key=self.key, description=description)
            else:
                update_progress_artifact(self.artifact_id, pct, description=description)
        except Exception as exc:  # progress display must never fail the step
            logging.getLogger("cloud2box").debug("progress artifact update failed: %s", exc)


def publish_in_place(run: RunContext, key: str, *, description: str, table: list[dict] | None = None,
                     markdown: str | None = None) -> UUID | None:
    """Publish the table (or Markdown) artifact ``key``: created at the first call of the run's
    process, updated in place after (Prefect would add a version per create: a phase's journal
    showed 12). Returns the artifact's id, or None when it could not be published: the journal is
    the record, so a failure is logged and never stops the run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactUpdate
    from prefect.exceptions import ObjectNotFound

    known = run.artifact_ids.get(key)
    try:
        if known is not None:
            data = TableArtifact(table=table).format(_sync=True) if table is not None else markdown
            try:
                with get_client(sync_client=True) as client:
                    client.update_artifact(known, ArtifactUpdate(data=data, description=description))
                return known
            except ObjectNotFound:  # deleted in the UI meanwhile: publish it again
                run.artifact_ids.pop(key, None)
        if table is not None:
            created = create_table_artifact(table, key=key, description=description)
        else:
            created = create_markdown_artifact(markdown or "", key=key, description=description)
        run.artifact_ids[key] = created
        return created
    except Exception as exc:  # noqa: BLE001 — the journal is the record; an artifact hiccup must not stop the run
        get_run_logger().warning("could not publish the artifact %s: %s", key, redact(exc))
        return None


def artifact_link(artifact_id: UUID) -> str:
    """The artifact's page in the Prefect UI (``/artifacts/artifact/<id>``, the UI's route in 3.x) at
    ``PREFECT_UI_URL`` (set it when the UI is behind a proxy; Prefect derives it from the API URL
    otherwise); a path on the same server when no UI address is known (an ephemeral server)."""
    from prefect.settings import PREFECT_UI_URL

    return f"{(PREFECT_UI_URL.value() or '').rstrip('/')}/artifacts/artifact/{artifact_id}"


def publish_phase_table(run: RunContext, phase: Phase) -> None:
    """The phase's journal rows as a table artifact (one per phase, updated after every step)."""
    rows = phase_rows(run.journal, run.run_id, phase.number)
    publish_in_place(run, f"journal-{run.run_id}-phase-{phase.number}",
                     table=[{c: r[c] for c in SUMMARY_COLUMNS} for r in rows],
                     description=f"Journal of phase {phase.number} ({phase.title}), run {run.run_id}")


def publish_review(run: RunContext, phase: Phase, asked: str, sections: list[tuple[str, str]] = ()) -> str | None:
    """The phase's full review (:func:`journal.review.review_markdown`) as one Markdown artifact per
    phase, updated in place at each pause; returns the link a prompt shows, or None."""
    try:
        text = review_markdown(run.journal, run.run_id, phase=phase.number, title=phase.title, asked=asked,
                               sections=sections)
    except Exception as exc:  # noqa: BLE001 — the prompt still goes out, without its link
        get_run_logger().warning("could not write the review of phase %s: %s", phase.number, redact(exc))
        return None
    artifact_id = publish_in_place(run, f"review-{run.run_id}-phase-{phase.number}", markdown=text,
                                   description=f"Full review of phase {phase.number} ({phase.title}) at {asked}, "
                                               f"run {run.run_id}")
    return artifact_link(artifact_id) if artifact_id is not None else None


def publish_verification(run: RunContext, step: Step, label: str | None, result) -> None:
    """The checks run before ``step`` (or before the gate ``label``) as a table artifact (one per
    step or gate, updated in place when the checks run again)."""
    publish_in_place(run, f"verification-{run.run_id}-{(label or 'step-' + step.slug).replace('.', '-')}",
                     table=[{"check": r.id, "result": r.status, "severity if failed": r.severity,
                             "finding": r.summary, "fix": r.fix} for r in result.results],
                     description=f"Verification before {label or 'step ' + step.id}: {result.summary()}")


def anchor_target(run: RunContext) -> str:
    """``[journal] anchor``: a path or URL, or the name of a ``[secrets]`` entry holding one."""
    value = run.config.journal.anchor
    secret = run.secrets.get(value) if value else None
    return secret.get_secret_value() if secret is not None else value


def publish_anchor(run: RunContext, reason: str) -> Anchor | None:
    """Send the journal's anchor (run count + head hash) away from it: a Prefect artifact and
    ``[journal] anchor``. Never fails the run: a failure is logged and journaled (a warning)."""
    logger = get_run_logger()
    try:
        anchor = current_anchor(run.journal, reason=reason)
    except Exception as exc:  # the journal write that follows will raise properly if the database is gone
        logger.warning("could not compute the journal anchor (%s): %s", reason, redact(exc))
        return None
    try:
        create_markdown_artifact(anchor_markdown(anchor), key=f"journal-anchor-{run.run_id}",
                                 description=f"Journal anchor ({reason}): {anchor.short}")
    except Exception as exc:  # the artifact is one of the anchor's copies; the others still go
        logger.warning("could not publish the journal anchor artifact: %s", redact(exc))
    target = anchor_target(run)
    if target:
        try:
            deliver(anchor, target, timeout_s=run.config.journal.anchor_timeout_s)
        except Exception as exc:  # the auditor's copy is missing this one: say so where they will look
            where = target_label(target)
            logger.warning("could not send the journal anchor to %s: %s", where, redact(type(exc).__name__))
            run.journal.add_event(run.run_id, EventKind.ANCHOR_UNDELIVERED, f"journal anchor ({reason}) not delivered to "
                                  f"{where}: {type(exc).__name__}", data={"anchor": anchor.short, "target": where})
    return anchor


def anchor_markdown(anchor: Anchor) -> str:
    rows = "\n".join(f"| `{run_id}` | {entries} | `{head}` |" for run_id, entries, head in anchor.chains or [])
    return (f"## Journal anchor — {anchor.reason}\n\n**{anchor.short}**\n\nKeep this apart from the journal: "
            f"`cloud2box journal verify --anchor '<the JSON below>'` shows any run removed, tail cut or entry "
            f"rewritten since.\n\n| run | entries | head hash |\n|---|---|---|\n{rows}\n\n"
            f"```json\n{anchor.to_json()}\n```\n")


def write_outputs(run: RunContext) -> dict[str, Path]:
    """The journal exports and the auditor's report, on disk and as a Prefect artifact.

    They go to ``out_dir/runs/<run>/`` (kept per run) and to ``out_dir`` itself (the latest run).
    report.pdf (A4 portrait) is printed once by headless Chromium and copied; without a Chromium
    the run says why in its log and the HTML is the report.
    """
    journal, run_id, out_dir = run.journal, run.run_id, run.out_dir
    paths = export_run(journal, run_id, out_dir)
    export_run(journal, run_id, out_dir / "runs" / run_id)
    try:
        kept = write_report(journal, run_id, out_dir / "runs" / run_id, pdf=False)
        paths.update(write_report(journal, run_id, out_dir, pdf=False))
        printed = print_pdf(paths["html"], out_dir / "report.pdf")
        kept_pdf = kept["html"].with_name("report.pdf")
        if printed.path:
            paths["pdf"] = printed.path
            shutil.copyfile(printed.path, kept_pdf)  # into the run's 0700 folder
            os.chmod(kept_pdf, 0o600)
        else:
            kept_pdf.unlink(missing_ok=True)
            get_run_logger().warning("report of run %s: %s; the HTML report is complete without it", run_id,
                                     printed.note)
        create_markdown_artifact(report_markdown(journal, run_id), key=f"report-{run_id}",
                                 description=f"Migration report of run {run_id}")
    except Exception as exc:  # the journal is the record; a report failure is logged, never fatal
        get_run_logger().warning("could not write the report of run %s: %s", run_id, redact(exc))
    publish_anchor(run, f"end of run {run_id} ({journal.get_run(run_id).status})")
    return paths

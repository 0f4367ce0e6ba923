"""The report of a demo-shaped run: every step, owner, sign-off, deviation; rendered in Chromium."""

from __future__ import annotations

import datetime as dt
import re
import struct
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from checklists.runbook import OWNER_LABELS, load_runbook
from journal.chain import verify_run
from journal.forecast import forecast_from
from journal.models import utcnow
from journal.notices import Notifier
from journal.configuration import NoticesSection
from journal.report import build_context, write_report
from journal.store import Journal
from journal.triage import report_issue, resolve_issue

CHROMIUM = Path("/usr/bin/chromium")
RUNBOOK = Path(__file__).resolve().parents[2] / "checklists" / "runbook.toml"
ACTORS = {"contractor": "Alex Engineer (Contractor)", "customer": "Dana Demo (Customer)",
          "customer-sales": "Sam Sales (Sales)"}
SIGNERS = {1: ("Dana Demo", "IT Director"), 2: ("Olga Owner", "Head of Sales"), 3: ("Dana Demo", "CEO")}


def _demo_run(journal: Journal, tmp_path: Path) -> tuple[str, dict]:
    """The runbook as the demo runs it, through the Journal API, with one failure and one overrun."""
    runbook = load_runbook(RUNBOOK)
    run, _ = journal.open_run(name="demo", portal="https://acme.bitrix24.eu", mode="cutover", timezone="Europe/Moscow",
                              config_snapshot={"migration": {"name": "demo"}})
    journal.set_cutoff(run.id, run.created_at - dt.timedelta(days=1))
    journal.add_event(run.id, "start", "cutover of https://acme.bitrix24.eu started")
    planned_at = run.created_at
    expected = {"over": "2.3", "failed": "2.7"}
    for seq, step in enumerate(runbook.steps):
        attempts = 2 if step.id == expected["failed"] else 1
        for attempt in range(1, attempts + 1):
            ex = journal.start_step(run.id, step_id=step.id, phase=step.phase, seq=seq, title=step.title,
                                    owner=step.owner, urgency=step.urgency, action=step.action,
                                    planned_duration_s=step.planned_s, planned_start=planned_at, downtime=step.downtime)
            if step.id == expected["failed"] and attempt == 1:
                journal.finish_step(ex, outcome="failed", actor=ACTORS[step.owner], notes="no ring tone",
                                    error="reported NOT done by Dana Demo (Customer)")
                continue
            ended = utcnow() + (dt.timedelta(seconds=step.planned_s * 1.5) if step.id == expected["over"]
                                else dt.timedelta(seconds=1))
            evidence = {"evidence_link": "https://tickets.example/42"} if step.id == "2.1" else {}
            counters = {}
            if step.id == "2.3":
                evidence = {"parts": [{"name": "acme.tar.gz", "sha256": "ab" * 32, "bytes": 104857600}],
                            "reconciliation": "30 parts, 31457280000 bytes, all gzip CRCs ok"}
                counters = {"bytes": 31457280000, "bytes_per_s": 820000.0}
                for i, rate in enumerate([790e3, 830e3, 805e3, 840e3]):
                    journal.add_event(run.id, "eta", f"download {25 * (i + 1)} %", step_id="2.3",
                                      data={"bytes_per_s": rate, "done": i})
            if step.id == "2.11":
                counters = {"records": 412, "records_per_s": 3100.0, "leads": 300, "deals": 112}
            notes = "=HYPERLINK(\"http://evil\")" if step.id == "1.2" else ("<script>alert(1)</script>"
                                                                           if step.id == "1.3" else "done")
            journal.finish_step(ex, outcome="done", actor=ACTORS[step.owner], notes=notes, evidence=evidence,
                                counters=counters, ended_at=ended)
        planned_at += dt.timedelta(seconds=step.planned_s)
        if step.id == "2.10":
            journal.add_event(run.id, "downtime-start", "user downtime starts (step 2.10)", step_id="2.10")
        if step.id == "2.12":
            journal.add_event(run.id, "downtime-end", "user downtime ends (step 2.12)", step_id="2.12")
        if step.id == runbook.phase(step.phase).steps[-1].id:
            signer, role = SIGNERS[step.phase]
            journal.record_signoff(run.id, phase=step.phase, signer=signer, role=role, decision="approve",
                                   comment=f"phase {step.phase} accepted")
    fire = report_issue(journal, run.id, title="Two users cannot log in", reported_by="Sam Sales", step_id="2.8",
                        source="form")
    resolve_issue(journal, fire.id, resolved_by="Alex Engineer", resolution="passwords reset",
                  root_cause="Bitrix24.Network passwords are not on the portal")
    report_issue(journal, run.id, title="Search returns nothing until reindex", reported_by="check", step_id="2.4")
    Notifier(journal, run.id, NoticesSection(dry_run=True, out_dir=tmp_path / "notices"), [],
             context={"portal": "https://acme.bitrix24.eu", "timezone": "Europe/Moscow"}).send(
        "progress", known="download at 50 %", impact="CRM down for sales")
    forecast_from(journal, run.id).record(journal, run.id)
    journal.finish_run(run.id, "completed")
    return run.id, expected


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    journal = Journal(f"sqlite:///{tmp / 'journal.db'}")
    run_id, expected = _demo_run(journal, tmp)
    paths = write_report(journal, run_id, tmp / "out")
    return {"journal": journal, "run_id": run_id, "paths": paths, "expected": expected,
            "html": paths["html"].read_text(encoding="utf-8"), "md": paths["markdown"].read_text(encoding="utf-8")}


def test_html_has_every_step_owner_actor_signoff(report):
    html, md = report["html"], report["md"]
    runbook = load_runbook(RUNBOOK)
    for step in runbook.steps:
        title = step.title.replace("'", "&#39;")
        assert f"<td>{title}</td>" in html, step.id
        assert step.title.replace("|", "\\|") in md
        assert re.search(rf'<td class="nowrap">{re.escape(step.id)}( |<)', html), step.id
    for owner in OWNER_LABELS.values():
        assert f"<td>{owner.replace(chr(39), '&#39;')}<br>" in html  # the actor under the owner
    for actor in ACTORS.values():
        assert f'<span class="muted">{actor}</span></td>' in html and actor in md
    for phase, (signer, role) in SIGNERS.items():
        assert f"<td>{signer}</td><td>{role}</td>" in html
        assert f"phase {phase} accepted" in html and f"phase {phase} accepted" in md


def test_run_facts_downtime_and_integrity(report):
    html = report["html"]
    assert "https://acme.bitrix24.eu" in html and "cutover" in html and "Europe/Moscow" in html
    assert "User downtime (2.10 → 2.12)" in html
    assert "Backup cutoff" in html and "not recorded" not in html.split("Backup cutoff")[1][:200]
    assert "Journal integrity: <span class=\"intact\">intact</span>" in html
    assert verify_run(report["journal"], report["run_id"]).head_hash in html


def test_deviations_issues_evidence_forecast_notices(report):
    html, md = report["html"], report["md"]
    over, failed = report["expected"]["over"], report["expected"]["failed"]
    ctx = build_context(report["journal"], report["run_id"])
    assert {(s.step_id, s.outcome) for s in ctx["deviations"]} == {(over, "done"), (failed, "failed")}
    assert "OVER PLAN +6.0 h" in html and "FAILED" in html and "reported NOT done by Dana Demo" in html
    assert "OVER PLAN" in md and "FAILED" in md
    assert "Two users cannot log in" in html and "Search returns nothing until reindex" in html
    assert 'class="badge fire"' in html and 'class="badge sla"' in html
    plain = html.replace("<wbr>", "")  # long tokens get break opportunities in print
    assert "ab" * 32 in plain and "31457280000" in plain and "all gzip CRCs ok" in plain
    assert "Forecast vs actual" in html and "P50 error" in html
    assert "download at 50 %" not in html  # the notice body is not the report; its title is
    assert "CRM move update" in html
    assert html.count('src="data:image/png;base64,') == 2  # Gantt and throughput


def test_html_is_escaped_and_self_contained(report):
    html = report["html"]
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html.replace("<wbr>", "")
    assert not re.search(r'(src|href)="(?!data:|#)', html)  # no external resource, only links within the page
    for target in re.findall(r'href="#([^"]+)"', html):
        assert f'id="{target}"' in html, target
    assert "<style>" in html and "@media print" in html


def test_csv_files(report):
    steps = pd.read_csv(report["paths"]["steps_csv"])
    assert len(steps) == len(load_runbook(RUNBOOK).steps) + 1  # the failed attempt is a row too
    assert set(steps.loc[steps["deviation"].notna(), "step"].astype(str)) == {"2.3", "2.7"}
    assert (steps["notes"] == "'=HYPERLINK(\"http://evil\")").any()  # neutralised formula
    signoffs = pd.read_csv(report["paths"]["signoffs_csv"])
    assert list(signoffs["signer"]) == ["Dana Demo", "Olga Owner", "Dana Demo"]
    issues = pd.read_csv(report["paths"]["issues_csv"])
    assert list(issues["severity"]) == ["fire", "sla"]


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def _chromium(tmp_path: Path, *args: str) -> None:
    subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'chromium-profile'}", *args],
                   check=True, timeout=120, capture_output=True)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium (/usr/bin/chromium) is not installed")
def test_renders_in_headless_chromium_and_prints(report, tmp_path):
    import matplotlib.image

    shot = tmp_path / "report.png"
    url = report["paths"]["html"].resolve().as_uri()
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", url)
    assert _png_size(shot) == (1280, 2000)
    pixels = matplotlib.image.imread(str(shot))
    assert pixels.std() > 0.05  # text, tables and charts, not a blank page
    dark_rows = (pixels[:, :, :3].mean(axis=2) < 0.5).any(axis=1).sum()
    assert dark_rows > 500  # ink spread over the page

    data = report["paths"]["pdf"].read_bytes()  # write_report printed it (tests/journal/test_report_pdf.py looks at it)
    assert data.startswith(b"%PDF") and len(re.findall(rb"/Type\s*/Page[^s]", data)) >= 2


def test_tampered_journal_is_flagged_in_the_report(tmp_path):
    import sqlite3

    journal = Journal(f"sqlite:///{tmp_path / 'journal.db'}")
    run, _ = journal.open_run(name="acme", portal="https://acme.example.invalid", mode="rehearsal", timezone="UTC",
                              config_snapshot={})
    ex = journal.start_step(run.id, step_id="1.1", phase=1, seq=0, title="Deploy", owner="contractor",
                            urgency="medium", action="manual", planned_duration_s=60, planned_start=run.created_at)
    journal.finish_step(ex, outcome="done", actor="Alex")
    with sqlite3.connect(tmp_path / "journal.db") as conn:
        conn.execute("UPDATE c2b_step_executions SET actor = 'Mallory'")
    paths = write_report(journal, run.id, tmp_path / "out", pdf=False)
    html = paths["html"].read_text(encoding="utf-8")
    assert '<span class="tampered">TAMPERED</span>' in html
    assert "step execution 1, step 1.1 (c2b_step_executions) was edited after it was journaled" in html
    assert "TAMPERED" in paths["markdown"].read_text(encoding="utf-8")

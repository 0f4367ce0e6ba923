"""The auditor's report prints well (issue 15, item 7): report.pdf, A4 portrait, looked at in Chromium.

One journal shaped like a real cutover — the runbook's steps over three phases, a plan of days and a
run of minutes, a gate 1 that accepted an unmitigated risk, a step 2.11 that used a cutoff the run
did not record, a forecast from a rehearsal — is rendered once; the tests read the PDF's pages,
screenshot each page in headless Chromium (their paths are printed: ``pytest -s``), and check the
report's facts in the HTML.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from checklists.runbook import load_runbook
from journal import evidence as ev
from journal.charts import gantt_figure
from journal.forecast import compare, forecast_from, recorded_forecast
from journal.models import Event, RiskStatus, SignOff, StepExecution
from journal.pdf import CHROMIUM_ENV, find_chromium, print_pdf
from journal.report import build_context, write_report
from journal.store import Journal

CHROMIUM = "/usr/bin/chromium"
RUNBOOK = Path(__file__).resolve().parents[2] / "checklists" / "runbook.toml"
UTC = dt.timezone.utc
PLAN_T0 = dt.datetime(2026, 11, 23, 6, 0, tzinfo=UTC)  # the plan: six days of phases
RUN_T0 = dt.datetime(2026, 11, 24, 7, 0, tzinfo=UTC)  # the run: minutes, on the sandbox
CUTOFF = "2026-11-22T21:00:00+03:00"
SIGNERS = {1: ("Irina Petrova", "IT Director"), 2: ("Oleg Sidorov", "Head of Sales"), 3: ("Irina Petrova", "CEO")}
SECRET_CODE = "k9x7wq2hook5ecret"  # a webhook code that slipped into evidence: never printed
A4_PT = (595.28, 841.89)
MM = 96 / 25.4  # CSS px per mm
PRINTABLE = {"width": (210 - 20) * MM, "height": (297 - 25) * MM}  # the @page margins of the template
needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}")


def _evidence(step_id: str) -> tuple[dict, dict, str]:
    """Evidence, counters and notes as the product's actions journal them (shapes from a demo run)."""
    if step_id in ("1.1", "1.2", "1.5"):
        checks = [{"name": f"check {i}", "status": "pass", "found": "ok", "needed": "ok", "fix": ""} for i in range(6)]
        report = "| check | result | found | needed | fix |\n|---|---|---|---|---|\n" + "\n".join(
            f"| {c['name']} | PASS | ok | ok |  |" for c in checks)
        return ({"report": report, "checks": checks, "ok": True}, {"checks": 6, "failed": 0, "clock_skew_s": 0.2},
                "6 check(s) passed on box@10.0.0.5:22")
    if step_id == "2.3":
        parts = [{"name": f"acme_full.enc.gz.{i}", "size": 104857600, "status": "verified", "sha256": f"{i:02d}" * 32,
                  "source": "ssh" if i == 7 else "http", "retries": 0, "duration_s": 128.0 + i,
                  "throughput_bps": 819200, "checks": ["gzip-crc32-length", "bx-size"],
                  "error": "repaired after: gzip data broken near byte 524288" if i == 7 else ""} for i in range(30)]
        return ({"download": {"dest_dir": "/srv/c2b/backup", "parts": parts, "total_bytes": 31457280000,
                              "repaired": ["acme_full.enc.gz.7"]},
                 "restore": {"files": 81234, "tables": {"b_crm_lead": 70631, "b_user": 64}, "encrypted": True}},
                {"bytes": 31457280000, "bytes_per_s": 820000.0, "parts": 30, "parts_repaired": 1},
                "download: 30 part(s), 31.5 GB, verified; repaired: acme_full.enc.gz.7; restore: 81234 file(s)")
    if step_id == "2.4":
        return ({"fixes": [{"name": "password resets", "status": "found", "before": "2 network users",
                            "after": "send resets", "items": [{"login": "anna.network"}, {"login": "boris.network"}]}]},
                {"fixed": 3, "password_resets": 2}, "fixed: portal domain, push & pull server, search index")
    if step_id == "2.11":
        entities = {e: {"created": n, "modified": n // 3, "deleted_in_cloud": 0} for e, n in
                    (("company", 6), ("contact", 15), ("lead", 43), ("deal", 20))}
        return ({"cutoff": CUTOFF, "export": entities, "import_method": "batchImport", "reconciliation_ok": True,
                 "cloud": f"https://acme.bitrix24.eu/rest/1/{SECRET_CODE}/"},
                {"records": 444, "records_per_s": 24.0}, "444 CRM records moved since the backup; reconciliation OK")
    return {}, {}, "done"


def _run(journal: Journal, mode: str, scale: float) -> str:
    """One run of the whole runbook: planned over days from PLAN_T0, done in minutes from RUN_T0."""
    runbook = load_runbook(RUNBOOK)
    run, _ = journal.open_run(name="acme", portal="https://acme.bitrix24.eu", mode=mode, timezone="Europe/Moscow",
                              config_snapshot={"runbook": {"risks": str(RUNBOOK.with_name("risks.toml"))}}, new=True)
    planned, t = PLAN_T0, RUN_T0
    with journal.session() as s:
        for seq, step in enumerate(runbook.steps):
            seconds = scale * (4.0 if step.action != "manual" else 25.0)
            evidence, counters, notes = _evidence(step.id)
            s.add(StepExecution(run_id=run.id, step_id=step.id, phase=step.phase, seq=seq, title=step.title,
                                owner=step.owner, urgency=step.urgency, action=step.action,
                                planned_duration_s=step.planned_s, planned_start=planned,
                                planned_end=planned + dt.timedelta(seconds=step.planned_s), actual_start=t,
                                actual_end=t + dt.timedelta(seconds=seconds), duration_s=seconds, outcome="done",
                                actor="cloud2box (automated)" if step.action != "manual" else "Irina Petrova",
                                evidence=evidence, counters=counters, notes=notes, downtime=step.downtime))
            planned += dt.timedelta(seconds=step.planned_s)
            t += dt.timedelta(seconds=seconds)
            if step.downtime:
                s.add(Event(run_id=run.id, step_id=step.id, at=t, kind=f"downtime-{step.downtime}",
                            message=f"user downtime {step.downtime}s ({step.id})"))
            if step.id == "2.3":
                s.add(Event(run_id=run.id, step_id="2.3", at=t - dt.timedelta(seconds=seconds / 2), kind="eta",
                            message="download at 50 %", data={"bytes_per_s": 810000.0}))
            if step.id == runbook.phase(step.phase).steps[-1].id:
                signer, role = SIGNERS[step.phase]
                t += dt.timedelta(seconds=20)
                s.add(SignOff(run_id=run.id, phase=step.phase, signer=signer, role=role, decision="approve",
                              comment=f"phase {step.phase} accepted", signed_at=t))
                if step.phase == 1:  # as flows/gates.py journals them with gate 1's approval
                    s.add(RiskStatus(run_id=run.id, risk_id="R05", status="accepted", decided_by=signer,
                                     note="high impact, no mitigation: accepted at gate 1",
                                     at=t + dt.timedelta(milliseconds=30)))
                    s.add(RiskStatus(run_id=run.id, risk_id="R03", status="mitigation-planned", decided_by=signer,
                                     note="step 2.11 moves the delta", at=t + dt.timedelta(milliseconds=40)))
    journal.finish_run(run.id, "completed")
    return run.id


@pytest.fixture(scope="module")
def printed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report-pdf")
    journal = Journal(f"sqlite:///{tmp / 'journal.db'}")
    rehearsal = _run(journal, "rehearsal", scale=1.3)
    cutover = _run(journal, "cutover", scale=1.0)
    forecast_from(journal, rehearsal, runbook=load_runbook(RUNBOOK)).record(journal, cutover)
    assert journal.get_run(cutover).cutoff is None  # the report must find 2.11's
    paths = write_report(journal, cutover, tmp / "out")
    return {"journal": journal, "run_id": cutover, "paths": paths, "tmp": tmp,
            "html": paths["html"].read_text(encoding="utf-8"), "md": paths["markdown"].read_text(encoding="utf-8")}


# -- the PDF ---------------------------------------------------------------------------------------

def _media_boxes(pdf: bytes) -> list[tuple[float, float]]:
    """Each page's MediaBox size in points (Chromium writes one MediaBox per page object)."""
    boxes = re.findall(rb"/MediaBox\s*\[\s*([-\d.]+)\s+([-\d.]+)\s+([-\d.]+)\s+([-\d.]+)\s*\]", pdf)
    return [(float(x1) - float(x0), float(y1) - float(y0)) for x0, y0, x1, y1 in boxes]


def _pages(pdf: bytes) -> int:
    return len(re.findall(rb"/Type\s*/Page[^s]", pdf))


@needs_chromium
def test_report_pdf_is_a4_portrait_and_short(printed):
    pdf = printed["paths"]["pdf"]
    assert pdf == printed["paths"]["html"].with_name("report.pdf") and pdf.stat().st_mode & 0o777 == 0o600
    data = pdf.read_bytes()
    pages = _pages(data)
    boxes = _media_boxes(data)
    assert len(boxes) == pages
    for width, height in boxes:
        assert abs(width - A4_PT[0]) <= 2 and abs(height - A4_PT[1]) <= 2, (width, height)
    steps = len(build_context(printed["journal"], printed["run_id"])["steps"])
    # 21 steps, their evidence in an appendix: a dozen pages or so; the landscape print took 34–37
    assert 4 <= pages <= 4 + steps // 2, pages


def _page_shots(pdf: Path, out: Path, pages: int) -> list[Path]:
    """Each page of ``pdf`` as Chromium's own PDF viewer shows it, one PNG per page."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    viewer = "document.querySelector('pdf-viewer')"
    shots = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 800, "height": 1132})  # one A4 page, fitted
            page.goto(pdf.resolve().as_uri() + "#toolbar=0&navpanes=0&view=Fit")
            frame = None
            for _ in range(300):  # the viewer is an extension frame; bound: 30 s
                frame = next((f for f in page.frames if f.url.startswith("chrome-extension://")), None)
                if frame is not None:
                    break
                page.wait_for_timeout(100)
            assert frame is not None, "Chromium's PDF viewer did not open"
            frame.wait_for_function(f"() => {viewer} && {viewer}.loadState_ === 'success'", timeout=30_000)
            for number in range(1, pages + 1):
                frame.evaluate(f"() => {viewer}.viewport_.goToPage({number - 1})")
                frame.wait_for_function(f"() => {viewer}.viewport_.getMostVisiblePage() === {number - 1}",
                                        timeout=15_000)
                shot, previous = page.screenshot(), None
                for _ in range(40):  # until two shots agree: the viewer paints in passes
                    if shot == previous:
                        break
                    previous, shot = shot, (page.wait_for_timeout(100), page.screenshot())[1]
                path = out / f"page-{number:02d}.png"
                path.write_bytes(shot)
                shots.append(path)
        finally:
            browser.close()
    return shots


@needs_chromium
def test_every_page_screenshot_in_chromium(printed, tmp_path_factory):
    import matplotlib.image

    pdf = printed["paths"]["pdf"]
    out = tmp_path_factory.mktemp("report-pages")
    shots = _page_shots(pdf, out, _pages(pdf.read_bytes()))
    print(f"\nreport.pdf: {pdf}\npages as Chromium shows them: {out}/page-NN.png ({len(shots)} pages)")
    for path in shots:
        print(f"  {path}")
        assert struct.unpack(">II", path.read_bytes()[16:24]) == (800, 1132)
        pixels = matplotlib.image.imread(str(path))[60:-60, 60:-60, :3]  # inside the page's margins
        assert (pixels.mean(axis=2) < 0.6).mean() > 0.002, f"{path.name} looks blank"
    assert len({p.read_bytes() for p in shots}) == len(shots)  # each shot is its own page


@needs_chromium
def test_print_rules_and_every_chart_fits_a_page(printed):
    html = printed["html"]
    assert re.search(r"@page\s*\{[^}]*size:\s*A4 portrait", html)
    assert re.search(r"h1, h2, h3, h4[^{]*\{\s*break-after: avoid", html)  # no heading ends a page
    assert re.search(r"\.keep, figure, tr[^{]*\{\s*break-inside: avoid", html)  # no chart or row is cut
    assert '<div class="keep">\n<h2>Charts</h2>' in html  # the heading travels with its chart
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": round(PRINTABLE["width"]), "height": 1100})
            page.emulate_media(media="print")
            page.goto(printed["paths"]["html"].resolve().as_uri())
            page.wait_for_function("() => [...document.images].every(i => i.complete && i.naturalWidth > 0)")
            charts = page.eval_on_selector_all("figure img", """imgs => imgs.map(i => {
                const r = i.getBoundingClientRect();
                return {alt: i.alt, width: r.width, height: r.height, nw: i.naturalWidth, nh: i.naturalHeight};
            })""")
        finally:
            browser.close()
    assert len(charts) == 2  # the Gantt and the throughput
    for c in charts:
        assert c["width"] <= PRINTABLE["width"] + 1, c
        assert c["height"] < PRINTABLE["height"], c
        # the chart itself fits: at the page's full width it is still shorter than the page
        assert c["nh"] / c["nw"] * PRINTABLE["width"] < PRINTABLE["height"], c


# -- what the report says ---------------------------------------------------------------------------

def test_cutoff_risks_forecast_kinds_and_legend(printed):
    html, md = printed["html"].replace("<wbr>", ""), printed["md"]
    # the run recorded no cutoff: the one 2.11 used, and where it came from
    cutoff = "2026-11-22 18:00:00 UTC (21:00:00 Europe/Moscow)"
    assert f"<td>{cutoff} <span class=\"muted\">— the cutoff step 2.11 used" in html
    assert "not recorded" not in html.split("Backup cutoff")[1][:300]
    assert "Backup cutoff: 2026-11-22 18:00:00 UTC" in md and "step 2.11" in md
    # who accepted which risk, with their role, at which gate
    row = re.search(r"<tr><td><b>R05</b> ([^<]+)</td><td><span class=\"badge wrap accepted\">accepted</span></td>\s*"
                    r"<td>Irina Petrova<br><span class=\"muted\">IT Director</span></td>\s*"
                    r"<td>2026-11-24 [\d:]+</td><td>gate 1</td>", html)
    assert row and "mobile app" in row.group(1)
    assert html.index("<b>R05</b>") < html.index("<b>R03</b>")  # what was accepted unmitigated comes first
    assert "| R05 The mobile app does not work on a closed portal | accepted | Irina Petrova (IT Director)" in md
    # the kind of each step comes from its action, whatever the forecast was made from
    runbook = load_runbook(RUNBOOK)
    rows = {r["step"]: r for r in compare(recorded_forecast(printed["journal"], printed["run_id"]),
                                          printed["journal"], printed["run_id"])}
    for step in runbook.steps:
        kind = "manual" if step.action == "manual" else "automated"
        assert rows[step.id]["kind"] == kind, step.id
        assert re.search(rf"<tr><td>{re.escape(step.id)}</td><td>[^<]*</td><td>{kind}</td>", html), step.id
    assert rows["1.1"]["method"] == "rehearsal's duration" and rows["2.3"]["method"] == "measured rate"
    # and a legend says what the columns and "+162 %" mean
    legend = html[html.index('<dl class="legend" id="forecast-legend">'):]
    legend = legend[:legend.index("</dl>")]
    for term in ("Kind", "Forecast from", "P50, P90", "P50 error", "Within P90"):
        assert f"<dt>{term}</dt>" in legend
    assert "(P50 − actual) ÷ actual" in legend and "<b>+162 %</b> means the forecast P50 was 2.62 × the actual" in legend
    assert "+162 %" in md


def test_evidence_summarised_in_the_steps_and_whole_in_the_appendix(printed):
    html = printed["html"]
    plain = html.replace("<wbr>", "")
    steps_table = plain[plain.index('<section id="phases">'):plain.index('<section id="risks">')]
    appendix = plain[plain.index('<section id="appendix-evidence"'):plain.index('<section id="events"')]
    assert not re.search(r"\w\[\d+\]\.\w|download\.parts", steps_table)  # no flattened a.b[0].c keys
    assert '<span class="k">bytes</span> 31.5 GB' in steps_table and 'href="#evidence-2.3"' in steps_table
    for i in range(30):  # every part of the download, with its hash, is in the appendix
        assert f"acme_full.enc.gz.{i}" in appendix and f"{i:02d}" * 32 in appendix
    assert '<h3 id="evidence-2.3">' in appendix and '<h3 id="evidence-2.11">' in appendix
    assert "login: anna.network" in appendix and "login: boris.network" in appendix  # nested lists shown
    assert re.search(r"<th>company</th><td>6</td><td>2</td>", appendix)  # entity → counts as one table
    assert SECRET_CODE not in html and SECRET_CODE not in printed["md"]


def test_gantt_puts_the_actual_run_on_its_own_axis_with_downtime_and_gates(printed):
    from matplotlib.dates import num2date

    ctx = build_context(printed["journal"], printed["run_id"])
    executions = printed["journal"].steps(printed["run_id"])
    gates = [(f"G{so.phase}", so.signed_at) for so in ctx["signoffs"]]
    fig = gantt_figure(executions, gates=gates, downtime=(ctx["downtime"]["start"], ctx["downtime"]["end"]))
    plan, actual = fig.axes[:2]

    def span_s(ax):
        lo, hi = (num2date(x) for x in ax.get_xlim())
        return (hi - lo).total_seconds()

    run_s = (max(e.actual_end for e in executions) - min(e.actual_start for e in executions)).total_seconds()
    assert run_s < 3600 and span_s(plan) > 4 * 86400  # minutes of run, days of plan
    assert run_s <= span_s(actual) <= 1.2 * (gates[-1][1] - RUN_T0).total_seconds()  # scaled to the run itself
    bars = [p for p in actual.patches if p.get_gid() == "actual"]
    assert len(bars) == len(executions) and min(b.get_width() for b in bars) >= 0.005 * (
        actual.get_xlim()[1] - actual.get_xlim()[0])  # even a 4-second step shows
    down = [p for p in actual.patches if p.get_gid() == "downtime"]
    start = num2date(down[0].get_x()) if down else None
    assert start and abs((start - ctx["downtime"]["start"]).total_seconds()) < 1  # the downtime band
    labels = [t.get_text() for t in actual.texts]
    assert {"G1", "G2", "G3"} <= set(labels) and any(t.endswith(" s") for t in labels)
    assert {"G1", "G2", "G3"} <= {t.get_text() for t in plan.texts}  # planned ends of the phases
    width, height = fig.get_size_inches()
    assert width <= 7.5 and height <= 9.0  # one A4 portrait page


# -- no Chromium, a hung Chromium --------------------------------------------------------------------

def test_without_chromium_the_html_is_written_and_the_reason_logged(printed, tmp_path, monkeypatch, caplog):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.pdf").write_bytes(b"%PDF- an older run's report")  # must not stay beside the new HTML
    monkeypatch.setenv(CHROMIUM_ENV, "off")
    with caplog.at_level(logging.WARNING, logger="cloud2box"):
        paths = write_report(printed["journal"], printed["run_id"], out)
    assert "pdf" not in paths and paths["html"].exists() and not (out / "report.pdf").exists()
    assert "report.pdf not written: printing is switched off by $CLOUD2BOX_CHROMIUM" in caplog.text
    monkeypatch.setenv(CHROMIUM_ENV, str(tmp_path / "no-such-chromium"))
    assert find_chromium()[0] is None and "not an executable" in find_chromium()[1]
    monkeypatch.delenv(CHROMIUM_ENV)
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing to print with anywhere
    exe, why = find_chromium()
    assert exe is None and "no Chromium or Chrome on PATH" in why and CHROMIUM_ENV in why


def _fake_chromium(tmp_path: Path, body: str) -> str:
    path = tmp_path / "fake-chromium"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def test_a_hung_or_failing_chromium_is_bounded_and_leaves_no_pdf(tmp_path):
    html = tmp_path / "report.html"
    html.write_text("<p>hello</p>")
    pdf = tmp_path / "report.pdf"
    hung = print_pdf(html, pdf, chromium=_fake_chromium(tmp_path, "sleep 60 & sleep 60"), timeout_s=1)
    assert hung.path is None and "did not finish printing within 1 s" in hung.note and not pdf.exists()
    silent = print_pdf(html, pdf, chromium=_fake_chromium(tmp_path, "exit 0"))
    assert silent.path is None and "wrote no PDF" in silent.note
    failing = print_pdf(html, pdf, chromium=_fake_chromium(tmp_path, "echo 'cannot open display' >&2; exit 3"))
    assert failing.path is None and "exited with 3: cannot open display" in failing.note
    assert not list(tmp_path.glob(".report.pdf.*"))  # no half-written file left


# -- the appendix keeps every value ----------------------------------------------------------------

_leaf = st.one_of(st.integers(-10**6, 10**6), st.booleans(),
                  st.text(st.characters(min_codepoint=48, max_codepoint=122), min_size=1, max_size=20))
_json = st.recursive(_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text("abcdefgh_", min_size=1, max_size=8), inner, max_size=5)),
    max_leaves=25)


def _texts(node) -> str:
    if isinstance(node, dict):
        return " ".join(_texts(v) for v in node.values())
    if isinstance(node, (list, tuple)):
        return " ".join(_texts(v) for v in node)
    return str(node)


def _leaves(value, depth=0):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            yield from _leaves(v, depth + 1)
    else:
        yield value, depth


@settings(max_examples=150, deadline=None)
@given(evidence=st.dictionaries(st.text("abcdefgh_", min_size=1, max_size=8), _json, min_size=1, max_size=6))
def test_appendix_tree_shows_every_value(evidence):
    """Whatever shape a step's evidence has, every value reaches the appendix (none is dropped,
    none is flattened into a dotted key), and the summary never shows more than a few facts."""
    rendered = _texts(ev.tree(evidence))
    for leaf, depth in _leaves(evidence):
        if depth < ev.MAX_DEPTH:
            assert ev.cell(leaf) in rendered, (leaf, evidence)
    assert len(ev.summary(evidence, {})) <= ev.SUMMARY_FACTS
    assert not any("." in k or "[" in k for k, _ in ev.summary(evidence, {}))


def test_summary_picks_counters_and_short_facts():
    facts = ev.summary({"cutoff": CUTOFF, "report": "| a |\n|---|\n| 1 |", "parts": [{"x": 1}], "ok": True},
                       {"bytes": 31457280000, "bytes_per_s": 820000.0, "records": 444.0, "rate_samples": [1, 2]})
    assert facts == [("bytes", "31.5 GB"), ("bytes per s", "820.0 KB/s"), ("records", "444"), ("cutoff", CUTOFF),
                     ("ok", "yes")]
    assert ev.has_details({"parts": [{"x": 1}]}, {}) and not ev.has_details({"ok": True}, {"records": 1})

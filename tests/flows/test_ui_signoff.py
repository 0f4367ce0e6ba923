"""A person signs off a manual step and a phase gate in the real Prefect UI (headless Chromium).

The test starts its own Prefect server WITH the UI (the session test harness serves the API only),
runs the migration in a subprocess against it, and fills the generated forms with Playwright.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.flows.conftest import ROSTER

from flows.forms import MAX_PROMPT_COLUMNS

CHROMIUM = "/usr/bin/chromium"
pytestmark = [pytest.mark.prefect, pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}")]
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_S = 120  # bound of every wait for the server or the run (CI shares 2 cores)
UI_TIMEOUT_MS = 45_000  # bound of every browser action

RUNBOOK = """
[[phases]]
number = 1
title = "Preparation"
urgency = "medium"
gate = "Sign off the preparation."
  [[phases.steps]]
  id = "1.1"
  title = "Deploy the host"
  owner = "contractor"
  planned_minutes = 30
  instructions = "Deploy the **box** host with the agreed sizing."
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def ui_server(tmp_path):
    """A Prefect server with its UI on a free loopback port; yields the base URL."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "server-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_UI_ENABLED="true",
               # the UI asks this URL for the API; without it the browser calls the default port 4200
               PREFECT_UI_API_URL=f"{base}/api",
               PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT="false")
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if requests.get(f"{base}/api/health", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "the Prefect server did not answer /api/health"
            time.sleep(0.5)
        yield base
    finally:
        _stop(proc)
        log.close()


def _paused_prompt(base: str, key_prefix: str, proc: subprocess.Popen, run_log: Path) -> str:
    """Wait for a paused flow run whose pause key starts with ``key_prefix`` and whose form is saved."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, run_log.read_text()
        runs = requests.post(f"{base}/api/flow_runs/filter", timeout=10,
                             json={"flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}}}).json()
        for run in runs:
            details = run["state"]["state_details"]
            keyset = details.get("run_input_keyset") or {}
            if (details.get("pause_key") or "").startswith(key_prefix) and keyset.get("description"):
                saved = requests.get(f"{base}/api/flow_runs/{run['id']}/input/{keyset['description']}", timeout=10)
                if saved.ok:  # the run saves its Markdown prompt just after pausing
                    return run["id"]
        time.sleep(0.5)
    pytest.fail(f"no paused run with key {key_prefix}*: {run_log.read_text()[-2000:]}")


def _field(dialog, label: str):
    """One property of the generated form, found by its visible label (the UI's <label for> points nowhere)."""
    return dialog.locator(".schema-form-property").filter(has=dialog.page.get_by_text(label, exact=True))


def _open_resume_form(page, base: str, flow_run_id: str):
    page.goto(f"{base}/runs/flow-run/{flow_run_id}", timeout=UI_TIMEOUT_MS)
    page.get_by_role("button", name="Resume", exact=True).click(timeout=UI_TIMEOUT_MS)
    dialog = page.get_by_role("dialog").filter(has_text="Resume Flow Run")
    dialog.wait_for(timeout=UI_TIMEOUT_MS)
    return dialog


def _prompt_tables(dialog) -> list[dict]:
    """The prompt's tables as rendered in the modal; each must fit its box and have at most three
    columns (the modal shows the prompt in a narrow scroll box; everything else is in the review)."""
    prompt = dialog.locator("article").first
    tables = prompt.evaluate("""box => [...box.querySelectorAll('table')].map(t => ({
        width: t.scrollWidth, columns: t.rows.length ? t.rows[0].cells.length : 0, box: box.clientWidth}))""")
    assert all(t["width"] <= t["box"] and t["columns"] <= MAX_PROMPT_COLUMNS for t in tables), tables
    return tables


def _choose_name(page, dialog, label: str, name: str) -> list[str]:
    """Choose ``name`` in the roster's select ``label``; returns the names it offered."""
    select = _field(dialog, label).locator("button.p-select-button__control")
    select.focus()
    page.keyboard.press("ArrowDown")
    page.get_by_role("option", name=name, exact=True).wait_for(timeout=UI_TIMEOUT_MS)
    offered = page.get_by_role("option").all_inner_texts()
    page.get_by_role("option", name=name, exact=True).click()
    sync_api.expect(select).to_have_text(name)
    return [o.strip() for o in offered]


def _code_sent(inbox, name: str, key_prefix: str) -> str:
    """The one-time code in the newest notice to ``name`` for a pause whose key starts with ``key_prefix``."""
    for message in reversed(inbox.messages(name)):
        if re.search(rf"^Reference: {re.escape(key_prefix)}", message["message"], re.MULTILINE):
            return re.search(r"one-time code:\*\* ([0-9]{8})", message["message"]).group(1)
    pytest.fail(f"no notice to {name} for {key_prefix}*: {inbox.messages(name)}")


def _submit(dialog) -> None:
    dialog.get_by_role("button", name="Submit", exact=True).click(timeout=UI_TIMEOUT_MS)
    dialog.wait_for(state="hidden", timeout=UI_TIMEOUT_MS)


def test_person_signs_off_step_and_gate_in_the_prefect_ui(ui_server, make_config, signer_inbox, tmp_path):
    expect = sync_api.expect

    from flows.config import load_config
    from journal.store import Journal

    base = ui_server
    config = make_config(runbook=RUNBOOK, name="ui-signoff", roster=[
        *ROSTER, {"name": "Olga Owner", "role": "CFO", "party": "customer"}])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "client-home"), PREFECT_API_URL=f"{base}/api",
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    run_log = tmp_path / "run.log"
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", "--config", str(config)], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(run_log, "w"))
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.set_default_timeout(UI_TIMEOUT_MS)

                # the manual step: the prompt from the run is shown as Markdown above the form
                dialog = _open_resume_form(page, base, _paused_prompt(base, "step-1-1-", proc, run_log))
                expect(dialog.get_by_role("heading", name="Step 1.1 — Deploy the host")).to_be_visible()
                expect(dialog).to_contain_text("Deploy the box host with the agreed sizing.")
                expect(dialog.get_by_text("box", exact=True)).to_be_visible()  # **box** rendered, not raw
                assert _prompt_tables(dialog) == []  # no check ran: nothing but text
                # done / not done is a choice without a default: the person must pick one
                outcome = _field(dialog, "Outcome").locator("button.p-select-button__control")
                expect(outcome).not_to_have_text("done")
                outcome.focus()
                page.keyboard.press("ArrowDown")
                page.get_by_role("option", name="done", exact=True).click()
                expect(outcome).to_have_text("done")
                # who did it is a choice of the roster's contractors, not typed; a contractor's step has no code
                assert _choose_name(page, dialog, "Done By", "Alex Engineer") == ["Alex Engineer"]
                expect(_field(dialog, "Code")).to_have_count(0)
                _field(dialog, "Notes (Optional)").locator("textarea").fill("deployed by hand, checked in the UI")
                page.screenshot(path=str(tmp_path / "step-form.png"))
                _submit(dialog)

                # the gate: text fields, the approve/reject select, the risk acceptance switch
                dialog = _open_resume_form(page, base, _paused_prompt(base, "gate-1-", proc, run_log))
                expect(dialog.get_by_role("heading", name="Sign-off of phase 1 — Preparation")).to_be_visible()
                # the journal table of the phase (with the name typed above) and the risk register are in the
                # prompt; the modal shows the Markdown in a short box of its own that the person scrolls
                prompt = dialog.locator("article").first
                expect(prompt).to_contain_text("Alex Engineer")
                expect(prompt).to_contain_text("Who signs: Dana Demo (Head of Sales) or Olga Owner (CFO)")
                expect(prompt).to_contain_text("Risk register")
                assert len(_prompt_tables(dialog)) == 1  # the phase's journal, in three columns that fit
                review = prompt.get_by_role("link", name="open it on its own page").get_attribute("href")
                assert review.startswith(f"{base}/artifacts/artifact/"), review
                # the signer: a customer of the roster (the role is the roster's), with the code sent to her
                assert _choose_name(page, dialog, "Signer", "Dana Demo") == ["Dana Demo", "Olga Owner"]
                expect(_field(dialog, "Role")).to_have_count(0)
                _field(dialog, "Code").locator("input, textarea").first.fill(_code_sent(signer_inbox, "Dana Demo",
                                                                                        "gate-1-"))
                # the Literal renders as a select; in headless Chromium a mouse click does not open its
                # option list inside the modal, the keyboard does (as for a keyboard user)
                decision = _field(dialog, "Decision").locator("button.p-select-button__control")
                decision.focus()
                page.keyboard.press("ArrowDown")
                page.get_by_role("option", name="approve", exact=True).click()
                expect(decision).to_have_text("approve")
                _field(dialog, "Comment (Optional)").locator("textarea").fill("host looks fine")
                accept = _field(dialog, "Accept Unmitigated Risks (Optional)").get_by_role("switch")
                accept.click()  # gate 1 shows the shipped risk register, which has unmitigated high risks
                expect(accept).to_have_attribute("aria-checked", "true")
                page.screenshot(path=str(tmp_path / "gate-form.png"))
                _submit(dialog)

                # the full review the prompt links: its own page, with every column of the phase's journal
                page.goto(review, timeout=UI_TIMEOUT_MS)
                expect(page.get_by_role("heading", name="Review of phase 1 — Preparation")).to_be_visible()
                expect(page.get_by_role("columnheader", name="planned_start_utc")).to_be_visible()
                expect(page.get_by_role("heading", name="Risk register")).to_be_visible()
                page.screenshot(path=str(tmp_path / "review-page.png"), full_page=True)
            finally:
                browser.close()
        assert proc.wait(timeout=WAIT_S) == 0, run_log.read_text()[-3000:]
    finally:
        _stop(proc)

    journal = Journal(load_config(config).journal.url)
    run = journal.runs()[-1]
    assert run.status == "completed"
    (step,) = journal.steps(run.id)
    assert (step.step_id, step.outcome, step.actor, step.notes) == (
        "1.1", "done", "Alex Engineer", "deployed by hand, checked in the UI")
    (signoff,) = journal.signoffs(run.id)
    assert (signoff.phase, signoff.decision, signoff.signer, signoff.role, signoff.comment) == (
        1, "approve", "Dana Demo", "Head of Sales", "host looks fine")

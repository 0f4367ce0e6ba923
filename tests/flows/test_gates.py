"""A gate against a real Prefect test server and a real failing check (an HTTPS certificate served on
loopback): the approval is decided on the checks when it arrives, the re-ask says why, every prompt
fits the resume modal and links its full review, and each view is one artifact updated in place."""

from __future__ import annotations

import json
import re

import pytest

from flows.customer import ScriptedCustomer, demo_answer
from flows.forms import MAX_PROMPT_COLUMNS
from journal.events import EventKind
from journal.store import Journal
from journal.triage import issues, open_fires, resolve_issue
from sandbox.box_web import start_box_web
from tests.flows.prompt_tables import table_widths

pytestmark = pytest.mark.prefect

RUNBOOK = """
[[phases]]
number = 1
title = "Preparation"
urgency = "medium"
gate = "Sign off the preparation."
  [[phases.steps]]
  id = "1.1"
  title = "Test the box"
  owner = "customer"
  planned_minutes = 30
  verify = true
  instructions = "Open the box portal and test it."
"""
FIX = "Renew the certificate of the box portal, then approve again."
CHECKS = f"""
[[checks]]
id = "https-certificate"
title = "The portal answers over HTTPS with a certificate valid for at least 14 days"
kind = "https_certificate"
severity = "fire"
needs = ["https"]
fix = "{FIX}"
params = {{ min_days = 14 }}
"""
LINK = re.compile(r"\]\((http://[^)\s]+)/artifacts/artifact/([0-9a-f-]{36})\)")


@pytest.fixture(autouse=True)
def _no_pdf(monkeypatch):
    monkeypatch.setenv("CLOUD2BOX_CHROMIUM", "off")  # the report is tested elsewhere


def _artifacts(key: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


def test_an_approval_is_decided_on_the_checks_when_it_arrives(prefect_server, make_config, tmp_path):
    from flows.config import load_config
    from flows.migration import migration

    web_dir = tmp_path / "web"
    webs = [start_box_web(web_dir, cert_days=7)]  # expires in 7 days: the check (≥ 14) fails, a fire
    checks = tmp_path / "checks.toml"
    checks.write_text(CHECKS, encoding="utf-8")
    config = make_config(runbook=RUNBOOK, extra=f'[verify]\npath = "{checks}"\nhttps_url = "{webs[0].url}"\n'
                                                f'ca_file = "{webs[0].ca_file}"\n')
    journal = Journal(load_config(config).journal.url)
    gates: list = []

    def answer(prompt):
        if prompt.kind == "gate":
            gates.append(prompt)
            run_id = journal.runs()[-1].id
            if len(gates) == 1:  # the engineer closes the fire by hand; the certificate is not renewed
                (fire,) = open_fires(journal, run_id)
                resolve_issue(journal, fire.id, resolved_by="Alex Engineer", resolution="looks fine to me")
            else:  # now it is renewed for real: the same address serves a certificate valid 90 days
                webs[-1].close()
                webs.append(start_box_web(web_dir, cert_days=90, port=webs[0].port))
        return demo_answer(prompt)

    try:
        with ScriptedCustomer(answer=answer, config=str(config), poll_s=0.3) as customer:
            state = migration(str(config), "rehearsal", return_state=True)
    finally:
        for web in webs:
            web.close()
    assert not customer.errors, customer.errors
    assert state.is_completed(), state.message
    run_id = journal.runs()[-1].id
    assert [p.key for p, _ in customer.answered] == ["step-1-1-attempt-1", "gate-1-attempt-1", "gate-1-attempt-2"]

    # the first approval came after the fire was closed by hand: the checks ran again, the fire is back
    (refused,) = journal.events(run_id, EventKind.GATE_REFUSED)
    assert "resolved by hand after you were asked" in refused.message and FIX in refused.message
    again = gates[1].description
    assert "Your last approval was not taken" in again
    assert "https-certificate still fails now" in again and FIX in again
    # the second came after the certificate was renewed: the fire closed when it arrived, approval taken
    assert [(s.phase, s.decision) for s in journal.signoffs(run_id)] == [(1, "approve")]
    assert not open_fires(journal, run_id)
    gate_checks = [e for e in journal.events(run_id, EventKind.VERIFICATION) if e.step_id == "gate-1"]
    assert len(gate_checks) == 4  # at each ask and at each approval's arrival
    assert [i.status for i in issues(journal, run_id)] == ["resolved", "resolved"]

    # every prompt fits the modal: no table wider than three columns; each links the full review
    review = _artifacts(f"review-{run_id}-phase-1")
    assert len(review) == 1  # one per phase, updated in place at each pause
    for prompt, _ in customer.answered:
        widths = table_widths(prompt.description)
        assert all(w <= MAX_PROMPT_COLUMNS for w in widths), (prompt.key, widths)
        (link,) = LINK.findall(prompt.description)
        assert link == (prefect_server.removesuffix("/api"), str(review[0].id))
    step_prompt = customer.answered[0][0].description
    assert "❌ **https-certificate** (fire)" in step_prompt and FIX in step_prompt  # finding and fix, no table
    assert "(the checks run again when your answer arrives)" in gates[0].description

    # the review holds what the prompts leave out: every journal column, checks with finding AND fix
    text = review[0].data
    assert "| fix |" in text and FIX in text and "expires in" in text and "| planned_start_utc |" in text
    assert "## Risk register" in text and "## Open issues" in text and "gate 1, ask 2" in review[0].description
    assert max(table_widths(text)) > 3

    # one artifact per phase journal, holding the final rows; the checks' views updated in place too
    (phase_table,) = _artifacts(f"journal-{run_id}-phase-1")
    rows = json.loads(phase_table.data) if isinstance(phase_table.data, str) else phase_table.data
    assert [(r["step"], r["outcome"]) for r in rows] == [("1.1", "done")]
    (gate_view,) = _artifacts(f"verification-{run_id}-gate-1")
    assert "1 passed" in gate_view.description
    assert len(_artifacts(f"verification-{run_id}-step-1-1")) == 1

"""Triage: rules give severities; an open fire blocks a gate's approval."""

from __future__ import annotations

import pytest

from connectors.errors import ConfigError
from journal.triage import (GateBlocked, check_gate, gate_issues_markdown, issues, load_rules, open_fires,
                            report_issue, resolve_issue)
from journal.store import Journal


@pytest.mark.parametrize("title, severity", [
    ("Sales managers cannot create leads on the box", "fire"),
    ("Two users cannot log in with their old passwords", "fire"),
    ("Calls not logged in the CRM after the telephony switch", "fire"),
    ("Links in notifications without domain", "emergency"),
    ("Deal amounts are wrong after import", "emergency"),
    ("SSL certificate expired on the box", "emergency"),
    ("Search returns nothing until the reindex is done", "sla"),
    ("Button layout shifted on one tablet", "sla"),
    ("Something odd nobody can describe", "sla"),
])
def test_shipped_rules_classify(title, severity):
    assert load_rules().classify(title)[0] == severity


def test_bad_rules_file_is_a_config_error(tmp_path):
    bad = tmp_path / "triage.toml"
    bad.write_text('[[rules]]\nid = "x"\nseverity = "panic"\nkeywords = []\n', encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_rules(bad)
    assert "severity" in str(err.value) and "keywords" in str(err.value)


def test_fire_blocks_the_gate_until_resolved(tmp_path):
    journal = Journal(f"sqlite:///{tmp_path / 'j.db'}")
    run, _ = journal.open_run(name="acme", portal="https://acme.example.invalid", mode="cutover", timezone="UTC",
                              config_snapshot={})
    fire = report_issue(journal, run.id, title="Users cannot log in", reported_by="Dana (Customer)", step_id="2.8",
                        source="form")
    minor = report_issue(journal, run.id, title="Typo | in a label", reported_by="check", severity="sla")
    assert fire.severity == "fire" and fire.rule == "login" and minor.rule == "manual"
    assert [i.id for i in issues(journal, run.id)] == [fire.id, minor.id]

    form = gate_issues_markdown(journal, run.id)
    assert "Users cannot log in" in form and "cannot be approved" in form and "Typo \\| in a label" in form
    with pytest.raises(GateBlocked) as err:
        check_gate(journal, run.id, 2, "approve")
    assert "Users cannot log in" in str(err.value)
    check_gate(journal, run.id, 2, "reject")  # a rejection is always allowed

    resolve_issue(journal, fire.id, resolved_by="Alex", resolution="passwords reset", root_cause="Network passwords")
    assert open_fires(journal, run.id) == []
    check_gate(journal, run.id, 2, "approve")
    assert "cannot be approved" not in gate_issues_markdown(journal, run.id)
    assert [e.kind for e in journal.events(run.id)] == ["issue", "issue", "issue-resolved"]

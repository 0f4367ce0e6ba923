"""The risk register as a Markdown table, each risk with its status in the run."""

from __future__ import annotations

from checklists.risks import load_risks
from journal.risks import risk_register_markdown


def test_the_register_table_has_every_risk_and_its_status():
    register = load_risks()
    lines = risk_register_markdown(register, {"R01": "mitigation-planned"}).split("\n")
    assert lines[:2] == ["| id | risk | owner | likelihood | impact | mitigation | verified by | status |",
                         "|---|---|---|---|---|---|---|---|"]
    assert len(lines) == 2 + len(register.risks)
    assert lines[2].startswith("| R01 | ") and lines[2].endswith(" | mitigation-planned |")
    r05 = next(line for line in lines if line.startswith("| R05 |"))
    assert "**NONE — needs the customer's acceptance**" in r05 and r05.endswith(" | open |")

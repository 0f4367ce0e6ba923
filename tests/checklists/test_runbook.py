"""The shipped runbook is the case's runbook: 3 phases, 21 steps, owners, downtime marks."""

from __future__ import annotations

from pathlib import Path

import pytest

from checklists.runbook import load_runbook
from connectors.errors import ConfigError

RUNBOOK = Path(__file__).resolve().parents[2] / "checklists" / "runbook.toml"


def test_shipped_runbook_matches_the_design():
    rb = load_runbook(RUNBOOK)
    assert [p.number for p in rb.phases] == [1, 2, 3]
    assert [len(p.steps) for p in rb.phases] == [6, 12, 3]
    assert [p.urgency for p in rb.phases] == ["medium", "high", "low"]
    owners = {s.id: s.owner for s in rb.steps}
    assert owners["1.1"] == "contractor" and owners["2.1"] == "customer" and owners["2.8"] == "customer-sales"
    assert owners["2.11"] == "contractor" and owners["3.3"] == "contractor"
    assert {s.id: s.downtime for s in rb.steps if s.downtime} == {"2.10": "start", "2.12": "end"}
    assert all(s.urgency == rb.phase(s.phase).urgency for s in rb.steps)
    assert all(s.instructions for s in rb.steps)


def _write(tmp_path, body: str) -> Path:
    p = tmp_path / "rb.toml"
    p.write_text(body)
    return p


def test_bad_runbook_names_every_problem(tmp_path):
    body = """
[[phases]]
number = 1
title = "P"
urgency = "urgent"
gate = "g"
  [[phases.steps]]
  id = "1.1"
  title = "a"
  owner = "intern"
  planned_minutes = 0
"""
    with pytest.raises(ConfigError) as err:
        load_runbook(_write(tmp_path, body))
    text = str(err.value)
    assert "urgency" in text and "owner" in text and "planned_minutes" in text


def test_unknown_action_is_refused_before_anything_runs(tmp_path):
    body = RUNBOOK.read_text().replace('action = "manual"', 'action = "teleport"', 1)
    with pytest.raises(ConfigError, match="unknown action 'teleport'"):
        load_runbook(_write(tmp_path, body), known_actions={"download_backup"})


def test_downtime_end_before_start_is_refused(tmp_path):
    body = RUNBOOK.read_text().replace('downtime = "start"', 'downtime = "XX"').replace(
        'downtime = "end"', 'downtime = "start"').replace('downtime = "XX"', 'downtime = "end"')
    with pytest.raises(ConfigError, match="end comes before its start"):
        load_runbook(_write(tmp_path, body))

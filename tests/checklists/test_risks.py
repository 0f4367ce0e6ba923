"""The risk register of the case: ten risks, each owned, rated, mitigated or flagged for acceptance."""

from __future__ import annotations

import pytest

from checklists.risks import load_risks
from connectors.errors import ConfigError


def test_register_holds_the_ten_risks_of_the_case():
    register = load_risks()
    assert len(register.risks) == 10
    titles = " ".join(r.title.lower() for r in register.risks)
    for words in ("marketplace", "licence", "time gap", "other branches", "mobile app", "old passwords",
                  "chat bots", "authorisation resets", "task comments", "search index"):
        assert words in titles, words
    assert all(r.verified_by for r in register.risks)
    assert [r.id for r in register.needing_acceptance] == ["R05"]
    rows = {r["id"]: r for r in register.rows({"R01": "mitigation-planned"})}
    assert "needs the customer's acceptance" in rows["R05"]["mitigation"] and rows["R05"]["status"] == "open"
    assert rows["R01"]["status"] == "mitigation-planned" and len(rows) == 10


def test_bad_register_is_refused_with_the_field_named(tmp_path):
    bad = tmp_path / "r.toml"
    bad.write_text('[[risks]]\nid = "R1"\ntitle = "x"\nowner = "x"\nlikelihood = "often"\nimpact = "high"\nverified_by = "y"\n')
    with pytest.raises(ConfigError) as err:
        load_risks(bad)
    assert "owner" in str(err.value) and "likelihood" in str(err.value)

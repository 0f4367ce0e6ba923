"""checklists/verify.toml: the shipped checks load; a broken file names every problem."""

from __future__ import annotations

import pytest

from checklists.verify import KINDS, load_checks
from connectors.errors import ConfigError


def test_the_shipped_checks_cover_the_case():
    checks = {c.id: c for c in load_checks().checks}
    assert set(checks) == {"crm-counts", "users", "notification-domain", "push-pull", "search-index",
                           "marketplace-apps", "task-comments", "https-certificate", "telephony"}
    assert {c.kind for c in checks.values()} <= set(KINDS)
    assert all(c.severity in ("fire", "emergency", "sla") and c.fix and c.why for c in checks.values())
    assert checks["https-certificate"].params == {"min_days": 14}


def test_a_broken_checks_file_is_refused_with_every_problem(tmp_path):
    path = tmp_path / "verify.toml"
    path.write_text('[[checks]]\nid = "a"\ntitle = "A"\nkind = "nope"\nseverity = "fire"\n'
                    '[[checks]]\nid = "a"\ntitle = "B"\nkind = "users"\nseverity = "urgent"\n')
    with pytest.raises(ConfigError) as err:
        load_checks(path)
    assert "severity" in str(err.value)
    path.write_text('[[checks]]\nid = "a"\ntitle = "A"\nkind = "nope"\nseverity = "fire"\n'
                    '[[checks]]\nid = "a"\ntitle = "B"\nkind = "users"\nseverity = "sla"\n')
    with pytest.raises(ConfigError, match="duplicate check ids"):
        load_checks(path)

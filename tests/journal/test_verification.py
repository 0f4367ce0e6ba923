"""The verification's results as a Markdown table (the journal renders what checklists/verify gives)."""

from __future__ import annotations

from checklists.verify import CheckResult, Verification
from journal.verification import verification_markdown


def test_the_table_shows_every_check_with_its_fix_when_failed():
    verification = Verification([
        CheckResult("users", "Users", "fire", "failed", "2 users | no password", fix="reset them"),
        CheckResult("search-index", "Search", "sla", "passed", "indexed"),
        CheckResult("telephony", "Telephony", "emergency", "not-run", "no access"),
    ])
    assert verification_markdown(verification) == (
        "**Verification:** 1 passed, 1 failed (1 fire), 1 not run. A check that did not run is not a pass.\n\n"
        "| check | result | severity if failed | finding |\n"
        "|---|---|---|---|\n"
        "| users | ❌ FAILED | fire | 2 users \\| no password — *fix:* reset them |\n"
        "| search-index | ✅ passed | sla | indexed |\n"
        "| telephony | ⚪ not run | emergency | no access |")

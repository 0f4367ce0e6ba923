"""EventKind: the stored strings never change, and product code names kinds only through the enum."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from journal.events import EventKind
from journal.store import Journal

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("flows", "connectors", "checklists", "journal")

# The hash chain and existing journals store these strings: a value is never renamed.
STORED = {
    "START": "start", "RESUME": "resume", "DOWNTIME_START": "downtime-start", "DOWNTIME_END": "downtime-end",
    "GATE_REFUSED": "gate-refused", "SSH_COMMAND": "ssh-command", "PREFLIGHT": "preflight", "STAGED": "staged",
    "RESTORED_FILES": "restored-files", "RESTORED_DB": "restored-db", "POST_RESTORE": "post-restore", "ETA": "eta",
    "DOWNLOAD_FAILED": "download-failed", "PART_REPAIRED": "part-repaired", "CRM_BACKUP_MARKS": "crm-backup-marks",
    "CRM_DELTA_EXPORT": "crm_delta_export",
    "CRM_DELETED_IN_CLOUD": "crm_deleted_in_cloud", "CRM_FALLBACK_USERS": "crm_fallback_users",
    "CRM_DUPLICATES_IN_BOX": "crm_duplicates_in_box", "CRM_RECONCILIATION": "crm_reconciliation",
    "SWEEP": "sweep", "SWEEP_ALERT": "sweep-alert", "QUARANTINE": "quarantine",
    "QUARANTINE_RELEASE": "quarantine-release", "STRAGGLERS_TOLD": "stragglers-told",
    "PRESYNC": "presync", "PRESYNC_ALERT": "presync-alert",
    "VERIFICATION": "verification", "ISSUE": "issue", "ISSUE_RESOLVED": "issue-resolved", "LADDER": "ladder",
    "NOTICE": "notice", "FORECAST": "forecast", "FORECAST_ETA": "forecast-eta",
    "ANCHOR_UNDELIVERED": "anchor-undelivered",
    "PERSON_NOTICE": "person-notice", "WAIT": "wait", "SIGN_VERIFIED": "sign-verified", "SIGN_REFUSED": "sign-refused",
    "SIGN_UNBOUND": "sign-unbound", "ISSUE_OVERRIDE": "issue-override",
}

# Modules that still pass a string literal as an event kind, until their owners switch to EventKind.
# A listed module that no longer does is reported (skip note); an unlisted one fails.
LITERAL_KINDS_LEFT: dict[str, str] = {}  # module → which kinds it still passes as literals (none left)


def test_the_stored_values_never_change():
    assert {k.name: k.value for k in EventKind} == STORED


def test_a_kind_is_its_stored_string(tmp_path):
    journal = Journal(f"sqlite:///{tmp_path / 'j.db'}")
    run, _ = journal.open_run(name="acme", portal="https://acme.example.invalid", mode="rehearsal", timezone="UTC",
                              config_snapshot={})
    journal.add_event(run.id, EventKind.DOWNTIME_START, "users stop")
    [event] = journal.events(run.id, EventKind.DOWNTIME_START)
    assert type(event.kind) is str and event.kind == "downtime-start" == EventKind.DOWNTIME_START
    assert [e.id for e in journal.events(run.id, "downtime-start")] == [event.id]


def literal_kinds(source: str) -> list[tuple[int, str]]:
    """(line, text) of every string literal (f-strings too) passed as the kind of ``add_event``/``events``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("add_event", "events")):
            continue
        kind = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "kind"), None)
        if isinstance(kind, (ast.Constant, ast.JoinedStr)) and not (isinstance(kind, ast.Constant)
                                                                    and not isinstance(kind.value, str)):
            found.append((node.lineno, ast.unparse(kind)))
    return found


def _literal_kinds_by_module() -> dict[str, list[str]]:
    out = {}
    for path in sorted(p for top in PRODUCT for p in (ROOT / top).rglob("*.py")):
        hits = literal_kinds(path.read_text())
        if hits:
            out[path.relative_to(ROOT).as_posix()] = [f"{line}: {text}" for line, text in hits]
    return out


def test_product_code_names_event_kinds_through_the_enum():
    found = _literal_kinds_by_module()
    new = {m: hits for m, hits in found.items() if m not in LITERAL_KINDS_LEFT}
    assert not new, "use journal.events.EventKind, not a string literal, as the kind:\n" + "\n".join(
        f"{m}:{hit}" for m, hits in new.items() for hit in hits)
    fixed = sorted(set(LITERAL_KINDS_LEFT) - set(found))
    if fixed:
        pytest.skip(f"no string-literal kinds left in {', '.join(fixed)}: drop them from LITERAL_KINDS_LEFT")


def test_the_check_sees_every_way_of_passing_a_kind():
    source = '''
journal.add_event(run_id, "eta", "m")
ctx.journal.add_event(ctx.run_id, f"downtime-{edge}", "m")
journal.events(run_id, kind="gate-refused")
journal.events(run_id, "notice")
journal.events(run_id)
journal.add_event(run_id, EventKind.ETA, "m")
journal.events(run_id, SWEEP)
'''
    assert [line for line, _ in literal_kinds(source)] == [2, 3, 4, 5]

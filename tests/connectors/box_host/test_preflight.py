"""Preflight (steps 1.1, 1.2, 1.5) against a real OpenSSH sshd on loopback: this machine is the host."""

from __future__ import annotations

import pytest

from connectors.box_host import PreflightSettings
from connectors.errors import AuthError

from .conftest import box_host, box_section

pytestmark = [pytest.mark.sshd, pytest.mark.mariadb]


def test_preflight_passes_on_a_fit_host_and_journals_commands(sshd, tmp_path):
    records = []
    section = box_section(sshd, tmp_path, db_name="test")
    host = box_host(section, records)
    with host.remote:
        report = host.preflight(required_bytes=10 * 2**20)
    assert report.ok, report.table()
    names = {c.name: c for c in report.checks}
    assert names["free disk"].status == "pass" and names[f"port {sshd.port} listening"].status == "pass"
    assert names["database version"].status == "pass" and "MariaDB" in names["database version"].found
    assert names["PHP version"].status == "skip"
    assert "| free disk | PASS |" in report.table()
    # every command went to the journal hook with its duration, the agent's input (DB password) never
    assert records and all(r.duration_s >= 0 and r.host == host.remote.label for r in records)
    facts = [r for r in records if r.command.endswith("restore_agent.py facts")]
    assert len(facts) == 1 and facts[0].exit_status == 0


def test_preflight_fails_for_the_right_reasons(sshd, tmp_path):
    section = box_section(sshd, tmp_path, preflight=PreflightSettings(
        min_cpus=4096, min_ram_mib=1 << 30, php_min="8.1", ports=[sshd.port, 1], max_clock_skew_s=5, check_db=True))
    section.db.user = "c2b_no_such_user"
    host = box_host(section)
    with host.remote:
        report = host.preflight(required_bytes=1 << 60)
    assert not report.ok
    failed = {c.name: c for c in report.failed}
    assert set(failed) == {"CPU cores", "RAM", "free disk", "port 1 listening", "PHP version", "database version"}
    assert "more on the disk" in failed["free disk"].fix and "PHP" in failed["PHP version"].fix
    assert "no login" in failed["database version"].found
    passed = {c.name for c in report.checks if c.status == "pass"}
    assert {"operating system", "clock skew", f"port {sshd.port} listening", "SSH login and host key"} <= passed


def test_host_key_mismatch_is_refused_with_a_clear_message(sshd, tmp_path):
    other = tmp_path / "known_hosts"
    other.write_text(f"[127.0.0.1]:{sshd.port} ssh-ed25519 "
                     "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n")
    host = box_host(box_section(sshd, tmp_path, known_hosts=other))
    with pytest.raises(AuthError, match="host key does not match") as info:
        host.preflight()
    assert "known_hosts" in info.value.fix
    assert not (tmp_path / "staging").exists()  # refused before anything happened

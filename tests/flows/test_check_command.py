"""``cloud2box check`` against the real servers the tests start: the sandbox's portals (REST over
HTTP), its backup delivery and SSH mirror, its box host (SSH + MariaDB), OpenSSH's sshd, SQLite and
PostgreSQL journals — the happy path and each failure a new user runs into."""

from __future__ import annotations

import os
import socket

import pytest

pytestmark = pytest.mark.mariadb  # the sandbox box host keeps its database on the local MariaDB

from flows.access_check import run_checks
from flows.cli import main
from flows.config import load_config, resolve_secrets


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """Every sandbox piece on loopback and the config the demo would run with."""
    from flows.demo import write_demo_config
    from flows.sandbox_services import start_sandbox

    out = tmp_path_factory.mktemp("check-sandbox")
    with start_sandbox(out) as handles:
        config = write_demo_config(out, handles)
        saved = {k: os.environ.get(k) for k in handles.env}
        os.environ.update(handles.env)
        try:
            yield handles, config
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _rows(config_path, *, stage="check", **overrides):
    config = load_config(config_path, overrides=overrides)
    report = run_checks(config, secrets=resolve_secrets(config), stage=stage, timeout_s=5)
    return report, {r.name: r for r in report.rows}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_check_passes_on_the_sandbox_and_prints_the_table(sandbox, capsys):
    handles, config = sandbox
    assert main(["check", "--config", str(config), "--timeout", "10"]) == 0
    out = capsys.readouterr().out
    flat = " ".join(out.split())
    for name in ("cloud webhook", "box webhook", "box custom-field rights", "backup delivery", "backup mirror SSH",
                 "backup mirror path", "box host SSH", "box host python", "box host paths", "box database",
                 "journal database", "secret cloud_webhook"):
        assert name in flat, name
    assert "0 failed" in out
    for value in handles.env.values():  # no secret in the table
        assert value not in out


def test_a_wrong_webhook_code_fails_the_check_without_showing_it(sandbox, capsys, monkeypatch):
    _, config = sandbox
    wrong = "wrongcode" + "7" * 12
    monkeypatch.setenv("C2B_SANDBOX_CLOUD_WEBHOOK_CODE", wrong)
    assert main(["check", "--config", str(config), "--timeout", "10"]) == 1
    out = capsys.readouterr().out
    flat = " ".join(out.split())
    assert any("cloud webhook" in line and "failed" in line for line in out.splitlines())
    assert "NO_AUTH_FOUND" in flat and "create a new incoming webhook" in flat.replace("│ ", "")
    assert wrong not in out
    assert "1 failed" in out


def test_a_webhook_without_the_user_scope_is_named(sandbox):
    handles, config = sandbox
    portal = handles.services["crm"].box.portal
    portal.scopes = frozenset({"crm"})
    try:
        _, rows = _rows(config)
    finally:
        del portal.scopes  # back to the class default
    assert rows["box webhook"].failed and "lacks the scope(s) user" in rows["box webhook"].finding
    assert "scopes crm and user" in rows["box webhook"].fix
    assert rows["cloud webhook"].status == "ok"


def test_an_unknown_host_key_fails_the_box_host_with_the_keyscan_fix(sandbox, tmp_path):
    _, config = sandbox
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    _, rows = _rows(config, box_host={"known_hosts": str(empty)})
    row = rows["box host SSH"]
    assert row.failed and "host key unknown" in row.finding and "ssh-keyscan" in row.fix
    assert "box database" not in rows  # nothing else was tried on a host we could not trust


def test_an_unreachable_ssh_port_fails_fast_with_the_fix(sandbox):
    _, config = sandbox
    port = _closed_port()
    _, rows = _rows(config, backup={"mirror": {"port": port}})
    row = rows["backup mirror SSH"]
    assert row.failed and f"nothing answers on port {port}" in row.finding and "firewall" in row.fix
    assert rows["box host SSH"].status == "ok"  # the others still ran


def test_a_missing_box_database_is_fine_before_the_restore_and_fails_before_the_downtime(sandbox):
    _, config = sandbox
    missing = {"box_host": {"db": {"database": "c2b_no_such_database"}}}
    _, rows = _rows(config, **missing)
    assert rows["box database"].status == "ok" and "restore (step 2.3) creates it" in rows["box database"].finding
    report, rows = _rows(config, stage="before-downtime", **missing)
    assert rows["box database"].failed and "does not exist" in rows["box database"].finding
    error = report.error()
    assert "before the users' downtime" in error.message and "re-run step 2.3" in error.fix


def test_a_wrong_box_database_password_is_named(sandbox, monkeypatch):
    _, config = sandbox
    monkeypatch.setenv("C2B_SANDBOX_BOX_DB_PASSWORD", "not-the-password")
    _, rows = _rows(config)
    row = rows["box database"]
    assert row.failed and "refused the login" in row.finding and "password secret" in row.fix
    assert "not-the-password" not in row.finding + row.fix


def test_a_wrong_backup_password_fails_the_delivery(sandbox, monkeypatch):
    _, config = sandbox
    monkeypatch.setenv("C2B_BACKUP_PASSWORD", "wrong-backup-password")
    _, rows = _rows(config)
    row = rows["backup delivery"]
    assert row.failed and row.fix
    assert "wrong-backup-password" not in row.finding + row.fix


def test_the_real_sshd_unknown_host_key_and_login(sshd, tmp_path):
    """OpenSSH's sshd, as a real box would run it: the same rows as the sandbox's host."""
    from connectors.ssh import RemoteHost
    from connectors.ssh.access import check_login, check_readable_dir

    good = RemoteHost(sshd.host, port=sshd.port, username=sshd.username, key_file=sshd.key_file,
                      known_hosts=sshd.known_hosts, timeout=5)
    try:
        assert check_login(good, "ssh").status == "ok"
        assert check_readable_dir(good, "dir", str(sshd.root)).status == "ok"
        assert check_readable_dir(good, "dir", "/nonexistent/c2b").failed
    finally:
        good.close()
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    row = check_login(RemoteHost(sshd.host, port=sshd.port, username=sshd.username, key_file=sshd.key_file,
                                 known_hosts=empty, timeout=5), "ssh")
    assert row.failed and "host key unknown" in row.finding and f"ssh-keyscan -p {sshd.port}" in row.fix


def test_sqlite_journal_rows(tmp_path):
    from journal.access import check_journal
    from journal.store import Journal

    url = f"sqlite:///{tmp_path / 'j.db'}"
    assert "does not exist yet" in check_journal(url, timeout_s=5).finding
    Journal(url)  # now it exists
    assert check_journal(url, timeout_s=5).finding.endswith("opens and takes writes")
    runs_before = Journal(url).runs()
    assert runs_before == []  # the check wrote no run
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "j.db").write_bytes((tmp_path / "j.db").read_bytes())
    (tmp_path / "ro" / "j.db").chmod(0o400)
    (tmp_path / "ro").chmod(0o500)
    try:
        if os.geteuid() != 0:  # root writes anyway
            row = check_journal(f"sqlite:///{tmp_path / 'ro' / 'j.db'}", timeout_s=5)
            assert row.failed and "directory you can write" in row.fix
    finally:
        (tmp_path / "ro").chmod(0o700)
    row = check_journal(f"sqlite:///{tmp_path / 'no' / 'such' / 'j.db'}", timeout_s=5)
    assert row.status == "ok" and "does not exist yet" in row.finding  # the run makes the directories
    (tmp_path / "a-file").write_text("x")
    row = check_journal(f"sqlite:///{tmp_path / 'a-file' / 'j.db'}", timeout_s=5)
    assert row.failed and "not a directory this user can write" in row.finding
    (tmp_path / "not-sqlite.db").write_text("this is no database" * 100)
    row = check_journal(f"sqlite:///{tmp_path / 'not-sqlite.db'}", timeout_s=5)
    assert row.failed and "not a database" in row.finding


@pytest.mark.postgres
def test_postgresql_journal_rows(pg_url):
    from journal.access import check_journal

    row = check_journal(pg_url, timeout_s=5)
    assert row.status == "ok" and "may create its tables" in row.finding
    missing = pg_url.split("?")[0].rsplit("/", 1)[0] + "/c2b_no_such_db"
    row = check_journal(missing, timeout_s=5)
    assert row.failed and "does not exist" in row.finding and "createdb" in row.fix
    row = check_journal(f"postgresql+psycopg2://postgres@127.0.0.1:{_closed_port()}/test", timeout_s=3)
    assert row.failed and "runs and is reachable" in row.fix


def test_notice_targets_are_proven_without_sending():
    from journal.access import check_notices

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        rows = check_notices([f"json://127.0.0.1:{port}/hook", f"json://127.0.0.1:{_closed_port()}/hook",
                              "tgram://123456:ABCDEF/987", "nosuchscheme://x"], dry_run=False, timeout_s=3)
    assert [r.status for r in rows] == ["ok", "failed", "ok", "failed"]
    assert "nothing was sent" in rows[0].finding and "not contacted" in rows[2].finding
    assert "ABCDEF" not in " ".join(r.finding + r.name for r in rows)
    assert check_notices([], dry_run=True, timeout_s=1)[0].status == "skipped"

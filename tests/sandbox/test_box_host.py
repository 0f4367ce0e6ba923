"""The demo's host steps end to end on the sandbox: the backup is downloaded from the sandbox
backup server, then the actions of steps 1.1, 1.2, 1.5, 2.3 and 2.4 run against the sandbox box
host (embedded SSH server + a database on the machine's MariaDB), evidence in the journal, no
secret anywhere."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import tomllib
from pathlib import Path

import pytest
from pydantic import SecretStr

from connectors.secrets import install_log_redaction, register_secret
from flows.actions import ActionContext
from flows.actions.box_host import (check_box, post_restore_fixes, preflight_host, restore_backup,
                                    verify_host_deployed)
from flows.actions.transfer import download_backup
from journal.store import Journal
from sandbox.backup_maker import SANDBOX_REST_APPS, dump_statements
from sandbox.backup_server import start_backup_sandbox
from tests.flows.actions.helpers import action_config

pytestmark = [pytest.mark.mariadb]


@pytest.fixture
def box(tmp_path):
    from sandbox.box_host import start_box_host

    try:
        host = start_box_host(tmp_path / "box")
    except RuntimeError as exc:
        pytest.skip(str(exc))
    with host:
        yield host


def test_host_steps_on_the_sandbox_box_host(tmp_path, box, caplog):
    with start_backup_sandbox(tmp_path / "sandbox", corrupt=None, mirror=False) as backup:
        raw = tomllib.loads("\n".join(backup.toml_lines() + box.toml_lines()))
        secrets = {"backup_licence_key": SecretStr(backup.server.licence_key),
                   "backup_password": SecretStr(backup.server.password),
                   "box_db_password": SecretStr(box.db_password)}
        for value in secrets.values():
            register_secret(value.get_secret_value())
        assert box.secrets_toml_lines() == ['box_db_password = { env = "C2B_SANDBOX_BOX_DB_PASSWORD" }']
        assert box.env == {"C2B_SANDBOX_BOX_DB_PASSWORD": box.db_password}
        config = action_config(backup=raw["backup"], box_host=raw["box_host"], post_restore=raw["post_restore"])
        journal = Journal(f"sqlite:///{tmp_path / 'journal.db'}")
        run, _ = journal.open_run(name="t", portal="http://127.0.0.1", mode="rehearsal", timezone="UTC",
                                  config_snapshot={})

        def ctx(step: str) -> ActionContext:
            return ActionContext(config=config, secrets=secrets, journal=journal, run_id=run.id, step_id=step,
                                 mode="rehearsal", work_dir=tmp_path / "work", logger=logging.getLogger("t"))

        caplog.set_level(logging.DEBUG)
        install_log_redaction()
        assert verify_host_deployed(ctx("1.1")).counters.failed == 0
        assert check_box(ctx("1.5")).counters.failed == 0
        download_backup(ctx("2.3"))
        assert preflight_host(ctx("1.2")).counters.failed == 0
        restored = restore_backup(ctx("2.3"))
        made = backup.backup
    site = box.site_root
    for rel, digest in made.files.items():
        if not rel.endswith(("settings.php", "dbconn.php")):
            assert hashlib.sha256((site / rel).read_bytes()).hexdigest() == digest
    assert restored.counters.files == len(made.files) and restored.counters.tables >= 6
    assert restored.counters.restore_mb_per_s > 0 and restored.evidence["tables"]["b_user"] == 6
    assert box.db_password in (site / "bitrix/.settings.php").read_text()  # the box's credentials, for PHP

    fixed = post_restore_fixes(ctx("2.4"))
    status = {f["name"]: f["status"] for f in fixed.evidence["fixes"]}
    assert status == {"portal domain": "fixed", "push & pull server": "fixed", "search index": "fixed",
                      "password resets": "found"}
    csv_text = Path(fixed.evidence["password_reset_csv"]).read_text()
    assert "anna.network" in csv_text and "boris.network" in csv_text and "gone.network" not in csv_text
    again = post_restore_fixes(ctx("2.4"))
    assert {f["name"]: f["status"] for f in again.evidence["fixes"]} == {
        "portal domain": "ok", "push & pull server": "ok", "search index": "ok", "password resets": "found"}
    assert again.counters.fixed == 0
    assert restored.evidence["tables"]["b_rest_app"] == 3

    # the box admin runs Settings → Search → Reindex: the index is filled, the queued marker gone
    leads = box.sql("SELECT COUNT(*) FROM b_crm_lead")[0][0]
    assert box.reindex_search() == leads > 0
    after_reindex = {f["name"]: f for f in post_restore_fixes(ctx("2.4")).evidence["fixes"]}
    assert after_reindex["search index"]["status"] == "ok"
    assert after_reindex["search index"]["before"] == f"{leads} indexed item(s)"

    from tests.connectors.conftest import mariadb_connect

    conn = mariadb_connect(box.database)
    cur = conn.cursor()
    cur.execute("SELECT MODULE_ID, NAME, VALUE FROM b_option WHERE MODULE_ID IN ('main','pull') "
                "AND NAME IN ('server_name','nginx','push')")
    assert set(cur.fetchall()) == {("main", "server_name", box.domain), ("pull", "nginx", "Y"), ("pull", "push", "Y")}
    cur.execute("SELECT SERVER_NAME FROM b_lang")
    assert cur.fetchall() == ((box.domain,),)
    conn.close()

    kinds = [e.kind for e in journal.events(run.id)]
    assert {"ssh-command", "preflight", "staged", "restored-files", "restored-db", "post-restore"} <= set(kinds)
    commands = [e for e in journal.events(run.id, "ssh-command")]
    assert any("restore_agent.py restore" in e.message for e in commands)
    dump = "\n".join(sqlite3.connect(tmp_path / "journal.db").iterdump())
    for text in (dump, caplog.text, repr(restored), repr(fixed)):
        assert box.db_password not in text


def _load_dump(box) -> None:
    """The portal's tables as the restore leaves them, loaded through the admin connection."""
    for statement in dump_statements():
        box.sql(statement)


def test_sql_injects_faults(box):
    _load_dump(box)
    push = "SELECT VALUE FROM b_option WHERE MODULE_ID='pull' AND NAME='push'"
    assert box.sql("UPDATE b_option SET VALUE='Y' WHERE MODULE_ID='pull' AND NAME='push'") == []
    assert box.sql(push) == [("Y",)]
    box.sql("UPDATE b_option SET VALUE='N' WHERE MODULE_ID='pull' AND NAME='push'")
    assert box.sql(push) == [("N",)]
    apps = "SELECT CODE, APP_NAME FROM b_rest_app WHERE ACTIVE='Y' AND INSTALLED='Y' ORDER BY ID"
    assert dict(box.sql(apps)) == SANDBOX_REST_APPS
    box.sql("UPDATE b_rest_app SET ACTIVE='N' WHERE CODE='c2b.whatsapp_channel'")
    assert [code for code, _ in box.sql(apps)] == ["c2b.telephony_connector", "c2b.doc_generator"]
    # statements run in the box's database, not the server's default
    assert box.sql("SELECT DATABASE()") == [(box.database,)]


def test_reindex_search_fills_the_index_from_the_leads(box):
    with pytest.raises(RuntimeError, match="restore the backup first"):
        box.reindex_search()
    _load_dump(box)
    assert box.sql("SELECT COUNT(*) FROM b_search_content") == [(0,)]  # dumped empty
    box.sql("INSERT INTO b_option (MODULE_ID, NAME, VALUE) VALUES ('search', 'c2b_reindex_queued', 'Y')")
    leads = box.sql("SELECT ID, TITLE FROM b_crm_lead ORDER BY ID")
    assert box.reindex_search() == len(leads) > 0
    indexed = box.sql("SELECT MODULE_ID, ITEM_ID, TITLE FROM b_search_content ORDER BY ID")
    assert indexed == [("crm", f"L{lead_id}", title) for lead_id, title in leads]
    assert box.sql("SELECT COUNT(*) FROM b_option WHERE MODULE_ID='search' AND NAME='c2b_reindex_queued'") == [(0,)]
    assert box.sql("SELECT VALUE FROM b_option WHERE MODULE_ID='search' AND NAME='use_stemming'") == [("Y",)]
    # a second reindex rebuilds, it does not pile up
    box.sql("DELETE FROM b_crm_lead WHERE ID = 1")
    assert box.reindex_search() == len(leads) - 1
    assert box.sql("SELECT COUNT(*) FROM b_search_content") == [(len(leads) - 1,)]


def test_closed_box_refuses_sql(tmp_path):
    from sandbox.box_host import start_box_host

    try:
        box = start_box_host(tmp_path / "box")
    except RuntimeError as exc:
        pytest.skip(str(exc))
    box.close()
    with pytest.raises(RuntimeError, match="closed"):
        box.sql("SELECT 1")

"""The ``download_backup`` action end to end on the demo's sandbox: one part corrupted on the wire,
repaired over SSH from the sandbox mirror, evidence in the journal, no secret anywhere.

(Lives here, not under tests/flows, because it needs no Prefect: the action is called with a
plain ActionContext.)
"""

from __future__ import annotations

import logging
import sqlite3
import tomllib

from pydantic import SecretStr
from sqlalchemy import select

from connectors.secrets import install_log_redaction, register_secret
from flows.actions import ActionContext
from flows.actions.transfer import download_backup
from journal.models import Event
from journal.parts import parts_of
from journal.store import Journal
from sandbox.backup_server import start_backup_sandbox
from tests.flows.actions.helpers import action_config


def test_download_backup_repairs_over_ssh_and_journals_evidence(tmp_path, caplog):
    with start_backup_sandbox(tmp_path / "sandbox") as box:
        raw = tomllib.loads("\n".join(box.toml_lines()))
        secrets = {"backup_licence_key": SecretStr(box.server.licence_key),
                   "backup_password": SecretStr(box.server.password)}
        for value in secrets.values():
            register_secret(value.get_secret_value())  # what flows.config.resolve_secrets does
        journal = Journal(f"sqlite:///{tmp_path / 'journal.db'}")
        run, _ = journal.open_run(name="t", portal="http://127.0.0.1", mode="rehearsal", timezone="UTC",
                                  config_snapshot={})
        progress = []
        ctx = ActionContext(config=action_config(backup=raw["backup"]), secrets=secrets,
                            journal=journal, run_id=run.id, step_id="2.3", mode="rehearsal",
                            work_dir=tmp_path / "work", logger=logging.getLogger("cloud2box.test"),
                            progress=lambda done, total, message="": progress.append((done, total, message)))
        caplog.set_level(logging.DEBUG)
        install_log_redaction()
        result = download_backup(ctx)
        corrupt = box.corrupt_part
        backup = box.backup
    dest = tmp_path / "work" / "backup"
    for part in backup.parts:
        assert (dest / part.name).read_bytes() == part.path.read_bytes()
    assert result.evidence["repaired"] == [corrupt]
    assert result.counters.parts_repaired == 1 and result.counters.bytes == backup.total_size
    rows = parts_of(journal, run.id)
    assert [r.part for r in rows] == [p.name for p in backup.parts]
    assert all(r.verified for r in rows)
    assert {r.part: r.source for r in rows}[corrupt] == "ssh"
    with journal.session() as s:
        kinds = [e.kind for e in s.scalars(select(Event).where(Event.run_id == run.id))]
    assert "part-repaired" in kinds and "eta" in kinds
    assert progress and progress[-1][0] == progress[-1][1]
    # No secret in the journal (any table) or the logs.
    dump = "\n".join(sqlite3.connect(tmp_path / "journal.db").iterdump())
    assert "backup.php?license=" in caplog.text  # the URLs were logged (by urllib3), so the check bites
    texts = [dump, caplog.text, repr(result)]
    import hashlib

    derived = [box.server.licence_key, box.server.password, hashlib.md5(box.server.licence_key.encode()).hexdigest(),
               hashlib.md5(("BITRIXCLOUDSERVICE" + box.server.password).encode()).hexdigest()]
    for text in texts:
        for value in derived:
            assert value not in text

"""Post-restore checks and fixes (step 2.4) on a restored sandbox dump in the machine's MariaDB,
through the agent on a real sshd: each fix can be switched off; a second run finds nothing to fix."""

from __future__ import annotations

import pytest

from connectors.bitrix24.backup_format import dump_order
from connectors.bitrix24.post_restore import PostRestoreSection, run_fixes
from connectors.box_host import LocalPart
from connectors.box_host.post_restore import domain_of
from connectors.errors import ConfigError, IntegrityError
from sandbox.backup_maker import make_backup
from tests.connectors.box_host.conftest import box_host, box_section

pytestmark = [pytest.mark.sshd, pytest.mark.mariadb]


def test_fixes_switch_off_check_and_fix(sshd, tmp_path, db_name):
    made = make_backup(tmp_path / "vendor", total_bytes=300_000, part_size=128 * 1024, seed=31)
    host = box_host(box_section(sshd, tmp_path / "host", db_name=db_name))
    with host.remote:
        host.stage([LocalPart(p.name, p.path, p.size, p.sha256) for p in made.parts])
        host.import_db(dump_order(host.restore_files([p.name for p in made.parts])["sql_files"]))
        off = PostRestoreSection(set_domain=False, enable_push_pull=False, queue_search_reindex=False,
                                 list_password_resets=False)
        assert {r.status for r in run_fixes(host.sql, off, domain="x")} == {"skipped"}
        assert host.sql(["SELECT VALUE FROM b_option WHERE MODULE_ID='pull' AND NAME='nginx'"]) == [[["N"]]]
        first = {r.name: r for r in run_fixes(host.sql, PostRestoreSection(), domain=domain_of("https://crm.acme.test/"))}
        assert first["portal domain"].status == "fixed" and "''" in first["portal domain"].before
        assert first["push & pull server"].before == "pull.nginx='N', pull.push='N'"
        assert first["search index"].status == "fixed"
        assert [u["login"] for u in first["password resets"].items] == ["anna.network", "boris.network"]
        second = {r.name: r.status for r in run_fixes(host.sql, PostRestoreSection(), domain="crm.acme.test")}
        assert second == {"portal domain": "ok", "push & pull server": "ok", "search index": "ok",
                          "password resets": "found"}
        assert host.sql(["SELECT DOMAIN FROM b_lang_domain"]) == [[["crm.acme.test"]]]
    with pytest.raises(ConfigError):
        domain_of("not a domain/with spaces")


def test_parts_on_host_are_checked_not_sent(sshd, tmp_path):
    made = make_backup(tmp_path / "vendor", total_bytes=300_000, part_size=128 * 1024, seed=32)
    section = box_section(sshd, tmp_path / "host", parts_on_host=True)
    parts = [LocalPart(p.name, p.path, p.size, p.sha256) for p in made.parts]
    host = box_host(section)
    staging = tmp_path / "host" / "staging"
    staging.mkdir(parents=True)
    for p in made.parts:
        (staging / p.name).write_bytes(p.path.read_bytes())
    with host.remote:
        report = host.stage(parts)
        assert report.sent == [] and report.kept == [p.name for p in made.parts]
        (staging / made.parts[0].name).write_bytes(b"downloaded wrong")
        with pytest.raises(IntegrityError, match="download the part again"):
            host.stage(parts)

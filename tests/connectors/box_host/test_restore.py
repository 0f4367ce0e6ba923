"""Staging and restore on a real OpenSSH sshd (this machine is the box host) with the machine's
MariaDB: multi-part files and tables reproduced exactly, hash mismatches caught, malicious
archives refused, encrypted archives, and re-runs after failures ending in the same state."""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import pytest

from connectors.bitrix24.backup_format import dump_order
from connectors.box_host import LocalPart, UnsafeArchiveError
from connectors.errors import AuthError, IntegrityError, TransientError
from connectors.ssh import RemoteHost
from sandbox.backup_maker import make_backup, tar_member, write_parts
from tests.connectors.conftest import mariadb_connect

from .conftest import AGENT_SOURCE, box_host, box_section

pytestmark = [pytest.mark.sshd, pytest.mark.mariadb]


def local_parts(made) -> list[LocalPart]:
    return [LocalPart(p.name, p.path, p.size, p.sha256) for p in made.parts]


def tree(root: Path) -> dict[str, str]:
    """relative path → sha256 (files) / 'dir' / 'link:target' of everything under root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            p = Path(dirpath, d)
            out[str(p.relative_to(root))] = f"link:{os.readlink(p)}" if p.is_symlink() else "dir"
        for f in filenames:
            p = Path(dirpath, f)
            out[str(p.relative_to(root))] = (f"link:{os.readlink(p)}" if p.is_symlink()
                                             else hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def table_checksums(database: str) -> dict[str, int]:
    conn = mariadb_connect(database)
    try:
        cur = conn.cursor()
        cur.execute("SHOW TABLES")
        tables = [r[0] for r in cur.fetchall()]
        cur.execute("CHECKSUM TABLE " + ", ".join(f"`{t}`" for t in tables))
        return {r[0].split(".", 1)[1]: r[1] for r in cur.fetchall()}
    finally:
        conn.close()


def reference_db(made, database: str) -> None:
    """Load the dump with pymysql, statement by statement: the independent path to compare with."""
    conn = mariadb_connect()
    cur = conn.cursor()
    cur.execute(f"CREATE DATABASE `{database}`")
    cur.execute(f"USE `{database}`")
    root = made.directory / "unpacked"
    for rel in dump_order([f for f in made.files if f.startswith("bitrix/backup/")]):
        for line in (root / rel).read_text().splitlines():
            if line.strip() and not line.startswith("--"):
                cur.execute(line)
    conn.close()


def unpack_reference(made) -> None:
    import gzip
    import io
    import tarfile

    whole = b"".join(p.path.read_bytes() for p in made.parts)
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(whole))) as tar:
        tar.extractall(made.directory / "unpacked", filter="data")


def test_restore_reproduces_files_and_tables(sshd, tmp_path, db_name):
    made = make_backup(tmp_path / "vendor", total_bytes=1_500_000, part_size=256 * 1024, seed=21,
                       sql_part_bytes=100_000)
    assert len(made.parts) >= 5
    section = box_section(sshd, tmp_path / "host", db_name=db_name)
    records = []
    host = box_host(section, records)
    with host.remote:
        staged = host.stage(local_parts(made))
        assert staged.sent == [p.name for p in made.parts] and staged.bytes_sent == made.total_size
        assert host.stage(local_parts(made)).kept == staged.sent  # a re-run sends nothing
        result = host.restore_files([p.name for p in made.parts])
        sql_files = dump_order(result["sql_files"])
        assert sql_files[0].endswith(".sql") and sql_files[1].endswith(".sql.1") and len(sql_files) >= 3
        db = host.import_db(sql_files)
        settings = host.write_site_settings()
    site = Path(section.site_root)
    rewritten = {"bitrix/.settings.php", "bitrix/php_interface/dbconn.php"}
    for rel, digest in made.files.items():
        if rel not in rewritten:
            assert hashlib.sha256((site / rel).read_bytes()).hexdigest() == digest, rel
    assert result["files"] == len(made.files) and result["tar_bytes"] == made.tar_size
    assert not [p for p in tree(site) if Path(p).name.startswith(".c2b-")]  # no temp file left
    # the tables: same as loading the dump independently
    ref = db_name + "_ref"
    unpack_reference(made)
    try:
        reference_db(made, ref)
        assert table_checksums(db_name) == table_checksums(ref)
    finally:
        mariadb_connect().cursor().execute(f"DROP DATABASE IF EXISTS `{ref}`")
    assert set(db["tables"]) >= {"b_crm_lead", "b_option", "b_user", "b_search_content"}
    assert db["rows"]["b_user"] == 6 and db["rows"]["b_search_content"] == 0 and db["rows"]["b_crm_lead"] > 100
    # the masked DB settings now name the box's database
    assert settings["changed"] == ["bitrix/.settings.php", "bitrix/php_interface/dbconn.php"]
    assert settings["still_masked"] == [] and db_name in (site / "bitrix/.settings.php").read_text()
    assert any(r.command.endswith("restore_agent.py restore") for r in records)


def test_staging_detects_a_remote_hash_mismatch(sshd, tmp_path):
    made = make_backup(tmp_path / "vendor", total_bytes=600_000, part_size=256 * 1024, seed=22)
    section = box_section(sshd, tmp_path / "host")
    staging = Path(section.staging_dir)
    staging.mkdir(parents=True)
    # a same-size copy with wrong bytes (an earlier bad copy) is found by its hash and replaced
    bad = made.parts[1]
    (staging / bad.name).write_bytes(b"\0" * bad.size)
    # half of an interrupted upload is resumed by offset
    half = made.parts[0]
    (staging / half.name).write_bytes(half.path.read_bytes()[: half.size // 2])
    host = box_host(section)
    with host.remote:
        report = host.stage(local_parts(made))
    assert set(report.sent) == {p.name for p in made.parts}
    assert report.bytes_sent == made.total_size - half.size // 2
    for part in made.parts:
        assert hashlib.sha256((staging / part.name).read_bytes()).hexdigest() == part.sha256

    class FlakyDisk(RemoteHost):
        """The host's disk damages what it stores (the upload itself went fine)."""

        def put(self, local_path, remote_path, **kw):
            n = super().put(local_path, remote_path, **kw)
            with open(remote_path, "r+b") as f:
                f.seek(100)
                f.write(b"\xff\xfe")
            return n

    (staging / bad.name).unlink()
    flaky = FlakyDisk.from_settings(section)
    from connectors.box_host import BoxHost

    with flaky, pytest.raises(IntegrityError, match=f"{bad.name} on the host has sha256") as info:
        BoxHost(section, flaky, agent_source=AGENT_SOURCE).stage(local_parts(made))
    assert "disk" in info.value.fix


@pytest.mark.parametrize("evil", ["dotdot", "absolute", "symlink", "symlink-then-file", "hardlink", "chain"])
def test_malicious_archive_is_refused_with_nothing_written_outside(sshd, tmp_path, evil):
    outside = tmp_path / "outside"
    outside.mkdir()
    good = tar_member("index.php", b"<?php echo 1;")
    members = {
        "dotdot": tar_member("upload/../../outside/evil.php", b"pwned"),
        "absolute": tar_member(str(outside / "evil.php"), b"pwned"),
        "symlink": tar_member("upload/evil", type="2", linkname="../../outside"),
        "symlink-then-file": (tar_member("upload/ok", type="2", linkname="../..")
                              + tar_member("upload/ok/outside/evil.php", b"pwned")),
        "hardlink": tar_member("upload/evil.php", type="1", linkname="../outside/passwd"),
        # each link "inside" read as text; together they lead out (issue 11)
        "chain": (tar_member("d/", type="5") + tar_member("d/s", type="2", linkname="..")
                  + tar_member("x", type="2", linkname="d/s/..") + tar_member("x/outside/evil.php", b"pwned")),
    }
    section = box_section(sshd, tmp_path / "host")
    staging = Path(section.staging_dir)
    staging.mkdir(parents=True)
    write_parts(staging, "evil.tar.gz", [good + members[evil]], part_size=2**20)
    host = box_host(section)
    with host.remote, pytest.raises(UnsafeArchiveError, match="refused") as info:
        host.restore_files(["evil.tar.gz"])
    assert "new backup" in info.value.fix
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "evil.php").exists() and not (tmp_path / "host" / "evil.php").exists()
    site = Path(section.site_root)
    assert not any("evil" in p for p in tree(site)) if site.exists() else True


def test_interrupted_restore_rerun_ends_in_the_same_state(sshd, tmp_path, db_name):
    made = make_backup(tmp_path / "vendor", total_bytes=1_200_000, part_size=256 * 1024, seed=23,
                       sql_part_bytes=80_000)
    names = [p.name for p in made.parts]
    clean = box_section(sshd, tmp_path / "clean")
    host = box_host(clean)
    with host.remote:
        host.stage(local_parts(made))
        host.restore_files(names)
    expected = tree(Path(clean.site_root))

    section = box_section(sshd, tmp_path / "host", db_name=db_name)
    host = box_host(section)
    staging = Path(section.staging_dir)
    with host.remote:
        host.stage(local_parts(made))
        # 1) the copy of part 3 on the host got damaged: the restore stops half-way, naming it
        bad = staging / names[3]
        raw = bytearray(bad.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        bad.write_bytes(bytes(raw))
        with pytest.raises(IntegrityError, match=names[3].replace(".", r"\.")) as info:
            host.restore_files(names)
        assert "copy" in info.value.fix
        half = tree(Path(section.site_root))
        assert half and set(half) < set(expected)  # stopped half-way, no half-written file left
        # 2) staging again replaces the damaged copy; 3) a run killed after a few files
        assert host.stage(local_parts(made)).sent == [names[3]]
        with pytest.raises(TransientError, match="stopped after 3 files"):
            host.restore_files(names, test_stop_after_files=3)
        first = host.restore_files(names)
        assert not first["skipped"]
        assert tree(Path(section.site_root)) == expected
        assert host.restore_files(names)["skipped"]  # done is remembered
        assert not host.restore_files(names, run_key="the-cutover-run")["skipped"]  # a new run restores afresh
        # the DB import re-run (after a failed one) ends in the same tables
        sql_files = dump_order(first["sql_files"])
        broken = Path(section.site_root) / sql_files[1]
        good_sql = broken.read_bytes()
        broken.write_bytes(good_sql[: len(good_sql) // 2] + b"\nTHIS IS NOT SQL;\n")
        with pytest.raises(Exception, match="mysql failed"):
            host.import_db(sql_files)
        broken.write_bytes(good_sql)
        host.import_db(sql_files)
        once = table_checksums(db_name)
        host.import_db(sql_files)
        assert table_checksums(db_name) == once


def test_encrypted_backup_right_and_wrong_password(sshd, tmp_path):
    made = make_backup(tmp_path / "vendor", total_bytes=300_000, part_size=128 * 1024, seed=24,
                       encrypt_password="open sesame")
    raw = b"".join(p.path.read_bytes() for p in made.parts)
    assert b"Bitrix Encrypted File" in gzip.decompress(raw)[:512]
    wrong = box_section(sshd, tmp_path / "wrong")
    host = box_host(wrong, archive_password="open sesame!")
    with host.remote:
        host.stage(local_parts(made))
        with pytest.raises(AuthError, match="wrong password") as info:
            host.restore_files([p.name for p in made.parts])
    assert "password" in info.value.fix
    assert not Path(wrong.site_root).exists()  # nothing written, not even the site root
    right = box_section(sshd, tmp_path / "right")
    host = box_host(right, archive_password="open sesame")
    with host.remote:
        host.stage(local_parts(made))
        result = host.restore_files([p.name for p in made.parts])
    assert result["encrypted"] and result["files"] == len(made.files)
    for rel, digest in made.files.items():
        assert hashlib.sha256((Path(right.site_root) / rel).read_bytes()).hexdigest() == digest

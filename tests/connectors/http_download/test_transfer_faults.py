"""The part set and the repairs: a corrupt LN is a corrupt first part (re-fetched, then taken
from the mirror), the backup is incomplete only when copies agree, every bad part is named at
once, a bad mirror copy says it is the mirror's, and everything written is private."""

from __future__ import annotations

import re
import shutil
import stat

import pytest

from connectors import platforms
from connectors.errors import IntegrityError
from connectors.http_download import UrlListSource, transfer_backup
from connectors.ssh import RemoteHost
from sandbox.backup_server import BackupServer

from .test_download import assert_same_backup, sha256, state_of

FMT = platforms.get("bitrix24").format  # the sandbox makes its backups in this platform's format

LN_VALUE = 14  # bytes 12-13 of the first part are "LN", 14-15 the number of the last part


def host(sshd) -> RemoteHost:
    return RemoteHost(sshd.host, port=sshd.port, username=sshd.username, key_file=sshd.key_file,
                      known_hosts=sshd.known_hosts)


@pytest.fixture
def bare_server(backup):
    """No ETag, no manifest (like the vendor's signed links): nothing but the part itself tells
    whether its LN bytes are right."""
    with BackupServer(backup.directory, rate=0, etag=False) as srv:
        yield srv


@pytest.fixture
def mirror_dir(sshd, backup, tmp_path):
    """Good copies of every part on the real sshd."""
    directory = sshd.root / tmp_path.name
    directory.mkdir()
    for part in backup.parts:
        shutil.copy(part.path, directory / part.name)
    yield directory
    shutil.rmtree(directory)


@pytest.mark.parametrize("offset", [LN_VALUE, 12])  # the part count, or the "LN" letters themselves
def test_corrupt_ln_on_the_wire_is_a_corrupt_first_part(bare_server, backup, settings, tmp_path, offset):
    first = backup.parts[0].name
    bare_server.faults.corrupt_part(first, offsets=[offset], times=1)
    report = transfer_backup(UrlListSource(bare_server.part_urls()), tmp_path, settings, fmt=FMT)
    assert_same_backup(tmp_path, backup)
    assert report.repaired == [first] and report.last_part == len(backup.parts) - 1
    fixed = report.parts[0]
    assert fixed.source == "http" and "LN" in fixed.error
    assert fixed.bytes_fetched == 2 * backup.parts[0].size


def test_ln_wrong_at_the_source_is_taken_from_the_mirror(bare_server, backup, settings, tmp_path, sshd, mirror_dir):
    first = backup.parts[0].name
    bare_server.faults.corrupt_part(first, offsets=[LN_VALUE])  # every HTTP copy carries it
    report = transfer_backup(UrlListSource(bare_server.part_urls()), tmp_path, settings, fmt=FMT,
                             mirror=lambda: host(sshd), mirror_path=str(mirror_dir))
    assert_same_backup(tmp_path, backup)
    assert report.repaired == [first] and report.parts[0].source == "ssh"
    assert "sha256-mirror" in report.parts[0].checks


def test_ln_that_two_copies_agree_on_means_an_incomplete_backup(bare_server, backup, settings, tmp_path):
    first = backup.parts[0].name
    bare_server.faults.corrupt_part(first, offsets=[LN_VALUE])  # 3 -> 252: both HTTP copies say 253 parts
    with pytest.raises(IntegrityError) as err:
        transfer_backup(UrlListSource(bare_server.part_urls()), tmp_path, settings, fmt=FMT)
    message = err.value.message
    assert "says there are 253 part(s); missing: " in message and "copies agree" in message
    missing = re.search(r"missing: ([^;]*)", message).group(1).split(", ")
    assert missing == [f"{backup.base}.{n}" for n in range(len(backup.parts), 253)]  # every one, at once
    assert "vendor" in err.value.fix


def test_ln_that_no_two_copies_agree_on_is_a_corrupt_first_part(bare_server, backup, settings, tmp_path):
    first = backup.parts[0]
    bare_server.faults.corrupt_part(first.name, offsets=[LN_VALUE])

    def then_break_its_data(progress) -> None:  # the second download of the first part is corrupt otherwise
        if progress.parts_total == len(backup.parts) and progress.parts_verified == progress.parts_total:
            bare_server.faults.corrupt_part(first.name, offsets=[first.size // 2])

    with pytest.raises(IntegrityError) as err:
        transfer_backup(UrlListSource(bare_server.part_urls()), tmp_path, settings, fmt=FMT,
                        on_progress=then_break_its_data)
    message = err.value.message
    assert message.startswith(f"backup part {first.name} is corrupt: its LN field") and "missing" not in message
    assert "the first download says 253 part(s); a second download is corrupt" in message
    assert "mirror" in err.value.fix
    assert not (tmp_path / first.name).exists() and not state_of(tmp_path)[first.name]["verified"]


def test_short_list_confirmed_by_the_mirror_is_incomplete(server, backup, settings, tmp_path, sshd, mirror_dir):
    last = backup.parts[-1].name
    with pytest.raises(IntegrityError, match=r"missing: " + re.escape(last)) as err:
        transfer_backup(UrlListSource(server.part_urls()[:-1]), tmp_path, settings, fmt=FMT, mirror=lambda: host(sshd),
                        mirror_path=str(mirror_dir))
    assert "the mirror's copy says 4 part(s)" in err.value.message
    assert sha256(tmp_path / backup.parts[0].name) == backup.parts[0].sha256  # the agreed copy is kept


def test_every_bad_part_is_named_at_once(backup, settings, tmp_path):
    served = tmp_path / "served"
    shutil.copytree(backup.directory, served)
    truncated = [backup.parts[1].name, backup.parts[2].name]
    for name in truncated:
        data = (served / name).read_bytes()
        (served / name).write_bytes(data[:-5000])
    with BackupServer(served, rate=0) as server:
        urls = server.part_urls()[:-1]  # and the last part is not listed at all
        with pytest.raises(IntegrityError) as err:
            transfer_backup(UrlListSource(urls), tmp_path / "dest", settings, fmt=FMT)
    message = err.value.message
    assert message.startswith("3 problems")
    for name in truncated:
        assert re.search(rf"- backup part {re.escape(name)} is corrupt after two downloads: .*truncated", message)
    assert f"missing: {backup.parts[-1].name}" in message
    assert "mirror" in err.value.fix and "vendor" in err.value.fix
    state = state_of(tmp_path / "dest")
    assert not any(state[n]["verified"] for n in truncated) and state[backup.parts[0].name]["verified"]


def test_corrupt_mirror_copy_is_named_as_the_mirrors(server, backup, settings, tmp_path, sshd, mirror_dir):
    bad = backup.parts[2]
    server.faults.corrupt_part(bad.name)
    data = bytearray((mirror_dir / bad.name).read_bytes())
    data[bad.size // 2] ^= 0xFF
    (mirror_dir / bad.name).write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as err:
        transfer_backup(UrlListSource(server.part_urls()), tmp_path, settings, fmt=FMT, mirror=lambda: host(sshd),
                        mirror_path=str(mirror_dir))
    where = f"{sshd.username}@{sshd.host}:{sshd.port}:{mirror_dir}/{bad.name}"
    assert f"the mirror's copy of {bad.name} ({where}) is corrupt too" in err.value.message
    assert where in err.value.fix
    assert not (tmp_path / bad.name).exists() and not (tmp_path / (bad.name + ".c2b-ssh")).exists()


def test_everything_written_is_private(server, backup, settings, tmp_path, sshd, mirror_dir):
    bad = backup.parts[1]
    server.faults.corrupt_part(bad.name)  # repaired over SSH in both runs below
    mirror = dict(mirror=lambda: host(sshd), mirror_path=str(mirror_dir))
    fresh = tmp_path / "new" / "backup"  # created by the download
    report = transfer_backup(UrlListSource(server.part_urls()), fresh, settings, fmt=FMT, **mirror)
    assert report.repaired == [bad.name]
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in fresh.iterdir()}
    assert len(modes) == len(backup.parts) + 1 and set(modes.values()) == {0o600}, modes  # parts + state
    # Half of an SFTP copy left world-readable by an older release: resumed, and the part is private.
    old = tmp_path / "old"
    old.mkdir(mode=0o755)
    (old / (bad.name + ".c2b-ssh")).write_bytes(bad.path.read_bytes()[: bad.size // 2])
    (old / (bad.name + ".c2b-ssh")).chmod(0o644)
    report = transfer_backup(UrlListSource(server.part_urls()), old, settings, fmt=FMT, **mirror)
    assert report.parts[1].source == "ssh" and report.parts[1].resumed_bytes == bad.size // 2
    assert_same_backup(old, backup)
    assert {stat.S_IMODE(p.stat().st_mode) for p in old.iterdir()} == {0o600}

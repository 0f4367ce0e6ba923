"""RemoteHost against a real OpenSSH sshd on loopback: host keys, resumable get, remote sha256,
and repairing a corrupt backup part from it."""

from __future__ import annotations

import hashlib
import os

import pytest

from connectors import platforms
from connectors.errors import AuthError
from connectors.http_download import UrlListSource, transfer_backup
from connectors.ssh import RemoteHost
from sandbox.backup_maker import make_backup
from sandbox.backup_server import BackupServer

FMT = platforms.get("bitrix24").format  # the sandbox makes its backups in this platform's format

pytestmark = pytest.mark.sshd


def host(sshd, **kw) -> RemoteHost:
    args = dict(port=sshd.port, username=sshd.username, key_file=sshd.key_file, known_hosts=sshd.known_hosts)
    return RemoteHost(sshd.host, **{**args, **kw})


def test_unknown_or_changed_host_key_is_refused(sshd, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(AuthError, match="ssh-keyscan"):
        host(sshd, known_hosts=empty).connect()
    other = tmp_path / "other_known_hosts"
    other.write_text(f"[127.0.0.1]:{sshd.port} ssh-ed25519 "
                     "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n")
    with pytest.raises(AuthError, match="does not match"):
        host(sshd, known_hosts=other).connect()


def test_get_resumes_by_offset_and_sha256(sshd, tmp_path):
    data = os.urandom(700_000)
    remote = sshd.root / "blob.bin"
    remote.write_bytes(data)
    local = tmp_path / "blob.bin"
    local.write_bytes(data[:300_000] + b"garbage after the offset")
    seen = bytearray()
    with host(sshd) as h:
        assert h.size(str(remote)) == len(data)
        copied = h.get(str(remote), local, offset=300_000, on_data=seen.extend)
        assert h.sha256(str(remote)) == hashlib.sha256(data).hexdigest()
        assert h.sha256(str(sshd.root / "missing")) is None
    assert copied == len(data) - 300_000 and bytes(seen) == data[300_000:]
    assert local.read_bytes() == data


def test_corrupt_part_is_repaired_from_a_real_sshd_mirror(sshd, tmp_path):
    made = make_backup(tmp_path / "vendor", total_bytes=1_500_000, part_size=512 * 1024, seed=11)
    mirror_dir = sshd.root / "mirror"
    mirror_dir.mkdir(exist_ok=True)
    for part in made.parts:
        (mirror_dir / part.name).write_bytes(part.path.read_bytes())
    bad = made.parts[1]
    # Half of an earlier, interrupted SFTP copy is already here: the repair resumes by offset.
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / (bad.name + ".c2b-ssh")).write_bytes(bad.path.read_bytes()[: bad.size // 2])
    from connectors.http_download import DownloadSettings

    settings = DownloadSettings(connections=3, chunk_mib=0.125, show_progress=False, backoff_s=0.01)
    with BackupServer(made.directory, rate=0) as server:
        server.faults.corrupt_part(bad.name)
        report = transfer_backup(UrlListSource(server.part_urls()), dest, settings, fmt=FMT,
                                 mirror=lambda: host(sshd), mirror_path=str(mirror_dir))
    fixed = next(p for p in report.parts if p.name == bad.name)
    assert report.repaired == [bad.name] and fixed.source == "ssh"
    assert "sha256-mirror" in fixed.checks and fixed.resumed_bytes == bad.size // 2
    for part in made.parts:
        assert hashlib.sha256((dest / part.name).read_bytes()).hexdigest() == part.sha256


def test_run_journals_commands_feeds_stdin_and_times_out(sshd):
    from connectors.errors import TransientError
    from connectors.secrets import register_secret

    register_secret("hunter2-c2b-test")
    records = []
    with host(sshd, on_command=records.append) as h:
        status, out, err = h.run("cat; echo to-stderr >&2; exit 3", input=b"from stdin\n")
        assert (status, out, err) == (3, "from stdin\n", "to-stderr\n")
        with pytest.raises(TransientError, match="did not finish within 1 s"):
            h.run("sleep 5", timeout=1)
        h.run("echo hunter2-c2b-test")
    assert [r.exit_status for r in records] == [3, None, 0]
    assert records[1].duration_s >= 0.9 and "sleep 5" in records[1].command
    assert "hunter2-c2b-test" not in records[2].command  # redacted before it reaches the journal


@pytest.mark.parametrize("client", ["paramiko", "openssh"])
def test_put_resumes_by_offset_and_checks_the_size(sshd, tmp_path, client):
    data = os.urandom(900_000)
    local = tmp_path / "part.bin"
    local.write_bytes(data)
    remote = sshd.root / f"put-{client}.bin"
    remote.write_bytes(data[:400_000])
    seen, records = [], []
    with host(sshd, sftp_client=client, on_command=records.append) as h:
        sent = h.put(local, str(remote), on_data=seen.append)
        assert sent == 500_000 == sum(seen) and remote.read_bytes() == data
        assert [r.command.startswith("sftp reput") for r in records] == ([True] if client == "openssh" else [])
        remote.write_bytes(data + b"longer than the local file")
        assert h.put(local, str(remote)) == len(data) and remote.read_bytes() == data
        h.write_text(str(sshd.root / "small.txt"), "héllo\n", mode=0o600)
        assert h.read_text(str(sshd.root / "small.txt")) == "héllo\n"
        assert (sshd.root / "small.txt").stat().st_mode & 0o777 == 0o600
        assert h.exists(str(remote)) and not h.exists(str(sshd.root / "nope"))


def test_trust_on_first_use_is_explicit_and_logged(sshd, tmp_path, caplog):
    fresh = tmp_path / "tofu_known_hosts"
    with host(sshd, known_hosts=fresh, strict_host_key=False) as h:
        assert h.run("true")[0] == 0
    assert "trusted on first use" in caplog.text
    assert "ssh-ed25519" in fresh.read_text()
    with host(sshd, known_hosts=fresh) as h:  # the stored key now verifies strictly
        assert h.run("true")[0] == 0


def test_openssh_upload_refuses_a_changed_host_key(sshd, tmp_path):
    other = tmp_path / "known_hosts"
    other.write_text(f"[127.0.0.1]:{sshd.port} ssh-ed25519 "
                     "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n")
    local = tmp_path / "x.bin"
    local.write_bytes(b"x" * 1000)
    h = host(sshd, sftp_client="openssh")
    with h:  # paramiko logs in with the right key; the OpenSSH upload then meets a changed one
        h.known_hosts = other
        with pytest.raises(AuthError, match="does not match"):
            h.put(local, str(sshd.root / "x.bin"))
    assert not (sshd.root / "x.bin").exists()

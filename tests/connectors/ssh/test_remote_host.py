"""RemoteHost against a real OpenSSH sshd on loopback: host keys, resumable get, remote sha256,
and repairing a corrupt backup part from it."""

from __future__ import annotations

import hashlib
import os

import pytest

from connectors.errors import AuthError
from connectors.http_download import UrlListSource, transfer_backup
from connectors.ssh import RemoteHost
from sandbox.backup_maker import make_backup
from sandbox.backup_server import BackupServer

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
        report = transfer_backup(UrlListSource(server.part_urls()), dest, settings,
                                 mirror=lambda: host(sshd), mirror_path=str(mirror_dir))
    fixed = next(p for p in report.parts if p.name == bad.name)
    assert report.repaired == [bad.name] and fixed.source == "ssh"
    assert "sha256-mirror" in fixed.checks and fixed.resumed_bytes == bad.size // 2
    for part in made.parts:
        assert hashlib.sha256((dest / part.name).read_bytes()).hexdigest() == part.sha256

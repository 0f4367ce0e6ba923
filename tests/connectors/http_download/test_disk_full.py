"""A full disk, for real: a small tmpfs mounted for the test (a fault in the write seam where no
file system may be mounted here). One clear error naming the path, the space and the fix;
nothing verified is touched; after space is freed the re-run fetches at most one chunk per
connection again."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import threading
from pathlib import Path

import pytest

from connectors import platforms
from connectors.errors import FatalError
from connectors.http_download import UrlListSource, transfer_backup
from connectors.http_download import disk as disk_module
from connectors.http_download import downloader as downloader_module
from connectors.ssh import RemoteHost
from sandbox.backup_server import BackupServer

from .test_download import assert_same_backup, state_of

FMT = platforms.get("bitrix24").format  # the sandbox makes its backups in this platform's format
FIX = re.compile(r"free \d+\.\d [MG]iB on (\S+) or set \[backup\] dest_dir elsewhere, then re-run: "
                 r"verified parts and written chunks are kept")


class SmallDisk:
    """An 80 MiB file system at ``path``; :meth:`fill` takes its free space, :meth:`release` gives it back."""

    def __init__(self, path: Path, real: bool) -> None:
        self.path, self.real = path, real
        self.full = False

    def free(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int = 0) -> None:
        self.full = True
        if not self.real:
            return
        fd = os.open(self.path / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            want = self.free() - leave
            try:
                os.posix_fallocate(fd, os.fstat(fd).st_size, max(0, want))
            except OSError:
                pass
            for _ in range(1 << 16):  # then page by page, to the last one
                if self.free() <= leave:
                    break
                try:
                    os.write(fd, b"\0" * 4096)
                except OSError:
                    break
        finally:
            os.close(fd)

    def release(self) -> None:
        self.full = False
        (self.path / "filler").unlink(missing_ok=True)


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=80m,mode=0755", "tmpfs", str(mount)],
                          capture_output=True, text=True, timeout=30)
    disk = SmallDisk(mount, real=done.returncode == 0)
    if not disk.real:
        # No mount allowed (not root, or no CAP_SYS_ADMIN): the same story through the write seam.
        real_pwrite, real_free = downloader_module.pwrite_all, disk_module.free_bytes

        def pwrite_all(fd, data, offset):
            if disk.full:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_pwrite(fd, data, offset)

        monkeypatch.setattr(downloader_module, "pwrite_all", pwrite_all)
        monkeypatch.setattr(disk_module, "free_bytes", lambda path: 4096 if disk.full else real_free(path))
    try:
        yield disk
    finally:
        if disk.real:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


@pytest.fixture
def thread_errors(monkeypatch):
    """Exceptions that escaped a thread (a raw traceback on the console)."""
    seen = []
    monkeypatch.setattr(threading, "excepthook", seen.append)
    return seen


def stamps(dest: Path, names) -> dict:
    return {n: (os.stat(dest / n).st_ino, os.stat(dest / n).st_mtime_ns) for n in names}


def test_too_little_space_fails_before_the_first_byte(small_disk, server, backup, settings):
    small_disk.fill(leave=10 * 2**20)
    dest = small_disk.path / "backup"
    with pytest.raises(FatalError, match="not enough free space") as err:
        transfer_backup(UrlListSource(server.part_urls()), dest, settings, fmt=FMT)
    assert str(dest) in err.value.message and "64.0 MiB margin" in err.value.message
    assert FIX.search(err.value.fix)
    if small_disk.real:
        assert FIX.search(err.value.fix).group(1) == str(small_disk.path)
    assert server.stats.body_bytes == 0


def test_disk_full_mid_download_keeps_everything_and_resumes(small_disk, backup, settings, thread_errors):
    dest = small_disk.path / "backup"
    chunk, connections = settings.chunk_size, settings.connections
    verified_when_full: dict = {}

    def fill_after_first_part(progress) -> None:
        if progress.parts_verified and not small_disk.full:
            names = [n for n, s in state_of(dest).items() if s["verified"]]
            verified_when_full.update(stamps(dest, names))
            small_disk.fill()

    with BackupServer(backup.directory, rate=256 * 1024) as server:  # slow enough to fill the disk mid-way
        with pytest.raises(FatalError) as err:
            transfer_backup(UrlListSource(server.part_urls()), dest, settings, fmt=FMT,
                            on_progress=fill_after_first_part)
        assert small_disk.full and verified_when_full
        message, fix = err.value.message, err.value.fix
        assert message.startswith(f"cannot write {dest}/") and "No space left on device (ENOSPC)" in message
        assert "the remaining parts need" in message and FIX.search(fix)
        assert not thread_errors  # every worker ended quietly; the step ended with this one error
        state = state_of(dest)
        assert all(state[n]["verified"] for n in verified_when_full)
        assert stamps(dest, verified_when_full) == verified_when_full
        first_run = server.stats.body_bytes

        small_disk.release()
        report = transfer_backup(UrlListSource(server.part_urls()), dest, settings, fmt=FMT)
        sent = server.stats.body_bytes
    assert_same_backup(dest, backup)
    assert stamps(dest, verified_when_full) == verified_when_full
    assert all(p.checks == ("verified-earlier",) for p in report.parts if p.name in verified_when_full)
    assert first_run < backup.total_size and sum(p.resumed_bytes for p in report.parts) > 0
    # Everything once, plus at most the one chunk each connection had in hand when the disk filled.
    assert sent <= backup.total_size + connections * chunk, (sent, backup.total_size)


@pytest.mark.sshd
def test_disk_full_during_the_mirror_repair(small_disk, server, backup, settings, sshd, monkeypatch, thread_errors):
    if not small_disk.real:
        pytest.skip("needs a real small file system (mounting a tmpfs is not permitted here)")
    mirror_dir = sshd.root / "mirror-full"
    mirror_dir.mkdir(exist_ok=True)
    for part in backup.parts:
        (mirror_dir / part.name).write_bytes(part.path.read_bytes())
    bad = backup.parts[2]
    server.faults.corrupt_part(bad.name)
    real_get = RemoteHost.get

    def get_then_fill(self, remote_path, local_path, *, offset=0, on_data=None):
        def fill_once(block):
            if not small_disk.full:
                small_disk.fill()  # the disk fills up while the copy runs
            on_data(block)
        return real_get(self, remote_path, local_path, offset=offset, on_data=fill_once)

    monkeypatch.setattr(RemoteHost, "get", get_then_fill)
    dest = small_disk.path / "backup"
    mirror = dict(mirror=lambda: RemoteHost(sshd.host, port=sshd.port, username=sshd.username,
                                            key_file=sshd.key_file, known_hosts=sshd.known_hosts),
                  mirror_path=str(mirror_dir))
    with pytest.raises(FatalError) as err:
        transfer_backup(UrlListSource(server.part_urls()), dest, settings, fmt=FMT, **mirror)
    tmp = dest / (bad.name + ".c2b-ssh")
    assert err.value.message.startswith(f"cannot write {tmp}: No space left on device")
    assert FIX.search(err.value.fix) and not thread_errors
    assert tmp.exists() and tmp.stat().st_mode & 0o777 == 0o600
    assert all(s["verified"] for n, s in state_of(dest).items() if n != bad.name)
    small_disk.release()
    monkeypatch.setattr(RemoteHost, "get", real_get)
    report = transfer_backup(UrlListSource(server.part_urls()), dest, settings, fmt=FMT, **mirror)
    assert_same_backup(dest, backup)
    fixed = next(p for p in report.parts if p.name == bad.name)
    assert fixed.source == "ssh" and fixed.resumed_bytes > 0
    assert (dest / bad.name).stat().st_mode & 0o777 == 0o600

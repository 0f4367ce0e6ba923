"""The downloader against the sandbox backup server on loopback: clean runs and every fault."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from connectors import platforms
from connectors.bitrix24.backup_source import Bitrix24BackupSource
from connectors.errors import FatalError, IntegrityError, RateLimitedError
from connectors.http_download import Downloader, UrlListSource, transfer_backup
from connectors.http_download.state import STATE_NAME, PartState, StateFile

FMT = platforms.get("bitrix24").format  # the sandbox makes its backups in this platform's format


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_same_backup(dest: Path, backup) -> None:
    for part in backup.parts:
        assert sha256(dest / part.name) == part.sha256, part.name
    whole = b"".join((dest / p.name).read_bytes() for p in backup.parts)
    assert hashlib.sha256(gzip.decompress(whole)).hexdigest() == backup.tar_sha256


def state_of(dest: Path) -> dict:
    return json.loads((dest / STATE_NAME).read_text())["parts"]


def test_clean_download_by_vendor_protocol_equals_original(server, backup, settings, tmp_path):
    source = Bitrix24BackupSource(server.info_url, server.licence_key, server.password)
    seen = []
    report = transfer_backup(source, tmp_path, settings, fmt=FMT, on_progress=seen.append)
    assert_same_backup(tmp_path, backup)
    assert [p.status for p in report.parts] == ["verified"] * len(backup.parts)
    assert all({"gzip-crc32-length", "bx-size"} <= set(p.checks) for p in report.parts)
    assert report.last_part == len(backup.parts) - 1
    assert all(s["verified"] for s in state_of(tmp_path).values())
    assert not list(tmp_path.glob("*.c2b-partial"))
    assert seen and seen[-1].done_bytes == backup.total_size
    # A second run finds everything verified and fetches nothing.
    before = server.stats.body_bytes
    again = transfer_backup(source, tmp_path, settings, fmt=FMT)
    assert server.stats.body_bytes == before
    assert all(p.checks == ("verified-earlier",) for p in again.parts)


def test_plain_urls_with_manifest_and_etag(server, backup, settings, tmp_path):
    report = transfer_backup(UrlListSource(server.part_urls(), manifest=server.manifest_url), tmp_path, settings,
                             fmt=FMT)
    assert_same_backup(tmp_path, backup)
    for part in report.parts:
        assert {"sha256-manifest", "md5-manifest", "md5-etag"} <= set(part.checks)


def test_manifest_mismatch_is_corruption(server, backup, settings, tmp_path):
    manifest = backup.manifest()
    bad = backup.parts[2].name
    manifest[bad] = dict(manifest[bad], sha256="0" * 64)
    with pytest.raises(IntegrityError, match=bad.replace(".", r"\.") + ".*sha256"):
        transfer_backup(UrlListSource(server.part_urls(), manifest=manifest), tmp_path, settings, fmt=FMT)
    assert not (tmp_path / bad).exists()


def test_dropped_connections_and_short_reads_are_resumed(server, backup, settings, tmp_path):
    server.faults.drop(after_bytes=10_000, times=3)
    report = transfer_backup(UrlListSource(server.part_urls()), tmp_path, settings, fmt=FMT)
    assert_same_backup(tmp_path, backup)
    assert server.faults.fired["drop"] == 3
    assert report.retries >= 3


def test_503_with_retry_after_is_retried(server, backup, settings, tmp_path):
    server.faults.unavailable(times=2, retry_after=0.2)
    server.faults.unavailable(times=1, retry_after=0.1, status=429)
    report = transfer_backup(UrlListSource(server.part_urls()), tmp_path, settings, fmt=FMT)
    assert_same_backup(tmp_path, backup)
    assert server.faults.fired["unavailable"] == 3
    assert report.retries >= 3


def test_wait_follows_retry_after_within_the_cap(tmp_path, settings):
    downloader = Downloader(tmp_path, settings, fmt=FMT)  # max_wait_s = 2

    def state(exc, attempt=1):
        return SimpleNamespace(outcome=SimpleNamespace(exception=lambda: exc), attempt_number=attempt)

    assert downloader._wait(state(RateLimitedError("busy", retry_after=1.5))) == 1.5
    assert downloader._wait(state(RateLimitedError("busy", retry_after=3600))) == 2  # capped, bounded
    assert 0 < downloader._wait(state(RateLimitedError("busy"), attempt=2)) <= 2


def test_ignored_range_once_is_retried(server, backup, settings, tmp_path):
    server.faults.ignore_range(times=1)
    report = transfer_backup(UrlListSource(server.part_urls()), tmp_path, settings, fmt=FMT)
    assert_same_backup(tmp_path, backup)
    assert server.faults.fired["ignore_range"] == 1 and report.retries >= 1


def test_server_that_ignores_range_is_refused(server, backup, settings, tmp_path):
    server.faults.ignore_range(times=None)
    with pytest.raises(FatalError, match="ignored Range"):
        transfer_backup(UrlListSource(server.part_urls()), tmp_path, settings, fmt=FMT)
    assert not any((tmp_path / p.name).exists() for p in backup.parts)


def test_html_error_page_is_never_written(server, backup, settings, tmp_path):
    server.faults.html_error(times=2)
    transfer_backup(UrlListSource(server.part_urls()), tmp_path, settings, fmt=FMT)
    assert_same_backup(tmp_path, backup)
    server.faults.html_error(times=None)
    with pytest.raises(FatalError, match="HTML page"):
        transfer_backup(UrlListSource(server.part_urls()), tmp_path / "again", settings, fmt=FMT)
    assert not any((tmp_path / "again" / p.name).exists() for p in backup.parts)


def test_corrupt_part_is_downloaded_again_once(server, backup, settings, tmp_path):
    bad = backup.parts[1].name
    server.faults.corrupt_part(bad, times=1)
    report = transfer_backup(UrlListSource(server.part_urls()), tmp_path, settings, fmt=FMT)
    assert_same_backup(tmp_path, backup)
    assert report.repaired == [bad]
    fixed = next(p for p in report.parts if p.name == bad)
    assert fixed.source == "http" and "corrupt" in fixed.error


def test_corrupt_part_is_never_marked_complete(server, backup, settings, tmp_path):
    bad = backup.parts[1].name
    server.faults.corrupt_part(bad)  # every time: the vendor's copy is bad
    with pytest.raises(IntegrityError) as err:
        transfer_backup(UrlListSource(server.part_urls()), tmp_path, settings, fmt=FMT)
    assert bad in err.value.message and "mirror" in err.value.fix
    assert not (tmp_path / bad).exists()
    assert state_of(tmp_path)[bad]["verified"] is False
    others = [p for p in backup.parts if p.name != bad]
    assert all(sha256(tmp_path / p.name) == p.sha256 for p in others)


def test_size_change_between_runs_restarts_the_part(server, backup, settings, tmp_path):
    part = backup.parts[2]
    # An earlier run of a *different* (bigger) part left chunks on disk: they must not be spliced in.
    old = PartState.new(part.name, part.size + 4096, settings.chunk_size)
    old.done = "1" * 3 + old.done[3:]
    StateFile(tmp_path).put(old)
    (tmp_path / (part.name + ".c2b-partial")).write_bytes(b"\xAA" * (part.size + 4096))
    report = transfer_backup(UrlListSource(server.part_urls()), tmp_path, settings, fmt=FMT)
    assert_same_backup(tmp_path, backup)
    result = next(p for p in report.parts if p.name == part.name)
    assert "size changed" in result.restarted and result.resumed_bytes == 0


def test_etag_change_between_runs_is_not_spliced(server, backup, settings, tmp_path):
    part = backup.parts[1]
    old = PartState.new(part.name, part.size, settings.chunk_size)
    old.done, old.etag = "1" * 2 + old.done[2:], '"0123456789abcdef0123456789abcdef"'
    StateFile(tmp_path).put(old)
    (tmp_path / (part.name + ".c2b-partial")).write_bytes(b"\x55" * part.size)
    report = transfer_backup(UrlListSource(server.part_urls()), tmp_path, settings, fmt=FMT)
    assert_same_backup(tmp_path, backup)
    assert part.name in report.repaired


def test_missing_and_extra_parts_are_named(server, backup, settings, tmp_path):
    last = backup.parts[-1].name
    with pytest.raises(IntegrityError, match=r"missing: " + last.replace(".", r"\.")):
        transfer_backup(UrlListSource(server.part_urls()[:-1]), tmp_path / "a", settings, fmt=FMT)
    middle = backup.parts[1].name
    urls = [u for u in server.part_urls() if not u.endswith("/" + middle)]
    with pytest.raises(IntegrityError, match=r"missing part\(s\): " + middle.replace(".", r"\.")):
        transfer_backup(UrlListSource(urls), tmp_path / "b", settings, fmt=FMT)
    extra = f"{backup.base}.{len(backup.parts)}"
    (backup.directory / extra).write_bytes(backup.parts[-1].path.read_bytes())
    try:
        with pytest.raises(IntegrityError, match=r"extra: " + extra.replace(".", r"\.")):
            transfer_backup(UrlListSource(server.part_urls()), tmp_path / "c", settings, fmt=FMT)
    finally:
        (backup.directory / extra).unlink()

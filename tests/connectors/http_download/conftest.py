"""Fixtures: one small multi-part backup per session, a fresh sandbox server per test."""

from __future__ import annotations

import pytest

from connectors.http_download import DownloadSettings
from sandbox.backup_maker import make_backup
from sandbox.backup_server import BackupServer


@pytest.fixture(scope="session")
def backup(tmp_path_factory):
    """4 parts (~1 MiB of tar each, the last one small), several gzip members per part."""
    return make_backup(tmp_path_factory.mktemp("backup"), total_bytes=3 * 2**20 + 100_000, part_size=2**20,
                       member_step=200 * 1024, seed=7)


@pytest.fixture
def server(backup):
    with BackupServer(backup.directory, rate=0) as srv:
        yield srv


@pytest.fixture
def settings():
    """Small chunks so every part is fetched by several connections at once; quick retries."""
    return DownloadSettings(connections=4, chunk_mib=0.125, show_progress=False, backoff_s=0.01, max_wait_s=2,
                            max_attempts=5, read_timeout_s=10)

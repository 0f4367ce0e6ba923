"""kill -9 in the middle of a download, start again (with the same or a smaller chunk size): it
resumes and re-fetches at most one chunk per connection per kill."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from connectors import platforms
from connectors.http_download import UrlListSource, transfer_backup
from connectors.http_download.state import STATE_NAME
from sandbox.backup_server import BackupServer

from .test_download import assert_same_backup

FMT = platforms.get("bitrix24").format  # the sandbox makes its backups in this platform's format
ROOT = Path(__file__).resolve().parents[3]
CHILD = """
import json, sys
from connectors import platforms
from connectors.http_download import DownloadSettings, UrlListSource, transfer_backup
urls, dest, chunk_mib, connections = json.loads(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
transfer_backup(UrlListSource(urls), dest, DownloadSettings(connections=connections, chunk_mib=chunk_mib,
                show_progress=False), fmt=platforms.get("bitrix24").format)
"""


def bytes_done(dest: Path) -> int:
    """Bytes on disk by the state file (``done`` lists byte ranges [start, end))."""
    try:
        parts = json.loads((dest / STATE_NAME).read_text())["parts"]
    except (FileNotFoundError, ValueError, KeyError):
        return 0
    return sum(end - start for p in parts.values() for start, end in p["done"])


# Chunk sizes (MiB) of the two killed runs and of the last one: a resumed download may change it.
@pytest.mark.parametrize("chunk_mibs", [(0.125, 0.125, 0.125), (0.125, 0.0625, 0.0625)], ids=["same", "smaller"])
def test_kill_9_and_restart_resumes(backup, settings, tmp_path, chunk_mibs):
    connections = 4
    chunk = int(chunk_mibs[0] * 2**20)
    with BackupServer(backup.directory, rate=300 * 1024) as server:  # slow enough to be killed mid-way
        urls = server.part_urls()
        for kill_after, chunk_mib in zip((3, 10), chunk_mibs):
            child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(urls), str(tmp_path), str(chunk_mib),
                                      str(connections)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            deadline = time.monotonic() + 60
            while bytes_done(tmp_path) < kill_after * chunk and child.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert child.poll() is None, child.stderr.read().decode()[-2000:]
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)
            assert child.returncode == -signal.SIGKILL
            # Whatever the kill left, no part carries its final name unless it was verified. The kill
            # may land between the rename and the state's "verified" (the part was verified in memory
            # just before): then the bytes under the final name are the good part, and the re-run checks
            # them again from disk without fetching.
            state = json.loads((tmp_path / STATE_NAME).read_text())["parts"]
            for part in backup.parts:
                final = tmp_path / part.name
                if final.exists() and not state[part.name]["verified"]:
                    assert hashlib.sha256(final.read_bytes()).hexdigest() == part.sha256, part.name
        settings = settings.model_copy(update={"connections": connections, "chunk_mib": chunk_mibs[-1]})
        report = transfer_backup(UrlListSource(urls), tmp_path, settings, fmt=FMT)
        sent = server.stats.body_bytes
    assert_same_backup(tmp_path, backup)
    assert sum(p.resumed_bytes for p in report.parts) > 0
    # The target: everything once, plus at most one chunk (of the killed run's size) per connection per kill.
    wasted = sum(connections * int(mib * 2**20) for mib in chunk_mibs[:2])
    assert sent <= backup.total_size + wasted, (sent, backup.total_size)

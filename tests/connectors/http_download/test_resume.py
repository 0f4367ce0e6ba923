"""kill -9 in the middle of a download, start again: it resumes and re-fetches at most one chunk
per connection per kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from connectors.http_download import UrlListSource, transfer_backup
from connectors.http_download.state import STATE_NAME
from sandbox.backup_server import BackupServer

from .test_download import assert_same_backup

ROOT = Path(__file__).resolve().parents[3]
CHILD = """
import json, sys
from connectors.http_download import DownloadSettings, UrlListSource, transfer_backup
urls, dest, chunk_mib, connections = json.loads(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
transfer_backup(UrlListSource(urls), dest, DownloadSettings(connections=connections, chunk_mib=chunk_mib,
                show_progress=False))
"""


def chunks_done(dest: Path) -> int:
    try:
        parts = json.loads((dest / STATE_NAME).read_text())["parts"]
    except (FileNotFoundError, ValueError, KeyError):
        return 0
    return sum(p["done"].count("1") for p in parts.values())


def test_kill_9_and_restart_resumes(backup, settings, tmp_path):
    connections, chunk_mib = 4, 0.125
    chunk = int(chunk_mib * 2**20)
    kills = 2
    with BackupServer(backup.directory, rate=300 * 1024) as server:  # slow enough to be killed mid-way
        urls = server.part_urls()
        for kill_after in (3, 10)[:kills]:
            child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(urls), str(tmp_path), str(chunk_mib),
                                      str(connections)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            deadline = time.monotonic() + 60
            while chunks_done(tmp_path) < kill_after and child.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert child.poll() is None, child.stderr.read().decode()[-2000:]
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)
            assert child.returncode == -signal.SIGKILL
            # Whatever the kill left, no part carries its final name unless it was verified.
            state = json.loads((tmp_path / STATE_NAME).read_text())["parts"]
            for part in backup.parts:
                if (tmp_path / part.name).exists():
                    assert state[part.name]["verified"]
        settings = settings.model_copy(update={"connections": connections, "chunk_mib": chunk_mib})
        report = transfer_backup(UrlListSource(urls), tmp_path, settings)
        sent = server.stats.body_bytes
    assert_same_backup(tmp_path, backup)
    assert sum(p.resumed_bytes for p in report.parts) > 0
    # The target: everything once, plus at most one chunk per connection per kill.
    assert sent <= backup.total_size + kills * connections * chunk, (sent, backup.total_size)

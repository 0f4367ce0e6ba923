"""How the downloader hands out work: whole chunks, then the tail shared out in pieces, and the
pieces put back together into whole chunks before anything is written."""

from __future__ import annotations

import heapq
import random
from itertools import pairwise
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from connectors import platforms
from connectors.http_download import DownloadSettings, UrlListSource, transfer_backup
from connectors.http_download.downloader import MIN_PIECE, Downloader, PartResult, _Job
from connectors.http_download.source import RemotePart
from connectors.http_download.state import PartState
from connectors.http_download.verify import PartVerifier
from sandbox.backup_server import BackupServer

from .test_download import assert_same_backup

FMT = platforms.get("bitrix24").format  # the sandbox makes its backups in this platform's format

MiB = 2**20


def jobs_for(sizes: list[int], chunk: int) -> list[_Job]:
    jobs = []
    for n, size in enumerate(sizes):
        name = f"b.tar.gz.{n}" if n else "b.tar.gz"
        st_ = PartState.new(name, size, chunk)
        nowhere = Path("/nonexistent")
        jobs.append(_Job(RemotePart(name, size, "http://127.0.0.1:9/x"), st_, nowhere, nowhere, -1,
                         PartVerifier(name, size, fmt=FMT), PartResult(name, size, "running")))
    return jobs


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 40 * MiB), min_size=1, max_size=6), chunk_mib=st.sampled_from([0.0625, 1, 8, 16]),
       connections=st.sampled_from([1, 4, 8, 16, 64]))
def test_work_tiles_every_part_once_and_the_tail_is_shared(tmp_path_factory, sizes, chunk_mib, connections):
    settings_ = DownloadSettings(connections=connections, chunk_mib=chunk_mib, show_progress=False)
    downloader = Downloader(tmp_path_factory.mktemp("dl"), settings_, fmt=FMT)
    downloader._window = lambda: 10**9  # no verification here: never wait for a cursor
    jobs = jobs_for(sizes, settings_.chunk_size)
    issued: dict[str, list[tuple[int, int]]] = {j.remote.name: [] for j in jobs}
    kinds = []
    while (item := downloader._next(jobs)) is not None:
        job, index, piece = item
        first, last = job.st.chunk_range(index)
        lo, hi = piece or (first, last)
        assert first <= lo <= hi <= last  # a piece never crosses a chunk border
        if piece is not None:
            assert hi - lo + 1 >= MIN_PIECE or hi == last
        kinds.append(piece is None)
        issued[job.remote.name].append((lo, hi))
    for job in jobs:
        ranges = sorted(issued[job.remote.name])
        assert ranges[0][0] == 0 and ranges[-1][1] == job.remote.size - 1
        assert all(a[1] + 1 == b[0] for a, b in pairwise(ranges))  # every byte once
    if sum(sizes) >= 2 * connections * settings_.chunk_size:
        assert kinds[0]  # plenty left: whole chunks; pieces only in the tail
    if settings_.chunk_size <= MIN_PIECE:
        assert all(kinds)  # chunks no bigger than a piece are never cut


def test_pieces_are_put_together_in_order_before_the_chunk_is_returned(tmp_path):
    data = random.Random(5).randbytes(3 * MiB)
    settings_ = DownloadSettings(connections=8, chunk_mib=2, show_progress=False)
    downloader = Downloader(tmp_path, settings_, fmt=FMT)
    job = jobs_for([len(data)], settings_.chunk_size)[0]

    def fake_range(session, job, start, end, blocks):
        blocks.append(data[start:end + 1])

    downloader._get_range = fake_range
    first, last = job.st.chunk_range(0)
    cuts = [(first, first + MIN_PIECE - 1), (first + MIN_PIECE, first + 3 * MIN_PIECE - 1),
            (first + 3 * MIN_PIECE, last)]
    random.Random(1).shuffle(cuts)  # pieces arrive in any order
    results = [downloader._fetch(None, job, 0, piece) for piece in cuts]
    assert results[:2] == [None, None]
    assert b"".join(results[2]) == data[first:last + 1]
    assert job.pieces == {}


def test_download_with_a_shared_tail_is_exact(backup, tmp_path):
    """Chunks bigger than the pieces: the last chunks are fetched by several connections."""
    with BackupServer(backup.directory, rate=2 * MiB) as server:
        settings_ = DownloadSettings(connections=8, chunk_mib=1, show_progress=False, backoff_s=0.01)
        report = transfer_backup(UrlListSource(server.part_urls()), tmp_path, settings_, fmt=FMT)
        sent = server.stats.body_bytes
    assert all(p.status == "verified" for p in report.parts)
    assert_same_backup(tmp_path, backup)
    assert sent == backup.total_size  # pieces overlap nowhere: each byte is sent once


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 120 * MiB), min_size=1, max_size=8), connections=st.sampled_from([4, 16, 64]))
def test_connections_finish_together(tmp_path_factory, sizes, connections):
    """Connections of equal speed (the throttled cloud) in simulated time: when there is work for
    two chunks per connection, none waits at the end longer than it takes to fetch two pieces."""
    settings_ = DownloadSettings(connections=connections, show_progress=False)
    if sum(sizes) < 2 * connections * settings_.chunk_size:
        return
    downloader = Downloader(tmp_path_factory.mktemp("dl"), settings_, fmt=FMT)
    downloader._window = lambda: 10**9
    jobs = jobs_for(sizes, settings_.chunk_size)
    now, running, idle_since = 0.0, [], {}
    free = list(range(connections))
    while free or running:
        while free:
            conn = free.pop()
            item = downloader._next(jobs)
            if item is None:
                idle_since[conn] = now
                continue
            job, index, piece = item
            lo, hi = piece or job.st.chunk_range(index)
            heapq.heappush(running, (now + (hi - lo + 1), conn))  # 1 byte per time unit
        if running:
            now, conn = heapq.heappop(running)
            free.append(conn)
    assert max(idle_since.values()) - min(idle_since.values()) <= 2 * MIN_PIECE

"""Parallel, resumable, verifying download of backup parts over HTTP Range.

N worker threads, each with its own ``requests.Session`` (one connection each), take chunks in
order across and within parts; near the end the last chunks are handed out in pieces, so every
connection stays busy until the end. A chunk's blocks are written with ``pwrite`` as they arrive;
the whole chunk is fsynced, then marked done in the state file, then handed to the part's
verifier, which consumes chunks in file order (out-of-order chunks wait in memory; a window of
two chunks per connection bounds how far ahead the fetches may run). A part is renamed to its
final name only after every check passed, and then marked verified (a kill between the two
leaves a verified part the next run checks again from disk); a part that fails is reported
``corrupt`` and never gets its final name.

Chunks written by an earlier, killed process are read back once for hashing (a hash state
cannot be saved); nothing downloaded in this process is read twice.

The disk: free space is checked before the first byte; a write that fails (disk full, I/O
error) stops every worker and ends the download with one FatalError naming the path, the space
still needed and the fix (:mod:`.disk`). What was fsynced stays marked done, nothing verified is
undone, and parts, partials and the state file are created 0600 in a 0700 directory.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import requests
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt
from tqdm import tqdm

from connectors.errors import FatalError, IntegrityError, MigrationError, TransientError
from connectors.platform import BackupFormat
from connectors.retry import backoff_wait
from connectors.secrets import redact

from .configuration import DownloadSettings
from .disk import check_free_space, make_private_dir, open_private, pwrite_all, write_error
from .http import (HtmlErrorPage, PartChangedError, RangeIgnoredError, ShortReadError, classify_response,
                   looks_like_html, map_requests_errors)
from .source import RemotePart
from .state import PartState, StateFile, fsync_dir
from .verify import PartVerifier, etag_md5

log = logging.getLogger("cloud2box.download")
PARTIAL_SUFFIX = ".c2b-partial"
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
MIN_PIECE = 256 * 1024  # the smallest range fetched when the last chunks are shared out


@dataclass
class PartResult:
    """The evidence of one part."""

    name: str
    size: int
    status: str  # verified | corrupt
    sha256: str = ""
    md5: str = ""
    source: str = "http"
    retries: int = 0
    duration_s: float = 0.0
    bytes_fetched: int = 0  # bytes received in this run (retries and re-fetches included)
    resumed_bytes: int = 0  # bytes already on disk from an earlier run
    checks: tuple[str, ...] = ()
    error: str = ""
    restarted: str = ""  # why the part was started from zero (size or ETag changed)

    @property
    def throughput_bps(self) -> float:
        return self.bytes_fetched / self.duration_s if self.duration_s > 0 else 0.0

    def evidence(self) -> dict:
        return {"name": self.name, "size": self.size, "status": self.status, "sha256": self.sha256, "md5": self.md5,
                "source": self.source, "retries": self.retries, "duration_s": round(self.duration_s, 3),
                "bytes_fetched": self.bytes_fetched, "resumed_bytes": self.resumed_bytes,
                "throughput_bps": round(self.throughput_bps), "checks": list(self.checks),
                "error": self.error, "restarted": self.restarted}


@dataclass(frozen=True)
class Progress:
    """A progress report: bytes on disk, total, current rate and the ETA (None when unknown)."""

    done_bytes: int
    total_bytes: int
    rate_bps: float
    eta_s: float | None
    parts_verified: int
    parts_total: int


class _Aborted(Exception):
    """Internal: another worker failed; stop quietly."""


@dataclass
class _Job:
    remote: RemotePart
    st: PartState
    partial: Path
    final: Path
    fd: int
    verifier: PartVerifier
    result: PartResult
    disk: set[int] = field(default_factory=set)
    pending: dict[int, list[bytes]] = field(default_factory=dict)  # chunk → its blocks, until verified
    pieces: dict[int, dict[int, list[bytes]]] = field(default_factory=dict)  # chunk → {offset: blocks}, tail only
    cursor: int = 0
    next_issue: int = 0
    split_at: int = 0  # bytes of chunk next_issue already handed out as pieces
    status: str = "running"
    started: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    feed_lock: threading.Lock = field(default_factory=threading.Lock)


class Downloader:
    """Download parts into ``dest_dir``; see the module docstring.

    Args:
        settings: connections, chunk size, timeouts, retry bounds.
        fmt: the platform's backup format, which the parts' verifiers read their headers with.
        session_factory: makes one ``requests.Session`` per connection (tests plug in here).
        on_progress: called about twice a second with a :class:`Progress`.
    Raises:
        FatalError: ``dest_dir`` cannot be created (it is created 0700), or its state file is
            from a newer release.
    """

    def __init__(self, dest_dir: str | Path, settings: DownloadSettings | None = None, *, fmt: BackupFormat,
                 session_factory: Callable[[], requests.Session] = requests.Session,
                 on_progress: Callable[[Progress], None] | None = None) -> None:
        self.dest = Path(dest_dir)
        self.fmt = fmt
        try:
            make_private_dir(self.dest)
        except OSError as exc:
            raise write_error(self.dest, exc, self.dest, None) from None
        self.settings = settings or DownloadSettings()
        self.session_factory = session_factory
        self.on_progress = on_progress
        self.state = StateFile(self.dest)
        self._parts: list[RemotePart] = []
        self._jobs: dict[str, _Job] = {}
        self._cond = threading.Condition()
        self._abort: BaseException | None = None
        self._received = 0
        self._received_lock = threading.Lock()

    # -- public -----------------------------------------------------------------------------
    def abort(self, exc: BaseException) -> None:
        """Stop every worker; :meth:`download` raises ``exc``."""
        with self._cond:
            if self._abort is None:
                self._abort = exc
            self._cond.notify_all()

    def reset_part(self, name: str) -> None:
        """Forget a part: its next download starts from zero (used before a re-download)."""
        st = self.state.get(name)
        try:
            if st is not None:
                self.state.put(PartState.new(name, st.size, self.settings.chunk_size, restarts=st.restarts + 1))
            for path in (self.dest / name, self.dest / (name + PARTIAL_SUFFIX)):
                path.unlink(missing_ok=True)
        except OSError as exc:
            raise write_error(self.dest / name, exc, self.dest, None) from None

    def download(self, parts: list[RemotePart]) -> list[PartResult]:
        """Fetch and verify ``parts``; return one :class:`PartResult` each (verified or corrupt).

        Raises the first fatal error, or a TransientError when a chunk's retries ran out; the
        state file keeps everything verified or written so far for the next run. Too little free
        space (checked before the first byte) or any failed write ends it with one FatalError
        naming the path, the space still needed and the fix; nothing verified or fsynced is undone.
        """
        self._abort = None
        self._received = 0
        self._parts, self._jobs = list(parts), {}
        jobs: list[_Job] = []
        try:
            for part in parts:
                try:
                    jobs.append(self._prepare(part))
                except OSError as exc:
                    raise self._disk_error(exc, self.dest / (part.name + PARTIAL_SUFFIX)) from None
                self._jobs[part.name] = jobs[-1]
            running = [j for j in jobs if j.status == "running"]
            check_free_space(self.dest, self._still_to_write())
            for job in running:  # chunks left on disk by a killed run: hash them once, in order
                try:
                    self._drain(job)
                except OSError as exc:
                    raise self._disk_error(exc, job.partial, "read") from None
            self._run_workers(running, jobs)
        finally:
            for job in jobs:
                if job.fd >= 0:
                    os.close(job.fd)
                    job.fd = -1
        if self._abort is not None:
            raise self._abort
        return [j.result for j in jobs]

    def _still_to_write(self) -> int:
        """Bytes this download still has to put on disk (the pre-flight and disk errors say it)."""
        total = 0
        for part in self._parts:
            job = self._jobs.get(part.name)
            if job is None:
                total += part.size
            elif job.status != "verified":
                total += part.size - job.st.bytes_done()
        return total

    def _disk_error(self, exc: OSError, path: Path, action: str = "write") -> FatalError:
        return write_error(path, exc, self.dest, self._still_to_write(), action)

    # -- preparation ------------------------------------------------------------------------
    def _prepare(self, remote: RemotePart) -> _Job:
        name = remote.name
        final, partial = self.dest / name, self.dest / (name + PARTIAL_SUFFIX)
        st = self.state.get(name)
        restarted = ""
        complete = final.is_file() and final.stat().st_size == remote.size
        if st and st.verified and st.size == remote.size and complete:
            result = PartResult(name, remote.size, "verified", sha256=st.sha256, md5=st.md5, source=st.source,
                                resumed_bytes=remote.size, checks=("verified-earlier",))
            return _Job(remote, st, partial, final, -1, PartVerifier(name, remote.size, fmt=self.fmt), result,
                        status="verified")
        chunk_size = self.settings.chunk_size
        if st and st.size != remote.size:
            restarted = f"size changed from {st.size} to {remote.size} bytes since the last run"
            log.warning("part %s: %s; starting it again from zero", name, restarted)
        if not restarted and complete and not partial.is_file():
            # Renamed after verification, but the state does not say so (killed or disk full before the
            # state was saved, or the state file was lost): check it again from disk, fetch nothing.
            log.info("part %s is complete on disk but not marked verified: checking it again", name)
            os.replace(final, partial)
            st = PartState.new(name, remote.size, chunk_size, restarts=st.restarts if st else 0)
            st.done = "1" * st.chunks
            self.state.put(st)
        elif st is None or restarted or st.verified or not partial.is_file():
            st = PartState.new(name, remote.size, chunk_size, restarts=(st.restarts + 1) if st else 0)
            partial.unlink(missing_ok=True)
            final.unlink(missing_ok=True)
            self.state.put(st)
        elif st.chunk_size != chunk_size:  # the byte ranges on disk are kept, whole chunks of the new size
            log.info("part %s: resuming in chunks of %d bytes (was %d)", name, chunk_size, st.chunk_size)
            st = st.rechunk(chunk_size)
            self.state.put(st)
        fd = open_private(partial, os.O_RDWR)
        try:
            if os.fstat(fd).st_size != remote.size:
                os.ftruncate(fd, remote.size)
        except OSError:
            os.close(fd)
            raise
        verifier = PartVerifier(name, remote.size, fmt=self.fmt, sha256=remote.sha256, md5=remote.md5,
                                etag_md5=etag_md5(st.etag))
        disk = {i for i, c in enumerate(st.done) if c == "1"}
        result = PartResult(name, remote.size, "running", resumed_bytes=st.bytes_done(), restarted=restarted)
        return _Job(remote, st, partial, final, fd, verifier, result, disk=disk, started=time.monotonic())

    # -- scheduling -------------------------------------------------------------------------
    def _window(self) -> int:
        """Chunks fetched or being fetched but not yet verified, over all parts: each is held in
        memory until the verifier takes it, so this bounds the memory (two chunks per connection)
        and holds the network back when verification is the slower side."""
        return 2 * self.settings.connections

    @staticmethod
    def _held(job: _Job) -> int:
        """Chunks of ``job`` issued ahead of its verifier (those on disk from a killed run excepted)."""
        return job.next_issue - job.cursor - sum(1 for i in job.disk if job.cursor <= i < job.next_issue)

    def _next(self, jobs: list[_Job]) -> tuple[_Job, int, tuple[int, int] | None] | None:
        """The next work: ``(job, chunk, None)`` for a whole chunk, or ``(job, chunk, (start, end))``
        for a piece of one. Once less than a chunk per connection is left to hand out, chunks are
        shared out in pieces of about 1/connections of what is left, so every connection keeps
        working to the end instead of a few fetching the last chunks while the others wait."""
        with self._cond:
            while True:
                if self._abort is not None:
                    return None
                left = False
                held = sum(self._held(j) for j in jobs if j.status == "running")
                for job in jobs:
                    if job.status != "running":
                        continue
                    while job.next_issue < job.st.chunks and job.next_issue in job.disk:
                        job.next_issue += 1
                    if job.next_issue >= job.st.chunks:
                        continue
                    left = True
                    if held < self._window():
                        return self._issue(job, self._piece_size(jobs))
                if not left:
                    return None
                self._cond.wait(0.5)

    def _piece_size(self, jobs: list[_Job]) -> int:
        """Bytes to hand out now: a whole chunk, or a share of the tail (see :meth:`_next`)."""
        chunk, connections = self.settings.chunk_size, self.settings.connections
        unissued = 0
        for job in jobs:
            if job.status == "running" and job.next_issue < job.st.chunks:
                start = job.st.chunk_range(job.next_issue)[0] + job.split_at
                on_disk = sum(e - s + 1 for s, e in (job.st.chunk_range(i) for i in job.disk if i > job.next_issue))
                unissued += job.st.size - start - on_disk  # in bytes: the last chunk of each part is short
                if unissued >= connections * chunk:
                    return chunk
        share = -(-unissued // connections)
        return min(chunk, max(MIN_PIECE, -(-share // 65536) * 65536))

    @staticmethod
    def _issue(job: _Job, piece: int) -> tuple[_Job, int, tuple[int, int] | None]:
        index = job.next_issue
        start, end = job.st.chunk_range(index)
        if job.split_at == 0 and piece >= end - start + 1:
            job.next_issue += 1
            return job, index, None
        lo = start + job.split_at
        hi = min(end, lo + piece - 1)
        if hi >= end:
            job.next_issue, job.split_at = index + 1, 0
        else:
            job.split_at += hi - lo + 1
        return job, index, (lo, hi)

    def _run_workers(self, running: list[_Job], jobs: list[_Job]) -> None:
        todo = sum(j.st.chunks - len(j.disk) for j in running)
        total = sum(j.remote.size for j in jobs)
        base_done = sum(j.result.resumed_bytes for j in jobs)
        n_threads = min(self.settings.connections, todo)
        finished = threading.Semaphore(0)

        def work() -> None:
            try:
                self._worker(running)
            except BaseException as exc:  # never a raw traceback from a thread: download() raises it
                self.abort(exc)
            finally:
                finished.release()

        threads = [threading.Thread(target=work, name=f"download-{i}", daemon=True) for i in range(n_threads)]
        bar = tqdm(total=total, initial=base_done, unit="B", unit_scale=True, unit_divisor=1024, desc="backup",
                   disable=not self.settings.show_progress, leave=False)
        for t in threads:
            t.start()
        samples: list[tuple[float, int]] = [(time.monotonic(), 0)]
        shown = 0
        try:
            left = n_threads
            while left:
                if finished.acquire(timeout=0.5):  # wake at once when a worker ends, else report progress
                    left -= 1
                received = self._received
                bar.update(min(received, total - base_done) - shown)
                shown = min(received, total - base_done)
                self._report(jobs, base_done + shown, total, samples, received)
        finally:
            bar.close()
            for t in threads:
                t.join()
        self._report(jobs, base_done + min(self._received, total - base_done), total, samples, self._received)

    def _report(self, jobs, done, total, samples, received) -> None:
        now = time.monotonic()
        samples.append((now, received))
        while len(samples) > 2 and now - samples[0][0] > 10:  # rate over the last ~10 s
            samples.pop(0)
        dt = now - samples[0][0]
        rate = (received - samples[0][1]) / dt if dt > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else None
        if self.on_progress:
            verified = sum(1 for j in jobs if j.status == "verified")
            try:
                self.on_progress(Progress(done, total, rate, eta, verified, len(jobs)))
            except Exception as exc:  # a progress display must never stop a download
                log.debug("progress callback failed: %s", exc)

    # -- workers ----------------------------------------------------------------------------
    def _worker(self, jobs: list[_Job]) -> None:
        session = self.session_factory()
        try:
            while True:
                item = self._next(jobs)
                if item is None:
                    return
                job, index, piece = item
                try:
                    data = self._fetch(session, job, index, piece)
                except _Aborted:
                    return
                except PartChangedError as exc:
                    self._fail_part(job, exc)
                    continue
                except MigrationError as exc:
                    self.abort(exc)
                    return
                except BaseException as exc:  # a bug must not leave the other workers waiting
                    self.abort(exc)
                    return
                if data is None or job.status != "running":  # None: a piece; the chunk is not whole yet
                    continue
                try:  # _get_range wrote the bytes as they came
                    os.fdatasync(job.fd)  # on disk before the state says so (size was set up front)
                    self.state.mark_done(job.remote.name, index)
                except OSError as exc:  # disk full or failing: one clear error; what is on disk stays
                    self.abort(self._disk_error(exc, job.partial))
                    return
                with job.lock:
                    job.pending[index] = data
                try:
                    self._drain(job)
                except OSError as exc:
                    self.abort(self._disk_error(exc, job.partial, "read"))
                    return
        finally:
            session.close()

    def _wait(self, rs: RetryCallState) -> float:
        exc = rs.outcome.exception() if rs.outcome else None
        return backoff_wait(exc, rs.attempt_number, base=self.settings.backoff_s, cap=self.settings.max_wait_s,
                            max_wait=self.settings.max_wait_s, jitter=True)

    def _fetch(self, session: requests.Session, job: _Job, index: int,
               piece: tuple[int, int] | None = None) -> list[bytes] | None:
        """Fetch chunk ``index`` (or one ``piece`` of it), writing it as it arrives (not fsynced);
        return the whole chunk as the blocks received, or None while other pieces of the chunk are
        still being fetched (the chunk is fsynced and marked done only once it is whole)."""
        start, end = piece or job.st.chunk_range(index)
        blocks: list[bytes] = []  # as received, never joined: written and verified block by block

        def count_retry(rs: RetryCallState) -> None:
            job.result.retries += 1
            log.info("part %s bytes %d-%d: %s; retry %d", job.remote.name, start, end,
                     redact(rs.outcome.exception()), rs.attempt_number)

        retrying = Retrying(stop=stop_after_attempt(self.settings.max_attempts), wait=self._wait,
                            retry=retry_if_exception_type(TransientError), before_sleep=count_retry, reraise=True)
        try:
            for attempt in retrying:
                with attempt:
                    if self._abort is not None:
                        raise _Aborted()
                    self._get_range(session, job, start + sum(map(len, blocks)), end, blocks)
        except RangeIgnoredError as exc:
            raise FatalError(f"{exc.message}, {self.settings.max_attempts} times in a row",
                             fix="the server cannot resume downloads; use another URL or the SSH mirror") from None
        except HtmlErrorPage as exc:
            raise FatalError(f"{exc.message}, {self.settings.max_attempts} times in a row",
                             fix="open the URL in a browser to read the page; the link may have expired") from None
        except TransientError as exc:
            raise TransientError(f"{exc.message} (gave up after {self.settings.max_attempts} attempts)",
                                 fix="re-run the step: it resumes where it stopped") from None
        if piece is None:
            return blocks
        first, last = job.st.chunk_range(index)
        with job.lock:
            if job.status != "running":
                job.pieces.clear()
                return None
            got = job.pieces.setdefault(index, {})
            got[start] = blocks
            if sum(len(b) for bs in got.values() for b in bs) < last - first + 1:
                return None
            del job.pieces[index]
        return [b for offset in sorted(got) for b in got[offset]]

    def _get_range(self, session: requests.Session, job: _Job, start: int, end: int, blocks: list[bytes]) -> None:
        name = job.remote.name
        what = f"part {name} bytes {start}-{end}"
        headers = dict(job.remote.headers)
        headers["Range"] = f"bytes={start}-{end}"
        headers["Accept-Encoding"] = "identity"  # Range offsets are of the stored bytes
        timeout = (self.settings.connect_timeout_s, self.settings.read_timeout_s)
        with map_requests_errors(what):
            resp = session.get(job.remote.url, headers=headers, stream=True, timeout=timeout)
            try:
                classify_response(resp, what=what)
                ctype = resp.headers.get("Content-Type")
                if resp.status_code == 200:
                    first = resp.raw.read(512) or b""
                    if looks_like_html(ctype, first):
                        raise HtmlErrorPage(f"{what}: the server sent an HTML page (HTTP 200) instead of the data")
                    raise RangeIgnoredError(f"{what}: the server ignored Range (HTTP 200 instead of 206)")
                if resp.status_code != 206:
                    raise FatalError(f"{what}: unexpected HTTP {resp.status_code}")
                if looks_like_html(ctype):
                    raise HtmlErrorPage(f"{what}: the server sent an HTML page instead of the data")
                m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
                if not m:
                    raise TransientError(f"{what}: 206 without a valid Content-Range")
                if m.group(3) != "*" and int(m.group(3)) != job.st.size:
                    raise PartChangedError(f"part {name} is now {m.group(3)} bytes on the server, "
                                           f"{job.st.size} when the download started",
                                           fix="the part is fetched again from zero (never spliced)")
                if int(m.group(1)) != start or int(m.group(2)) != end:
                    raise TransientError(f"{what}: the server sent bytes {m.group(1)}-{m.group(2)}")
                self._check_etag(job, resp.headers.get("ETag"))
                want = end - start + 1
                got = 0
                for block in resp.iter_content(256 * 1024):
                    got += len(block)
                    if got > want:
                        raise TransientError(f"{what}: the server sent more bytes than the range")
                    try:  # on disk as it arrives (the page cache fills while we wait for the network);
                        pwrite_all(job.fd, block, start + got - len(block))  # fsynced with the whole chunk
                    except OSError as exc:
                        raise self._disk_error(exc, job.partial) from None
                    blocks.append(block)
                    job.result.bytes_fetched += len(block)
                    with self._received_lock:
                        self._received += len(block)
                if got < want:
                    raise ShortReadError(f"{what}: short read, {got} of {want} bytes")
            finally:
                resp.close()

    def _check_etag(self, job: _Job, etag: str | None) -> None:
        if not etag:
            return
        with job.lock:
            if not job.st.etag:
                job.st.etag = etag
                self.state.update(job.remote.name, etag=etag)
                job.verifier.etag_md5 = etag_md5(etag)
            elif job.st.etag != etag:
                raise PartChangedError(f"part {job.remote.name} changed on the server (ETag {etag}, was {job.st.etag})",
                                       fix="the part is fetched again from zero (never spliced)")

    # -- verification -----------------------------------------------------------------------
    def _drain(self, job: _Job) -> None:
        """Feed the verifier every chunk that is next in file order; finish the part at the end."""
        while True:
            if not job.feed_lock.acquire(blocking=False):
                return  # another thread is feeding; it re-checks for our chunk before it leaves
            try:
                while job.status == "running" and job.cursor < job.st.chunks:
                    with job.lock:
                        data = job.pending.pop(job.cursor, None)
                    if data is None:
                        if job.cursor not in job.disk:
                            break
                        start, end = job.st.chunk_range(job.cursor)
                        data = [os.pread(job.fd, end - start + 1, start)]
                    try:
                        for block in data:
                            job.verifier.update(block)
                    except IntegrityError as exc:
                        self._fail_part(job, exc)
                        break
                    job.cursor += 1
                    with self._cond:
                        self._cond.notify_all()
                if job.status == "running" and job.cursor >= job.st.chunks:
                    self._finish_part(job)
            finally:
                job.feed_lock.release()
            with job.lock:
                again = job.status == "running" and job.cursor in job.pending
            if not again:
                return

    def _finish_part(self, job: _Job) -> None:
        try:
            res = job.verifier.finish()
        except IntegrityError as exc:
            self._fail_part(job, exc)
            return
        try:
            os.fsync(job.fd)
            os.replace(job.partial, job.final)
            fsync_dir(self.dest)
            self.state.update(job.remote.name, verified=True, sha256=res.sha256, md5=res.md5, source="http")
        except OSError as exc:  # the next run finds the part complete on disk and checks it again
            job.status = "stopped"
            self.abort(self._disk_error(exc, job.partial))
            return
        r = job.result
        r.status, r.sha256, r.md5, r.checks = "verified", res.sha256, res.md5, res.checks
        r.duration_s = time.monotonic() - job.started
        job.status = "verified"
        log.info("part %s verified: %d bytes, sha256 %s", job.remote.name, res.size, res.sha256)
        with self._cond:
            self._cond.notify_all()

    def _fail_part(self, job: _Job, exc: MigrationError) -> None:
        with job.lock:
            if job.status != "running":
                return
            job.status = "corrupt"
            job.pending.clear()
        job.result.status = "corrupt"
        job.result.error = exc.message
        job.result.duration_s = time.monotonic() - job.started
        log.warning("%s", redact(exc.message))
        with self._cond:
            self._cond.notify_all()

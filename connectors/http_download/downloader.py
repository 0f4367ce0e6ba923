"""Parallel, resumable, verifying download of backup parts over HTTP Range.

N worker threads, each with its own ``requests.Session`` (one connection each), take chunks in
order across and within parts. A chunk is written with ``pwrite`` and fsynced, then marked done
in the state file, then handed to the part's verifier, which consumes chunks in file order
(out-of-order chunks wait in memory; a window bounds how far ahead a part may run). A part is
renamed to its final name and marked verified only after every check passed; a part that
fails is reported ``corrupt`` and never gets its final name.

Chunks written by an earlier, killed process are read back once for hashing (a hash state
cannot be saved); nothing downloaded in this process is read twice.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import requests
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt
from tqdm import tqdm

from connectors.bitrix24.backup_format import PartHeader
from connectors.errors import FatalError, IntegrityError, MigrationError, RateLimitedError, TransientError
from connectors.secrets import redact

from .configuration import DownloadSettings
from .http import (HtmlErrorPage, PartChangedError, RangeIgnoredError, ShortReadError, classify_response,
                   looks_like_html, map_requests_errors)
from .source import RemotePart
from .state import PartState, StateFile, fsync_dir
from .verify import PartVerifier, etag_md5

log = logging.getLogger("cloud2box.download")
PARTIAL_SUFFIX = ".c2b-partial"
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


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
    pending: dict[int, bytes] = field(default_factory=dict)
    cursor: int = 0
    next_issue: int = 0
    status: str = "running"
    started: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    feed_lock: threading.Lock = field(default_factory=threading.Lock)


class Downloader:
    """Download parts into ``dest_dir``; see the module docstring.

    Args:
        settings: connections, chunk size, timeouts, retry bounds.
        session_factory: makes one ``requests.Session`` per connection (tests plug in here).
        on_progress: called about twice a second with a :class:`Progress`.
        on_header: called as ``on_header(part_name, PartHeader)`` when a part's header is read.
    """

    def __init__(self, dest_dir: str | Path, settings: DownloadSettings | None = None, *,
                 session_factory: Callable[[], requests.Session] = requests.Session,
                 on_progress: Callable[[Progress], None] | None = None,
                 on_header: Callable[[str, PartHeader], None] | None = None) -> None:
        self.dest = Path(dest_dir)
        self.dest.mkdir(parents=True, exist_ok=True)
        self.settings = settings or DownloadSettings()
        self.session_factory = session_factory
        self.on_progress = on_progress
        self.on_header = on_header
        self.state = StateFile(self.dest)
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
        if st is not None:
            self.state.put(PartState.new(name, st.size, st.chunk_size, restarts=st.restarts + 1))
        for path in (self.dest / name, self.dest / (name + PARTIAL_SUFFIX)):
            path.unlink(missing_ok=True)

    def download(self, parts: list[RemotePart]) -> list[PartResult]:
        """Fetch and verify ``parts``; return one :class:`PartResult` each (verified or corrupt).

        Raises the first fatal error, or a TransientError when a chunk's retries ran out; the
        state file keeps everything verified or written so far for the next run.
        """
        self._abort = None
        self._received = 0
        jobs = [self._prepare(p) for p in parts]
        running = [j for j in jobs if j.status == "running"]
        try:
            for job in running:  # chunks left on disk by a killed run: hash them once, in order
                self._drain(job)
            self._run_workers(running, jobs)
        finally:
            for job in running:
                if job.fd >= 0:
                    os.close(job.fd)
                    job.fd = -1
        if self._abort is not None:
            raise self._abort
        return [j.result for j in jobs]

    # -- preparation ------------------------------------------------------------------------
    def _prepare(self, remote: RemotePart) -> _Job:
        name = remote.name
        final, partial = self.dest / name, self.dest / (name + PARTIAL_SUFFIX)
        st = self.state.get(name)
        restarted = ""
        if st and st.verified and st.size == remote.size and final.is_file() and final.stat().st_size == remote.size:
            result = PartResult(name, remote.size, "verified", sha256=st.sha256, md5=st.md5, source=st.source,
                                resumed_bytes=remote.size, checks=("verified-earlier",))
            return _Job(remote, st, partial, final, -1, PartVerifier(name, remote.size), result, status="verified")
        if st and st.size != remote.size:
            restarted = f"size changed from {st.size} to {remote.size} bytes since the last run"
            log.warning("part %s: %s; starting it again from zero", name, restarted)
        if st is None or restarted or st.verified or not partial.is_file():
            st = PartState.new(name, remote.size, self.settings.chunk_size, restarts=(st.restarts + 1) if st else 0)
            partial.unlink(missing_ok=True)
            final.unlink(missing_ok=True)
            self.state.put(st)
        fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(fd).st_size != remote.size:
            os.ftruncate(fd, remote.size)
        verifier = PartVerifier(name, remote.size, sha256=remote.sha256, md5=remote.md5, etag_md5=etag_md5(st.etag),
                                on_header=(lambda h, n=name: self.on_header(n, h)) if self.on_header else None)
        disk = {i for i, c in enumerate(st.done) if c == "1"}
        result = PartResult(name, remote.size, "running", resumed_bytes=st.bytes_done(), restarted=restarted)
        return _Job(remote, st, partial, final, fd, verifier, result, disk=disk, started=time.monotonic())

    # -- scheduling -------------------------------------------------------------------------
    def _window(self) -> int:
        return self.settings.connections + 2

    def _next(self, jobs: list[_Job]) -> tuple[_Job, int] | None:
        with self._cond:
            while True:
                if self._abort is not None:
                    return None
                left = False
                for job in jobs:
                    if job.status != "running":
                        continue
                    while job.next_issue < job.st.chunks and job.next_issue in job.disk:
                        job.next_issue += 1
                    if job.next_issue >= job.st.chunks:
                        continue
                    left = True
                    if job.next_issue - job.cursor < self._window():
                        job.next_issue += 1
                        return job, job.next_issue - 1
                if not left:
                    return None
                self._cond.wait(0.5)

    def _run_workers(self, running: list[_Job], jobs: list[_Job]) -> None:
        todo = sum(j.st.chunks - len(j.disk) for j in running)
        total = sum(j.remote.size for j in jobs)
        base_done = sum(j.result.resumed_bytes for j in jobs)
        n_threads = min(self.settings.connections, todo)
        finished = threading.Semaphore(0)

        def work() -> None:
            try:
                self._worker(running)
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
                job, index = item
                try:
                    data = self._fetch(session, job, index)
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
                if job.status != "running":
                    continue
                start, _ = job.st.chunk_range(index)
                os.pwrite(job.fd, data, start)
                os.fdatasync(job.fd)  # on disk before the state says so (size was set up front)
                self.state.mark_done(job.remote.name, index)
                with job.lock:
                    job.pending[index] = data
                self._drain(job)
        finally:
            session.close()

    def _wait(self, rs: RetryCallState) -> float:
        exc = rs.outcome.exception() if rs.outcome else None
        if isinstance(exc, RateLimitedError) and exc.retry_after is not None:
            return min(exc.retry_after, self.settings.max_wait_s)
        backoff = self.settings.backoff_s * 2 ** (rs.attempt_number - 1)
        return min(self.settings.max_wait_s, backoff) * random.uniform(0.5, 1.0)

    def _fetch(self, session: requests.Session, job: _Job, index: int) -> bytes:
        start, end = job.st.chunk_range(index)
        buf = bytearray()

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
                    self._get_range(session, job, start + len(buf), end, buf)
        except RangeIgnoredError as exc:
            raise FatalError(f"{exc.message}, {self.settings.max_attempts} times in a row",
                             fix="the server cannot resume downloads; use another URL or the SSH mirror") from None
        except HtmlErrorPage as exc:
            raise FatalError(f"{exc.message}, {self.settings.max_attempts} times in a row",
                             fix="open the URL in a browser to read the page; the link may have expired") from None
        except TransientError as exc:
            raise TransientError(f"{exc.message} (gave up after {self.settings.max_attempts} attempts)",
                                 fix="re-run the step: it resumes where it stopped") from None
        return bytes(buf)

    def _get_range(self, session: requests.Session, job: _Job, start: int, end: int, buf: bytearray) -> None:
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
                    buf += block
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
                        data = os.pread(job.fd, end - start + 1, start)
                    try:
                        job.verifier.update(data)
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
        os.fsync(job.fd)
        os.replace(job.partial, job.final)
        fsync_dir(self.dest)
        self.state.update(job.remote.name, verified=True, sha256=res.sha256, md5=res.md5, source="http")
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

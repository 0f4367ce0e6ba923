"""Fetch a whole backup: download every part, check the part set, repair corrupt parts.

A corrupt part is fetched from the SSH mirror when one is configured (resume by offset,
verified while written, compared with the mirror's own sha256, and only then put in place).
Without a mirror it is downloaded once more over HTTP. Every part that stays corrupt is named
in one error, together with any missing part.

The first part's part-count field (how many parts there are) is read only from a verified first
part, and since no gzip CRC covers it, a disagreement with the part list makes the first part
suspect before the backup: it is fetched again over HTTP, then from the mirror. The backup is
reported incomplete only when two copies agree on a part count that the list contradicts.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import requests
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt

from connectors.errors import IntegrityError, TransientError
from connectors.platform import BackupFormat
from connectors.retry import tenacity_wait
from connectors.ssh.client import RemoteHost

from .configuration import DownloadSettings
from .disk import check_free_space, write_error
from .downloader import PARTIAL_SUFFIX, Downloader, PartResult, Progress
from .source import BackupSource, RemotePart
from .state import PartState, fsync_dir
from .verify import PartVerifier

log = logging.getLogger("cloud2box.download")
SSH_SUFFIX = ".c2b-ssh"
_NO_MIRROR_FIX = ("configure [backup.mirror] with an SSH host holding a good copy of each part named, or ask the "
                  "vendor's support to upload it again; then re-run (verified parts are kept)")


@dataclass
class TransferReport:
    """What the transfer did, for the journal."""

    dest_dir: Path
    parts: list[PartResult]
    duration_s: float
    repaired: list[str] = field(default_factory=list)
    last_part: int | None = None

    @property
    def total_bytes(self) -> int:
        return sum(p.size for p in self.parts)

    @property
    def bytes_fetched(self) -> int:
        return sum(p.bytes_fetched for p in self.parts)

    @property
    def retries(self) -> int:
        return sum(p.retries for p in self.parts)

    @property
    def throughput_bps(self) -> float:
        return self.bytes_fetched / self.duration_s if self.duration_s > 0 else 0.0

    def evidence(self) -> dict:
        return {"dest_dir": str(self.dest_dir), "parts": [p.evidence() for p in self.parts],
                "total_bytes": self.total_bytes, "bytes_fetched": self.bytes_fetched,
                "duration_s": round(self.duration_s, 3), "throughput_bps": round(self.throughput_bps),
                "retries": self.retries, "repaired": self.repaired, "part_count_from_LN": (self.last_part or 0) + 1}


def _part_count_error(problems: list[str]) -> IntegrityError:
    return IntegrityError("the backup's part set is wrong: " + "; ".join(problems),
                          fix="ask the vendor's support for the complete backup (every part), then re-run")


def _one_error(failures: list[IntegrityError]) -> IntegrityError:
    """Every part's problem in one error, so one round trip to the vendor or the mirror fixes all."""
    if len(failures) == 1:
        return failures[0]
    lines = "\n".join(f"  - {f.message}" for f in failures)
    fixes = "; ".join(dict.fromkeys(f.fix for f in failures if f.fix))
    return IntegrityError(f"{len(failures)} problems with the backup's parts:\n{lines}", fix=fixes)


def _repaired(fixed: PartResult, bad: PartResult, why: str) -> PartResult:
    fixed.retries += bad.retries
    fixed.bytes_fetched += bad.bytes_fetched
    fixed.error = f"repaired after: {why}"
    return fixed


def _last_part(path: Path, fmt: BackupFormat) -> int | None:
    """The part-count field of a part that passed verification, read back from disk."""
    with open(path, "rb") as f:
        return fmt.parse_header(f.read(fmt.header_len)).last_part


def _count(last_part: int | None, fmt: BackupFormat) -> str:
    return f"{(last_part or 0) + 1} part(s)" + (f" (no {fmt.count_field} field)" if last_part is None else "")


def transfer_backup(source: BackupSource, dest_dir: str | Path, settings: DownloadSettings | None = None, *,
                    fmt: BackupFormat, mirror: Callable[[], RemoteHost] | None = None, mirror_path: str = "",
                    session_factory: Callable[[], requests.Session] = requests.Session,
                    on_progress: Callable[[Progress], None] | None = None) -> TransferReport:
    """Download, verify and (if needed) repair every part of the backup into ``dest_dir``.

    Args:
        fmt: the platform's backup format: the part names, each part's header, the part count.
        mirror: makes a :class:`RemoteHost` holding good copies under ``mirror_path``.
    Raises:
        IntegrityError: missing/extra parts or parts that stay corrupt, all named in one error.
        FatalError: too little disk space, or a local write failed (path, space needed, fix).
    """
    started = time.monotonic()
    parts = source.list_parts()
    names = [p.name for p in parts]
    problems = fmt.check_part_names(names)
    if problems:
        raise _part_count_error(problems)
    downloader = Downloader(dest_dir, settings or DownloadSettings(), fmt=fmt, session_factory=session_factory,
                            on_progress=on_progress)
    results = {r.name: r for r in downloader.download(parts)}
    repaired: list[str] = []
    failures: list[IntegrityError] = []
    for part in parts:
        bad = results[part.name]
        if bad.status == "verified":
            continue
        log.warning("part %s failed verification (%s); repairing it", part.name, bad.error)
        try:
            results[part.name] = _repaired(_repair(downloader, part, mirror, mirror_path), bad, bad.error)
            repaired.append(part.name)
        except IntegrityError as exc:
            failures.append(exc)
    first = parts[0]
    last_part = None
    if results[first.name].status == "verified":
        try:
            last_part, fixed, why = _settle_part_count(downloader, first, names, mirror, mirror_path)
        except IntegrityError as exc:
            failures.insert(0, exc)
        else:
            if fixed is not None:
                results[first.name] = _repaired(fixed, results[first.name], why)
                repaired += [] if first.name in repaired else [first.name]
    if failures:
        raise _one_error(failures)
    return TransferReport(Path(dest_dir), [results[n] for n in names], time.monotonic() - started,
                          repaired, last_part)


def _repair(downloader: Downloader, part: RemotePart, mirror: Callable[[], RemoteHost] | None,
            mirror_path: str) -> PartResult:
    """A verified copy of a corrupt part: from the mirror, else from one more HTTP download."""
    if mirror is not None:
        return repair_from_mirror(downloader, part, mirror, mirror_path)
    downloader.reset_part(part.name)
    fixed = downloader.download([part])[0]
    if fixed.status != "verified":
        raise IntegrityError(f"backup part {part.name} is corrupt after two downloads: {fixed.error}",
                             fix=_NO_MIRROR_FIX)
    return fixed


def _settle_part_count(downloader: Downloader, first: RemotePart, names: list[str],
                       mirror: Callable[[], RemoteHost] | None,
                       mirror_path: str) -> tuple[int | None, PartResult | None, str]:
    """Check the verified first part's part count against the list; returns its last part number, and the copy
    that replaced the first part (None when it was right) with the reason.

    The count is not covered by any CRC, so a disagreement first means a corrupt first part: fetch it
    again over HTTP, then from the mirror. Only two copies that agree make the backup incomplete.
    """
    path = downloader.dest / first.name
    fmt = downloader.fmt
    last = _last_part(path, fmt)
    if not fmt.check_part_count(names, last):
        return last, None, ""
    why = f"its {fmt.count_field} field said {_count(last, fmt)}, the list has {len(names)}"
    log.warning("the first part %s says there are %s, the list has %d: fetching it again (%s is not covered by "
                "the gzip CRC)", first.name, _count(last, fmt), len(names), fmt.count_field)
    copies = [("the first download", last)]
    notes: list[str] = []
    downloader.reset_part(first.name)
    again = downloader.download([first])[0]
    if again.status == "verified":
        last = _last_part(path, fmt)
        if not fmt.check_part_count(names, last):
            return last, again, why
        copies.append(("a second download", last))
    else:
        notes.append(f"a second download is corrupt: {again.error}")
    if mirror is not None:
        try:
            fixed = repair_from_mirror(downloader, first, mirror, mirror_path)
        except IntegrityError as exc:
            notes.append(exc.message)
        else:
            fixed.bytes_fetched += again.bytes_fetched
            fixed.retries += again.retries
            last = _last_part(path, fmt)
            if not fmt.check_part_count(names, last):
                return last, fixed, why
            copies.append(("the mirror's copy", last))
    said = "; ".join(f"{who} says {_count(value, fmt)}" for who, value in copies) + "".join(f"; {n}" for n in notes)
    values = [value for _, value in copies]
    agreed = [v for v in dict.fromkeys(values) if values.count(v) > 1]
    if agreed:
        raise _part_count_error(fmt.check_part_count(names, agreed[0]) + [f"copies agree: {said}"])
    downloader.reset_part(first.name)  # no two copies agree: the one on disk is not trusted either
    raise IntegrityError(
        f"backup part {first.name} is corrupt: its {fmt.count_field} field (the part count, not covered by the gzip CRC) "
        f"disagrees with the list of {len(names)} part(s) and no two copies agree ({said})",
        fix=(f"put a good copy of {first.name} on the mirror, then re-run" if mirror is not None else _NO_MIRROR_FIX))


def _resume_ssh_copy(tmp: Path, part: RemotePart, fmt: BackupFormat) -> PartVerifier:
    """A verifier fed with what an interrupted SFTP copy left in ``tmp`` (removed when damaged)."""
    verifier = PartVerifier(part.name, part.size, fmt=fmt, sha256=part.sha256, md5=part.md5)
    if not tmp.exists() or tmp.stat().st_size > part.size:
        tmp.unlink(missing_ok=True)
        return verifier
    try:
        with open(tmp, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                verifier.update(block)
    except IntegrityError:  # the earlier copy is damaged: start it over
        tmp.unlink()
        return PartVerifier(part.name, part.size, fmt=fmt, sha256=part.sha256, md5=part.md5)
    return verifier


def repair_from_mirror(downloader: Downloader, part: RemotePart, mirror: Callable[[], RemoteHost],
                       mirror_path: str, *, attempts: int = 5) -> PartResult:
    """Fetch ``part`` from the SSH mirror (resume by offset), verify it while writing (in the
    downloader's format), compare it with the mirror's own sha256, and only then replace the bad
    copy and mark it verified.

    The copy and the repaired part are private (0600). Raises IntegrityError naming the mirror's
    copy (``user@host:port:path``) when that copy is wrong, and the one disk error of
    :func:`~connectors.http_download.disk.write_error` when a local write fails.
    """
    dest = downloader.dest
    name = part.name
    remote_path = f"{mirror_path.rstrip('/')}/{name}" if mirror_path else name
    tmp = dest / (name + SSH_SUFFIX)
    started = time.monotonic()
    (dest / (name + PARTIAL_SUFFIX)).unlink(missing_ok=True)  # the corrupt HTTP copy: give its space back
    fetched = 0
    retries = 0
    with mirror() as host:
        where = f"{host.label}:{remote_path}"
        remote_size = host.size(remote_path)
        if remote_size != part.size:
            raise IntegrityError(f"the mirror's copy of {name} ({where}) has {remote_size} bytes, "
                                 f"the backup lists {part.size}",
                                 fix=f"put the right copy of {name} on the mirror, then re-run")
        try:
            verifier = _resume_ssh_copy(tmp, part, downloader.fmt)
        except OSError as exc:
            raise write_error(tmp, exc, dest, part.size, "read") from None
        resumed = verifier.fed
        check_free_space(dest, part.size - resumed)
        try:
            # RemoteHost.get creates the copy 0600 and raises a local disk's OSError as it is (never retried)
            for attempt in Retrying(stop=stop_after_attempt(attempts), wait=tenacity_wait(base=0.5, cap=10.0, obey_server=False),
                                    retry=retry_if_exception_type(TransientError), reraise=True):
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        retries += 1
                    fetched += host.get(remote_path, tmp, offset=verifier.fed, on_data=verifier.update)
            res = verifier.finish()
        except IntegrityError as exc:  # while streaming or at the end: either way it is the mirror's copy
            tmp.unlink(missing_ok=True)
            raise IntegrityError(f"the mirror's copy of {name} ({where}) is corrupt too: {exc.message}",
                                 fix=f"put a good copy of {name} at {where}, then re-run") from None
        except OSError as exc:
            raise write_error(tmp, exc, dest, part.size - verifier.fed) from None
        mirror_sha = host.sha256(remote_path)
    if mirror_sha is not None and mirror_sha != res.sha256:
        tmp.unlink(missing_ok=True)
        raise IntegrityError(f"part {name} copied from the mirror ({where}) hashes to {res.sha256}, "
                             f"the mirror says {mirror_sha}",
                             fix="the copy was damaged on the way; re-run to fetch it again")
    st = PartState.new(name, part.size, downloader.settings.chunk_size)
    st.done, st.verified, st.sha256, st.md5, st.source = "1" * st.chunks, True, res.sha256, res.md5, "ssh"
    try:
        os.replace(tmp, dest / name)
        fsync_dir(dest)
        downloader.state.put(st)  # should this fail, the next run checks the complete part again
    except OSError as exc:
        raise write_error(dest / name, exc, dest, 0) from None
    checks = res.checks + (("sha256-mirror",) if mirror_sha else ())
    log.info("part %s repaired from %s: sha256 %s", name, where, res.sha256)
    return PartResult(name, part.size, "verified", sha256=res.sha256, md5=res.md5, source="ssh", retries=retries,
                      duration_s=time.monotonic() - started, bytes_fetched=fetched, resumed_bytes=resumed,
                      checks=checks)

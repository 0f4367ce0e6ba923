"""Fetch a whole backup: download every part, check the part set, repair corrupt parts.

A corrupt part is fetched from the SSH mirror when one is configured (resume by offset,
verified while written, compared with the mirror's own sha256, and only then put in place).
Without a mirror it is downloaded once more over HTTP; if it is still corrupt the step fails
naming the part and what to do.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import requests
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from connectors.bitrix24.backup_format import HEADER_LEN, PartHeader, check_part_count, check_part_names, parse_header
from connectors.errors import IntegrityError, TransientError
from connectors.ssh.client import RemoteHost

from .configuration import DownloadSettings
from .downloader import PARTIAL_SUFFIX, Downloader, PartResult, Progress
from .source import BackupSource, RemotePart
from .state import PartState, fsync_dir
from .verify import PartVerifier

log = logging.getLogger("cloud2box.download")
SSH_SUFFIX = ".c2b-ssh"


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


def transfer_backup(source: BackupSource, dest_dir: str | Path, settings: DownloadSettings | None = None, *,
                    mirror: Callable[[], RemoteHost] | None = None, mirror_path: str = "",
                    session_factory: Callable[[], requests.Session] = requests.Session,
                    on_progress: Callable[[Progress], None] | None = None) -> TransferReport:
    """Download, verify and (if needed) repair every part of the backup into ``dest_dir``.

    Args:
        mirror: makes a :class:`RemoteHost` holding good copies under ``mirror_path``.
    Raises:
        IntegrityError: a missing/extra part, or a part that stays corrupt; names the part(s).
    """
    started = time.monotonic()
    settings = settings or DownloadSettings()
    parts = source.list_parts()
    names = [p.name for p in parts]
    problems = check_part_names(names)
    if problems:
        raise _part_count_error(problems)
    first = names[0]
    downloader = Downloader(dest_dir, settings, session_factory=session_factory, on_progress=on_progress)

    def on_header(name: str, header: PartHeader) -> None:
        if name == first:  # the first part says how many parts there must be: fail early
            found = check_part_count(names, header.last_part)
            if found:
                downloader.abort(_part_count_error(found))

    downloader.on_header = on_header
    results = {r.name: r for r in downloader.download(parts)}
    repaired: list[str] = []
    by_name = {p.name: p for p in parts}
    for name in [n for n in names if results[n].status != "verified"]:
        bad = results[name]
        log.warning("part %s failed verification (%s); repairing it", name, bad.error)
        if mirror is not None:
            fixed = repair_from_mirror(downloader, by_name[name], mirror, mirror_path)
        else:
            downloader.reset_part(name)
            fixed = downloader.download([by_name[name]])[0]
            if fixed.status != "verified":
                raise IntegrityError(
                    f"backup part {name} is corrupt after two downloads: {fixed.error}",
                    fix=f"configure [backup.mirror] with an SSH host holding a good copy of {name}, or ask the "
                        "vendor's support to upload the part again; then re-run (verified parts are kept)")
        fixed.retries += bad.retries
        fixed.bytes_fetched += bad.bytes_fetched
        fixed.error = f"repaired after: {bad.error}"
        results[name] = fixed
        repaired.append(name)
    # The first part may have been repaired: read its LN marker from the verified file.
    with open(Path(dest_dir) / first, "rb") as f:
        header = parse_header(f.read(HEADER_LEN))
    problems = check_part_count(names, header.last_part)
    if problems:
        raise _part_count_error(problems)
    return TransferReport(Path(dest_dir), [results[n] for n in names], time.monotonic() - started,
                          repaired, header.last_part)


def repair_from_mirror(downloader: Downloader, part: RemotePart, mirror: Callable[[], RemoteHost],
                       mirror_path: str, *, attempts: int = 5) -> PartResult:
    """Fetch ``part`` from the SSH mirror (resume by offset), verify it while writing, compare it
    with the mirror's own sha256, and only then replace the bad copy and mark it verified."""
    dest = downloader.dest
    name = part.name
    remote_path = f"{mirror_path.rstrip('/')}/{name}" if mirror_path else name
    tmp = dest / (name + SSH_SUFFIX)
    started = time.monotonic()
    verifier = PartVerifier(name, part.size, sha256=part.sha256, md5=part.md5)
    fetched = 0
    resumed = 0
    with mirror() as host:
        label = host.label
        remote_size = host.size(remote_path)
        if remote_size != part.size:
            raise IntegrityError(f"the mirror's copy of {name} ({label}:{remote_path}) has {remote_size} bytes, "
                                 f"the backup lists {part.size}",
                                 fix=f"put the right copy of {name} on the mirror, then re-run")
        if tmp.exists() and tmp.stat().st_size <= part.size:  # resume an interrupted SFTP copy
            try:
                with open(tmp, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        verifier.update(block)
                resumed = verifier.fed
            except IntegrityError:  # the earlier copy is damaged: start it over
                verifier = PartVerifier(name, part.size, sha256=part.sha256, md5=part.md5)
                tmp.unlink()
        else:
            tmp.unlink(missing_ok=True)
        retries = 0
        for attempt in Retrying(stop=stop_after_attempt(attempts), wait=wait_exponential(0.5, max=10),
                                retry=retry_if_exception_type(TransientError), reraise=True):
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    retries += 1
                offset = verifier.fed
                fetched += host.get(remote_path, tmp, offset=offset, on_data=verifier.update)
        try:
            res = verifier.finish()
        except IntegrityError as exc:
            tmp.unlink(missing_ok=True)
            raise IntegrityError(f"the mirror's copy is bad too: {exc.message}",
                                 fix=f"put a good copy of {name} at {label}:{remote_path}, then re-run") from None
        mirror_sha = host.sha256(remote_path)
    if mirror_sha is not None and mirror_sha != res.sha256:
        tmp.unlink(missing_ok=True)
        raise IntegrityError(f"part {name} fetched from {label} hashes to {res.sha256}, the mirror says {mirror_sha}",
                             fix="the copy was damaged on the way; re-run to fetch it again")
    os.replace(tmp, dest / name)
    fsync_dir(dest)
    (dest / (name + PARTIAL_SUFFIX)).unlink(missing_ok=True)
    st = PartState.new(name, part.size, downloader.settings.chunk_size)
    st.done, st.verified, st.sha256, st.md5, st.source = "1" * st.chunks, True, res.sha256, res.md5, "ssh"
    downloader.state.put(st)
    checks = res.checks + (("sha256-mirror",) if mirror_sha else ())
    log.info("part %s repaired from %s: sha256 %s", name, label, res.sha256)
    return PartResult(name, part.size, "verified", sha256=res.sha256, md5=res.md5, source="ssh", retries=retries,
                      duration_s=time.monotonic() - started, bytes_fetched=fetched, resumed_bytes=resumed, checks=checks)

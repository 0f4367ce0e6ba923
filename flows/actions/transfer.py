"""Action ``download_backup``: step 2.3's first automated part — place the backup's parts on disk,
verified, repaired from the SSH mirror where needed, with the evidence in the journal."""

from __future__ import annotations

import time
from pathlib import Path

from connectors.errors import ConfigError, MigrationError
from connectors.http_download import (BackupSection, BackupSource, Progress, UrlListSource, UrlsBackupSection,
                                      transfer_backup)
from connectors.ssh import RemoteHost
from journal.events import EventKind
from journal.counters import StepCounters
from journal.forecast import LiveEta, recorded_forecast
from journal.models import utcnow
from journal.parts import record_parts

from . import ActionContext, ActionResult, register

ETA_EVERY_S = 30.0  # how often the live ETA is journaled for the forecast


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def _section(ctx: ActionContext) -> BackupSection:
    if ctx.config.backup is None:
        raise ConfigError(ctx.config.source, ["[backup] is missing: step 2.3 needs to know where the backup comes from"])
    return ctx.config.backup


def _source(ctx: ActionContext, section: BackupSection, problems: list[str]) -> BackupSource | None:
    """Plain part URLs, or else the platform's own delivery; None after appending to ``problems``."""
    if isinstance(section, UrlsBackupSection):
        return UrlListSource(section.part_urls, manifest=section.manifest_url or None)
    return ctx.platform.delivery.source(section, ctx.secret_value, problems)


class _EtaReporter:
    """Turns downloader progress into ``ctx.progress`` calls and periodic ``eta`` journal events."""

    def __init__(self, ctx: ActionContext) -> None:
        self.ctx = ctx
        self.last_eta_at = 0.0
        self.last: Progress | None = None
        self.started_at = utcnow()
        # a cutover carries the forecast made from its rehearsal: refresh it from the live throughput
        forecast = recorded_forecast(ctx.journal, ctx.run_id)
        self.live = None
        if forecast is not None and any(r.step_id == ctx.step_id for r in forecast.rows):
            self.live = LiveEta(ctx.journal, ctx.run_id, forecast, ctx.step_id, ctx.config.forecast)

    def __call__(self, p: Progress) -> None:
        self.last = p
        if self.live is not None and p.rate_bps > 0:
            self.live.update(done=p.done_bytes, total=p.total_bytes, rate=p.rate_bps, started_at=self.started_at)
        eta = f", ETA {p.eta_s / 60:.1f} min" if p.eta_s is not None else ""
        self.ctx.progress(p.done_bytes, p.total_bytes,
                          f"{_mib(p.done_bytes)} of {_mib(p.total_bytes)} at {p.rate_bps / 2**20:.2f} MiB/s{eta}; "
                          f"{p.parts_verified}/{p.parts_total} parts verified")
        now = time.monotonic()
        if p.eta_s is not None and p.rate_bps > 0 and now - self.last_eta_at >= ETA_EVERY_S:
            self.last_eta_at = now
            self.ctx.journal.add_event(
                self.ctx.run_id, EventKind.ETA, f"backup download: ETA {p.eta_s:.0f} s at {p.rate_bps / 2**20:.2f} MiB/s",
                data={"eta_s": round(p.eta_s, 1), "rate_bps": round(p.rate_bps), "done_bytes": p.done_bytes,
                      "total_bytes": p.total_bytes}, step_id=self.ctx.step_id)


@register("download_backup", requires=("backup",))
def download_backup(ctx: ActionContext) -> ActionResult:
    """Download every backup part into the work directory, verify, repair, journal the evidence."""
    section = _section(ctx)
    problems: list[str] = []
    source = _source(ctx, section, problems)
    mirror = None
    if section.mirror is not None:
        m = section.mirror
        ssh_password = ctx.secret_value(m.password_secret, problems, "the mirror's SSH password")
        passphrase = ctx.secret_value(m.key_passphrase_secret, problems, "the mirror key's passphrase")
        mirror = lambda: RemoteHost.from_settings(m, password=ssh_password, key_passphrase=passphrase)  # noqa: E731
    if problems:
        raise ConfigError(ctx.config.source, problems)
    dest = section.dest_dir if Path(section.dest_dir).is_absolute() else Path(ctx.work_dir) / section.dest_dir
    reporter = _EtaReporter(ctx)
    ctx.logger.info("downloading the backup into %s with %d connection(s)%s", dest, section.download.connections,
                    "; corrupt parts are repaired from the SSH mirror" if mirror else "")
    try:
        report = transfer_backup(source, dest, section.download, fmt=ctx.platform.format, mirror=mirror,
                                 mirror_path=section.mirror.path if section.mirror else "", on_progress=reporter)
    except MigrationError as exc:
        ctx.journal.add_event(ctx.run_id, EventKind.DOWNLOAD_FAILED, exc.message,
                              data={"error": type(exc).__name__, "fix": exc.fix or ""}, step_id=ctx.step_id)
        raise
    record_parts(ctx.journal, ctx.run_id, ctx.step_id, report.parts)
    for part in report.parts:
        if part.name in report.repaired:
            ctx.journal.add_event(ctx.run_id, EventKind.PART_REPAIRED,
                                  f"part {part.name} failed verification and was replaced by a verified copy "
                                  f"from {part.source} (sha256 {part.sha256})",
                                  data=part.evidence(), step_id=ctx.step_id)
    ctx.journal.add_event(ctx.run_id, EventKind.ETA, "backup download finished",
                          data={"eta_s": 0, "rate_bps": round(report.throughput_bps), "done_bytes": report.total_bytes,
                                "total_bytes": report.total_bytes, "duration_s": round(report.duration_s, 3)},
                          step_id=ctx.step_id)
    ctx.progress(report.total_bytes, report.total_bytes, "all parts verified")
    summary = (f"{len(report.parts)} part(s), {_mib(report.total_bytes)}, verified in {report.duration_s:.1f} s "
               f"({report.throughput_bps / 2**20:.2f} MiB/s, {report.retries} retries)")
    if report.repaired:
        summary += f"; repaired: {', '.join(report.repaired)}"
    return ActionResult(
        summary=summary,
        evidence=report.evidence(),
        counters=StepCounters(bytes=report.total_bytes, bytes_fetched=report.bytes_fetched,
                              bytes_per_s=round(report.throughput_bps, 1), parts=len(report.parts),
                              parts_repaired=len(report.repaired), retries=report.retries),
    )

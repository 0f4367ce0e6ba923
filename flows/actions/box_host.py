"""Actions on the box host over SSH: the Contractor's host steps of the runbook.

- ``verify_host_deployed`` (1.1): SSH login with a verified host key, Linux, python3 for the
  restore agent, site root and staging dir writable.
- ``preflight_host`` (1.2): CPU, RAM, free disk for parts + unpacked + DB, open ports, clock skew.
- ``check_box`` (1.5): PHP and MySQL/MariaDB versions, the portal's DB login.
- ``restore_backup`` (2.3, after ``download_backup``): stage the verified parts (remote sha256 =
  local), restore the files, import the DB dump, write the box's DB settings into the site.
- ``post_restore_fixes`` (2.4): domain, push & pull, search reindex, password-reset list.

Every remote command goes to the journal as an ``ssh-command`` event (redacted, with duration).
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from connectors.box_host import BoxHost, BoxHostSection, LocalPart
from connectors.box_host.post_restore import evidence as fix_evidence
from connectors.errors import ConfigError, FatalError, IntegrityError
from connectors.outputs import write_csv
from connectors.ssh import CommandRecord, RemoteHost
from journal.counters import StepCounters
from journal.events import EventKind
from journal.parts import parts_of

from . import ActionContext, ActionResult, register


def _section(ctx: ActionContext) -> BoxHostSection:
    if ctx.config.box_host is None:
        raise ConfigError(ctx.config.source, [f"[box_host] is missing: step {ctx.step_id} works on the box host over SSH"])
    return ctx.config.box_host


def _journal_command(ctx: ActionContext):
    def record(rec: CommandRecord) -> None:
        ctx.journal.add_event(ctx.run_id, EventKind.SSH_COMMAND, f"{rec.host}: {rec.command} → exit {rec.exit_status} "
                              f"in {rec.duration_s:.2f} s",
                              data={"host": rec.host, "command": rec.command, "exit_status": rec.exit_status,
                                    "duration_s": rec.duration_s}, step_id=ctx.step_id)
    return record


def open_box_host(ctx: ActionContext) -> BoxHost:
    """The :class:`BoxHost` for this run: settings from ``[box_host]``, secrets resolved, every
    command journaled."""
    section = _section(ctx)
    problems: list[str] = []
    password = ctx.secret_value(section.password_secret, problems, "the box host's SSH password")
    passphrase = ctx.secret_value(section.key_passphrase_secret, problems, "the SSH key's passphrase")
    db_password = ctx.secret_value(section.db.password_secret, problems, "the box's DB password")
    archive = ctx.secret_value(section.archive_password_secret, problems, "the backup's encryption password")
    if problems:
        raise ConfigError(ctx.config.source, problems)
    remote = RemoteHost.from_settings(section, password=password, key_passphrase=passphrase,
                                      on_command=_journal_command(ctx))
    return BoxHost(section, remote, agent_source=ctx.platform.restore.agent_source, db_password=db_password,
                   archive_password=archive)


def _preflight(ctx: ActionContext, groups: tuple[str, ...], required_bytes: int = 0) -> ActionResult:
    host = open_box_host(ctx)
    with host.remote:
        report = host.preflight(required_bytes=required_bytes, groups=groups)
    ctx.journal.add_event(ctx.run_id, EventKind.PREFLIGHT, f"box host checks ({', '.join(groups)}): "
                          f"{'all passed' if report.ok else f'{len(report.failed)} failed'}",
                          data={"table": report.table(), **report.evidence()}, step_id=ctx.step_id)
    counters = StepCounters(checks=len(report.checks), failed=len(report.failed),
                            clock_skew_s=report.facts.get("clock_skew_s", 0.0))
    if not report.ok:
        raise FatalError(
            f"{len(report.failed)} box host check(s) failed: "
            + "; ".join(f"{c.name}: {c.found} (needed {c.needed})" for c in report.failed),
            fix="; ".join(c.fix for c in report.failed) + "; then re-run the step")
    passed = sum(c.status == "pass" for c in report.checks)
    return ActionResult(summary=f"{passed} check(s) passed, {len(report.checks) - passed} skipped on "
                                f"{host.remote.label}", evidence={"report": report.table(), **report.evidence()},
                        counters=counters)


@register("verify_host_deployed", requires=("box_host",))
def verify_host_deployed(ctx: ActionContext) -> ActionResult:
    """Step 1.1: the host is deployed and reachable the way the restore will use it."""
    return _preflight(ctx, ("deploy",))


@register("preflight_host", requires=("box_host",))
def preflight_host(ctx: ActionContext) -> ActionResult:
    """Step 1.2: resources (CPU, RAM, disk for the restore, ports, clock)."""
    p = _section(ctx).preflight
    expected = int(p.expected_backup_gib * 2**30)
    parts = _local_parts(ctx, required=False)
    backup = sum(x.size for x in parts) or expected
    required = int(backup * (1 + p.unpacked_factor + p.db_factor))
    return _preflight(ctx, ("deploy", "resources"), required)


@register("check_box", requires=("box_host",))
def check_box(ctx: ActionContext) -> ActionResult:
    """Step 1.5: the box's software: PHP and database versions, the portal's DB login."""
    return _preflight(ctx, ("box",))


def _backup_dir(ctx: ActionContext) -> Path | None:
    backup = ctx.config.backup
    if backup is None:
        return None
    dest = Path(backup.dest_dir)
    return dest if dest.is_absolute() else Path(ctx.work_dir) / dest


def _local_parts(ctx: ActionContext, *, required: bool = True) -> list[LocalPart]:
    """The verified parts the downloader journaled for this run (last verified row per part)."""
    rows = {r.part: r for r in parts_of(ctx.journal, ctx.run_id) if r.verified}
    directory = _backup_dir(ctx)
    if not rows or directory is None:
        if required:
            raise IntegrityError("no verified backup parts in the journal for this run",
                                 fix="run step 2.3's download_backup first (action = download_backup+restore_backup)")
        return []
    number = ctx.platform.format.part_number
    ordered = sorted(rows.values(), key=lambda r: number(r.part) or 0)
    return [LocalPart(r.part, directory / r.part, r.size, r.sha256) for r in ordered]


def _unpacked_size(ctx: ActionContext, path: Path) -> int:
    """The archive bytes the part's header announces (0 when the part is not on this machine)."""
    fmt = ctx.platform.format
    try:
        with open(path, "rb") as f:
            return fmt.parse_header(f.read(fmt.header_len)).size
    except (OSError, ValueError):
        return 0


@register("restore_backup", requires=("box_host",))
def restore_backup(ctx: ActionContext) -> ActionResult:
    """Step 2.3 (after the download): stage, restore files, import the DB, set the site's DB settings."""
    host = open_box_host(ctx)
    parts = _local_parts(ctx)
    names = [p.name for p in parts]
    tar_bytes = sum(_unpacked_size(ctx, p.path) for p in parts)
    total = sum(p.size for p in parts)
    sent = 0

    def on_bytes(n: int) -> None:
        nonlocal sent
        sent += n
        ctx.progress(sent, total, f"staging: {sent / 2**20:.1f} of {total / 2**20:.1f} MiB")

    with host.remote:
        p = host.settings.preflight
        report = host.preflight(required_bytes=int(total + tar_bytes * (p.unpacked_factor + p.db_factor)),
                                groups=("resources",))
        disk = next(c for c in report.checks if c.name == "free disk")
        if disk.status == "fail":
            raise IntegrityError(f"not enough disk on the box host: {disk.found} free, {disk.needed}", fix=disk.fix)
        stage = host.stage(parts, on_bytes=on_bytes)
        ctx.journal.add_event(ctx.run_id, EventKind.STAGED, f"{len(stage.sent)} part(s) sent, {len(stage.kept)} already there; "
                              "remote sha256 = verified sha256 for every part",
                              data={"sent": stage.sent, "kept": stage.kept, "bytes_sent": stage.bytes_sent,
                                    "sha256": stage.remote_sha256}, step_id=ctx.step_id)
        ctx.progress(total, total, "restoring files on the host")
        started = time.monotonic()
        files = host.restore_files(names, run_key=ctx.run_id)
        restore_s = files["duration_s"] if not files.get("skipped") else time.monotonic() - started
        ctx.journal.add_event(ctx.run_id, EventKind.RESTORED_FILES,
                              f"{files['files']} file(s), {files['dirs']} dir(s) into {host.settings.site_root}"
                              + (" (already restored: skipped)" if files.get("skipped") else ""),
                              data=files, step_id=ctx.step_id)
        sql_files = ctx.platform.restore.dump_order(files["sql_files"])
        if not sql_files:
            raise IntegrityError(f"the backup holds no database dump ({ctx.platform.restore.dump_hint})",
                                 fix="ask the vendor's support for a full backup")
        db = host.import_db(sql_files)
        ctx.journal.add_event(ctx.run_id, EventKind.RESTORED_DB,
                              f"{len(db['tables'])} table(s), {sum(db['rows'].values())} row(s) imported into "
                              f"{host.settings.db.database} from {len(sql_files)} dump file(s)",
                              data={"files": sql_files, **db}, step_id=ctx.step_id)
        settings = host.write_site_settings()
    mb_per_s = files["bytes_in"] / 1e6 / files["duration_s"] if files.get("duration_s") else 0.0  # MB = 10⁶ B
    cipher = f" from an encrypted backup ({files['cipher']})" if files.get("encrypted") and files.get("cipher") else ""
    return ActionResult(
        summary=(f"{len(parts)} part(s) staged ({len(stage.sent)} sent), {files['files']} file(s) restored{cipher}"
                 f" at {mb_per_s:.1f} MB/s, {len(db['tables'])} table(s) / {sum(db['rows'].values())} row(s) "
                 f"imported; DB settings written to {', '.join(settings['changed']) or 'no file'}"),
        evidence={"parts": names, "remote_sha256": stage.remote_sha256, "files": files["files"],
                  "sql_files": sql_files, "tables": db["rows"], "settings": settings, "encrypted": files["encrypted"]},
        counters=StepCounters(bytes=total, bytes_sent=stage.bytes_sent, restore_mb_per_s=round(mb_per_s, 2),
                              restore_s=round(restore_s, 3), files=files["files"], tables=len(db["tables"]),
                              rows=sum(db["rows"].values()), import_s=db["duration_s"]),
    )


@register("post_restore_fixes", requires=("box_host",))
def post_restore_fixes(ctx: ActionContext) -> ActionResult:
    """Step 2.4: each fix is a check plus a fix; the password-reset list goes to a CSV."""
    settings = ctx.config.post_restore
    domain = settings.domain or ctx.config.migration.box_portal
    if settings.set_domain and not domain:
        raise ConfigError(ctx.config.source,
                          ["[post_restore] domain (or [migration] box_portal) is needed to set the portal domain"])
    host = open_box_host(ctx)
    with host.remote:
        results = ctx.platform.restore.post_restore(host.sql, settings, domain=domain or "-")
    for r in results:
        ctx.journal.add_event(ctx.run_id, EventKind.POST_RESTORE, f"{r.name}: {r.status} — {r.before}"
                              + (f" → {r.after}" if r.after else ""),
                              data={"name": r.name, "status": r.status, "before": r.before, "after": r.after,
                                    "count": len(r.items)}, step_id=ctx.step_id)
    resets = next((r for r in results if r.name == "password resets"), None)
    csv_path = None
    if resets is not None and resets.items:
        csv_path = write_csv(pd.DataFrame(resets.items, columns=["id", "login", "email", "auth"]),
                             Path(ctx.work_dir) / "password-resets.csv")
    fixed = [r.name for r in results if r.status == "fixed"]
    return ActionResult(
        summary=(f"fixed: {', '.join(fixed) or 'nothing'}; "
                 f"{len(resets.items) if resets else 0} user(s) need a password reset"
                 + (f" (list: {csv_path})" if csv_path else "")),
        evidence={"fixes": fix_evidence(results), "password_reset_csv": str(csv_path) if csv_path else None},
        counters=StepCounters(fixed=len(fixed), password_resets=len(resets.items) if resets else 0),
    )


@register("download_and_restore_backup", requires=("backup", "box_host"))
def download_and_restore_backup(ctx: ActionContext) -> ActionResult:
    """Step 2.3 whole: ``download_backup`` then ``restore_backup`` (for a runbook with one action per step).

    Counters keep the download's names (the forecast reads them) and add the restore's.
    """
    from .transfer import download_backup

    download = download_backup(ctx)
    restore = restore_backup(ctx)
    return ActionResult(summary=f"download: {download.summary}; restore: {restore.summary}",
                        evidence={"download": download.evidence, "restore": restore.evidence},
                        counters=restore.counters.model_copy(update=download.counters.as_dict()))

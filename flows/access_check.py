"""``cloud2box check``: prove every credential and dependency of a run without changing anything.

The connectors say what they found (:mod:`connectors.access` rows); this module only decides
which probes a config calls for, runs them in parallel, each bounded in time, and puts the rows in
one table. A run does the same at its start and right before the users' downtime
(:func:`require_access`): a failure stops it there, before anything irreversible, with the fixes.

No Prefect here: ``cloud2box check`` runs without a server unless a ``[secrets]`` entry names a
Prefect Secret block (the caller passes the reader).
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import SecretStr

from connectors.access import AccessResult, failed, from_error, ok, skipped
from connectors.errors import FatalError
from flows.config import Config, resolve_secret

Stage = Literal["check", "start", "before-downtime"]
Probe = Callable[[], list[AccessResult]]

DEFAULT_TIMEOUT_S = 20.0  # per remote call; a probe of several calls gets three times that
_STAGE_WORDS = {"check": "the check", "start": "the run's start", "before-downtime": "the users' downtime"}


@dataclass
class AccessReport:
    """Every row of one check, in the order the probes were listed."""

    rows: list[AccessResult]
    stage: Stage = "check"

    @property
    def failures(self) -> list[AccessResult]:
        return [r for r in self.rows if r.failed]

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        counts = {s: sum(r.status == s for r in self.rows) for s in ("ok", "failed", "skipped")}
        return f"{counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped"

    def markdown(self) -> str:
        def cell(text: str) -> str:
            return text.replace("|", "\\\\|")

        lines = ["| check | result | finding | fix |", "|---|---|---|---|"]
        lines += [f"| {cell(r.name)} | {r.status.upper()} | {cell(r.finding)} | {cell(r.fix)} |" for r in self.rows]
        return "\n".join(lines)

    def error(self) -> FatalError:
        """The known failure that stops a run: each failed check on one line, the fixes after."""
        where = _STAGE_WORDS[self.stage]
        return FatalError(f"{len(self.failures)} access check(s) failed before {where}: "
                          + "; ".join(f"{r.name}: {r.finding}" for r in self.failures),
                          fix="; ".join(f"{r.name}: {r.fix}" for r in self.failures if r.fix)
                              + "; then run cloud2box check --config FILE until it passes")


def secret_rows(config: Config, prefect_reader=None) -> tuple[list[AccessResult], dict[str, SecretStr]]:
    """A row per ``[secrets]`` entry (resolved or not, never its value) and the resolved values."""
    rows, values = [], {}
    for key, ref in config.secrets.items():
        value, problem = resolve_secret(key, ref, prefect_reader)
        if problem:
            rows.append(failed(f"secret {key}", problem.split("] ", 1)[-1], "set it, then check again"))
        else:
            values[key] = value
            rows.append(ok(f"secret {key}", f"{ref.describe()} resolves"))
    return rows, values


def probes(config: Config, secrets: dict[str, SecretStr], *, stage: Stage, timeout_s: float) -> list[tuple[str, Probe]]:
    """(name, probe) for everything the config says the run will use; unconfigured ones are skipped rows."""
    from journal.access import check_journal

    found: list[tuple[str, Probe]] = [("journal database", lambda: [check_journal(config.journal.url,
                                                                                   timeout_s=timeout_s)])]
    found.append(("webhooks", lambda: _webhooks(config, secrets, timeout_s)))
    found.append(("backup delivery", lambda: _delivery(config, secrets, timeout_s)))
    found.append(("backup mirror", lambda: _mirror(config, secrets)))
    found.append(("box host", lambda: _box_host(config, secrets, stage=stage, timeout_s=timeout_s)))
    found.append(("notices", lambda: _notices(config, secrets, timeout_s)))
    found.append(("roster contacts", lambda: _roster_contacts(config, secrets, timeout_s)))
    return found


def run_checks(config: Config, *, secrets: dict[str, SecretStr] | None = None, prefect_reader=None,
               stage: Stage = "check", timeout_s: float = DEFAULT_TIMEOUT_S, workers: int = 6) -> AccessReport:
    """Run every probe in parallel; one that does not answer within 3 × ``timeout_s`` is a failed row.

    ``secrets``: already resolved (a run); None resolves them here, a row each."""
    rows: list[AccessResult] = []
    if secrets is None:
        rows, secrets = secret_rows(config, prefect_reader)
    listed = probes(config, secrets, stage=stage, timeout_s=timeout_s)
    pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="c2b-check")
    try:
        futures = [pool.submit(probe) for _, probe in listed]
        deadline = time.monotonic() + 3 * timeout_s
        for (name, _), future in zip(listed, futures):
            try:
                rows += future.result(timeout=max(0.0, deadline - time.monotonic()))
            except cf.TimeoutError:
                rows.append(failed(name, f"no answer within {3 * timeout_s:g} s",
                                   "check that it is reachable from here (a firewall that drops packets looks "
                                   "like this)"))
            except Exception as exc:  # noqa: BLE001 — one broken probe must not hide the others' rows
                rows.append(from_error(name, exc))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # every remote call has its own timeout: they end
    return AccessReport(rows, stage)


# --- the probes: which connector proves what ------------------------------------------------

def _lookup(secrets: dict[str, SecretStr]):
    """An ``ActionContext.secret_value`` lookalike over ``secrets``."""
    def secret(name, problems, what):
        if not name:
            return None
        if name not in secrets:
            problems.append(f"[secrets.{name}] is not defined or not set ({what})")
            return None
        return secrets[name].get_secret_value()
    return secret


def _webhooks(config: Config, secrets, timeout_s: float) -> list[AccessResult]:
    if config.crm_delta is None:
        return [skipped("webhooks", "[crm_delta] is not configured: step 2.11 is done by hand")]
    access = config.platform.access
    if access is None:
        return [skipped("webhooks", f"the platform {config.platform.name} offers no access check")]
    return access.webhooks(config.crm_delta, secrets, config.migration, source=config.source, timeout_s=timeout_s)


def _delivery(config: Config, secrets, timeout_s: float) -> list[AccessResult]:
    from connectors.http_download import UrlListSource, UrlsBackupSection

    section = config.backup
    if section is None:
        return [skipped("backup delivery", "[backup] is not configured: the backup is placed by hand")]
    if isinstance(section, UrlsBackupSection):  # HEAD per part: sizes, nothing downloaded
        try:
            parts = UrlListSource(section.part_urls, manifest=section.manifest_url or None,
                                  timeout=(min(10.0, timeout_s), timeout_s)).list_parts()
        except Exception as exc:  # noqa: BLE001
            return [from_error("backup delivery", exc, "check [backup] part_urls")]
        return [ok("backup delivery", f"{len(parts)} part URL(s) answer, {sum(p.size for p in parts) / 2**20:.1f} MiB")]
    access = config.platform.access
    if access is None:
        return [skipped("backup delivery", f"the platform {config.platform.name} offers no access check")]
    return access.delivery(section, _lookup(secrets), timeout_s=timeout_s)


def _mirror(config: Config, secrets) -> list[AccessResult]:
    from connectors.ssh import RemoteHost
    from connectors.ssh.access import check_login, check_readable_dir

    m = config.backup.mirror if config.backup is not None else None
    if m is None:
        return [skipped("backup mirror", "no [backup.mirror]: a corrupt part is fetched again from the source")]
    problems: list[str] = []
    secret = _lookup(secrets)
    password = secret(m.password_secret, problems, "the mirror's SSH password")
    passphrase = secret(m.key_passphrase_secret, problems, "the mirror key's passphrase")
    if problems:
        return [failed("backup mirror", "; ".join(problems), "add the missing [secrets] entries")]
    remote = RemoteHost.from_settings(m, password=password, key_passphrase=passphrase)
    try:  # not `with`: entering connects, and a refused login is a row here, not an exception
        login = check_login(remote, "backup mirror SSH")
        return [login] if login.failed else [login, check_readable_dir(remote, "backup mirror path", m.path)]
    finally:
        remote.close()


def _box_host(config: Config, secrets, *, stage: Stage, timeout_s: float) -> list[AccessResult]:
    from connectors.box_host import BoxHost
    from connectors.box_host.access import check_box_host
    from connectors.ssh import RemoteHost

    section = config.box_host
    if section is None:
        return [skipped("box host", "[box_host] is not configured: the host steps are done by hand")]
    problems: list[str] = []
    secret = _lookup(secrets)
    password = secret(section.password_secret, problems, "the box host's SSH password")
    passphrase = secret(section.key_passphrase_secret, problems, "the SSH key's passphrase")
    db_password = secret(section.db.password_secret, problems, "the box's DB password")
    if problems:
        return [failed("box host", "; ".join(problems), "add the missing [secrets] entries")]
    remote = RemoteHost.from_settings(section, password=password, key_passphrase=passphrase)
    try:
        host = BoxHost(section, remote, agent_source=config.platform.restore.agent_source, db_password=db_password)
        return check_box_host(host, after_restore=stage == "before-downtime", timeout_s=timeout_s)
    finally:
        remote.close()


def _notices(config: Config, secrets, timeout_s: float) -> list[AccessResult]:
    from journal.access import check_notices

    urls, rows = [], []
    for where, entries in (("notices.urls", config.notices.urls), ("sweeps.alert_urls", config.sweeps.alert_urls)):
        for i, entry in enumerate(entries):
            if entry in secrets:
                urls.append(secrets[entry].get_secret_value())
            elif "://" in entry:
                urls.append(entry)
            else:
                rows.append(failed(f"notice [{where}.{i}]", "neither an apprise URL nor a resolved [secrets] entry",
                                   "write the URL, or name a [secrets] entry that is set"))
    return rows + check_notices(urls, dry_run=config.notices.dry_run, timeout_s=timeout_s)


def _roster_contacts(config: Config, secrets, timeout_s: float) -> list[AccessResult]:
    """Where each roster person is told to act (and gets their one-time codes): sent in a dry run
    too, so always checked. Nothing is sent."""
    from dataclasses import replace

    from flows.signing import contact_url
    from journal.access import check_notices

    if not config.roster:
        return [skipped("roster", "no [[roster]]: names are typed and not verified (a cutover needs a roster)")]
    rows = []
    for person in config.roster:
        url, name = contact_url(person, secrets), f"contact of {person.name}"
        if url is None:
            rows.append(failed(name, "its [secrets] entry is not set", f"set the secret {person.contact}"))
        else:
            rows += [replace(row, name=name) for row in check_notices([url], dry_run=False, timeout_s=timeout_s)]
    return rows


def require_access(config: Config, secrets: dict[str, SecretStr], *, stage: Stage,
                   timeout_s: float = DEFAULT_TIMEOUT_S) -> AccessReport:
    """:func:`run_checks` for a run; raises the report's :class:`FatalError` when a check failed."""
    report = run_checks(config, secrets=secrets, stage=stage, timeout_s=timeout_s)
    if not report.ok:
        raise report.error()
    return report

"""Read-only proof that the box host can do its steps (``cloud2box check``): SSH login with a known
host key, the host's Python for the restore agent, the paths the steps write (site root, staging
dir: writable, or creatable by the SSH user), and the box's database (the login works; the database
exists once the restore made it). The agent runs from memory (:meth:`BoxHost.facts_read_only`):
nothing is written on the host.

No step runs ``sudo``: everything runs as the SSH user, so sudo is not probed.
"""

from __future__ import annotations

from connectors.access import AccessResult, failed, from_error, ok
from connectors.errors import MigrationError
from connectors.ssh.access import check_login

from .host import BoxHost, _version


def check_box_host(host: BoxHost, *, after_restore: bool, timeout_s: float) -> list[AccessResult]:
    """Rows for the box host and its database. ``after_restore``: the restore ran, so the portal's
    database must exist (before it, the restore creates it)."""
    login = check_login(host.remote, "box host SSH")
    if login.failed:
        return [login]
    try:
        facts = host.facts_read_only(timeout=timeout_s)
    except MigrationError as exc:
        return [login, from_error("box host tools", exc)]
    rows = [login, _python_row(host, facts), _paths_row(host, facts)]
    return rows + [_database_row(host, facts, after_restore=after_restore)]


def _python_row(host: BoxHost, facts: dict) -> AccessResult:
    found = str(facts.get("python") or "?")
    if _version(found) >= (3, 8):
        return ok("box host python", f"{host.settings.python} {found} runs the restore agent")
    return failed("box host python", f"{host.settings.python} is {found}; the restore agent needs 3.8 or later",
                  "install python3 ≥ 3.8 on the host or set [box_host] python to one")


def _paths_row(host: BoxHost, facts: dict) -> AccessResult:
    paths = facts.get("paths") or {}
    bad = [p for p, info in paths.items() if not info.get("writable")]
    if bad:
        return failed("box host paths", f"not writable by {host.settings.username}: {', '.join(bad)}",
                      f"create {' and '.join(bad)} and give {host.settings.username} write access")
    shown = ", ".join(f"{p} ({'exists' if info.get('exists') else 'will be created'})" for p, info in paths.items())
    return ok("box host paths", f"writable: {shown}")


def _database_row(host: BoxHost, facts: dict, *, after_restore: bool) -> AccessResult:
    db = host.settings.db
    where = f"{db.user}@{db.host}:{db.port}/{db.database}"
    if facts.get("db_error"):
        return failed("box database", f"{where}: {facts['db_error']}",
                      "check [box_host.db] host, port, user and its password secret, and that MariaDB/MySQL runs")
    version = facts.get("db_version") or "?"
    if facts.get("db_exists"):
        return ok("box database", f"{where}: login works (server {version}); the database exists")
    if after_restore:
        return failed("box database", f"{where}: the database does not exist, but the restore (step 2.3) should "
                                      "have made it", "re-run step 2.3, or fix [box_host.db] database")
    return ok("box database", f"{where}: login works (server {version}); the database does not exist yet — the "
                              "restore (step 2.3) creates it")

"""Read-only proof of the journal database and the notice targets (``cloud2box check``).

The journal: it opens and a write would be accepted — SQLite takes its write lock and lets it go,
PostgreSQL creates a table inside a transaction that is rolled back — without writing a run.
Notices: every target is a valid apprise URL; those that name a server of the customer's
(json/xml/form/ntfy webhooks, a mail server) are reached over TCP; the others (Slack, Telegram …)
cannot be proven without sending, and say so.
"""

from __future__ import annotations

import os
import socket
import sqlite3
from pathlib import Path

from connectors.access import AccessResult, failed, ok, skipped
from connectors.secrets import redact

from .notices import target_label

_HTTP_SCHEMES = {"json", "jsons", "xml", "xmls", "form", "forms", "ntfy", "ntfys"}
_MAIL_SCHEMES = {"mailto", "mailtos"}


def check_journal(url: str, *, timeout_s: float) -> AccessResult:
    """The journal database opens and would accept a write; nothing is written."""
    if url.startswith("sqlite"):
        return _check_sqlite(url.split("///", 1)[-1] if "///" in url else "", timeout_s)
    return _check_server(url, timeout_s)


def _check_sqlite(path: str, timeout_s: float) -> AccessResult:
    name, fix = "journal database", "set [journal] url to sqlite:///PATH.db in a directory you can write"
    if not path or path == ":memory:":
        return ok(name, "in memory (nothing survives the process: fine for tests only)")
    db = Path(path)
    if not db.exists():
        parent = next((p for p in db.absolute().parents if p.exists()), None)
        if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            return failed(name, f"{db} does not exist and {parent} is not a directory this user can write", fix)
        return ok(name, f"{db} does not exist yet; the run creates it (in {parent}, writable)")
    if not db.is_file():
        return failed(name, f"{db} is not a file", fix)
    try:
        conn = sqlite3.connect(f"file:{db}?mode=rw", uri=True, timeout=timeout_s)
        try:
            conn.execute("PRAGMA schema_version").fetchone()  # "file is not a database" shows here
            conn.execute("BEGIN IMMEDIATE")  # the write lock: proves the file and its directory are writable
            conn.rollback()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return failed(name, f"{db}: {exc}", fix)
    return ok(name, f"{db} opens and takes writes")


def _check_server(url: str, timeout_s: float) -> AccessResult:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    name = "journal database"
    try:
        parsed = make_url(url)
    except ArgumentError:
        return failed(name, f"{redact(url)} is not a database URL", "write [journal] url as "
                      "postgresql+psycopg2://USER@HOST/DB")
    where = parsed.render_as_string(hide_password=True)
    pg = parsed.get_backend_name() == "postgresql"
    args = {"connect_timeout": max(1, int(timeout_s))}
    engine = None
    try:
        engine = create_engine(url, connect_args=args, poolclass=_null_pool())
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            if not pg:  # MySQL/MariaDB commit DDL at once: a probe table would stay behind
                return ok(name, f"{where}: connects (writes are not probed on {parsed.get_backend_name()})")
            conn.rollback()
            # PostgreSQL DDL is transactional: the probe table is rolled back and no one else ever sees it
            conn.execute(text("CREATE TABLE c2b_check_probe (x integer)"))
            conn.rollback()
    except SQLAlchemyError as exc:
        return failed(name, f"{where}: {_db_reason(exc)}", _db_fix(exc, parsed))
    except Exception as exc:  # noqa: BLE001 — a missing driver, a bad option: one line, not a traceback
        return failed(name, f"{where}: {type(exc).__name__}: {redact(exc)}", "check [journal] url and its driver")
    finally:
        if engine is not None:
            engine.dispose()
    return ok(name, f"{where}: connects and may create its tables")


def _null_pool():
    from sqlalchemy.pool import NullPool

    return NullPool


def _db_reason(exc: Exception) -> str:
    text = str(getattr(exc, "orig", exc)).strip().splitlines()
    return redact(text[0] if text else type(exc).__name__)


def _db_fix(exc: Exception, parsed) -> str:
    text = str(getattr(exc, "orig", exc)).lower()
    database = parsed.database or "?"
    if "does not exist" in text and "database" in text or "unknown database" in text:
        return (f"create the database first (PostgreSQL: createdb -h {parsed.host} -U {parsed.username} {database}; "
                f"MariaDB: CREATE DATABASE {database}), or fix the name in [journal] url")
    if "password" in text or "access denied" in text or "authentication" in text:
        return "check the user and password in [journal] url (the password belongs in an env var or ~/.pgpass)"
    if "permission denied" in text:
        return f"grant the journal's user CREATE and INSERT on {database}"
    return f"check that the database server at {parsed.host}:{parsed.port or 'default port'} runs and is reachable"


def check_notices(urls: list[str], *, dry_run: bool, timeout_s: float) -> list[AccessResult]:
    """One row per notice target; a dry run sends nothing, so there is nothing to prove."""
    if dry_run:
        return [skipped("notices", "dry_run = true: notices are written to files")]
    if not urls:
        return [skipped("notices", "no [notices] urls: nobody is told about the downtime by cloud2box")]
    return [_check_target(url, timeout_s) for url in urls]


def _check_target(url: str, timeout_s: float) -> AccessResult:
    import apprise

    label = target_label(url)
    name = f"notice {label}"
    plugin = apprise.Apprise.instantiate(url)
    if plugin is None:
        return failed(name, "not a valid apprise URL (or its service is not known to apprise)",
                      "write it as apprise documents it, e.g. jsons://host/path or mailtos://user@domain")
    scheme = url.split("://", 1)[0].lower()
    if scheme in _HTTP_SCHEMES:
        host, port = plugin.host, plugin.port or (443 if plugin.secure else 80)
    elif scheme in _MAIL_SCHEMES:
        host, port = getattr(plugin, "smtp_host", None) or plugin.host, plugin.port or 25
    else:
        return ok(name, "valid apprise URL; the service is not contacted (proving it would send a message)")
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        return failed(name, f"nothing answers at {host}:{port} ({exc.strerror or type(exc).__name__})",
                      f"check the address in the notice URL and that {host} accepts connections on port {port}")
    return ok(name, f"valid; {host}:{port} accepts connections (nothing was sent)")

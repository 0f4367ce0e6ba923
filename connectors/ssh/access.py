"""Read-only proof that an SSH host is usable (``cloud2box check``): login with a known host key,
and the directory a step reads there. Nothing is written on the host."""

from __future__ import annotations

import stat

from connectors.access import AccessResult, failed, from_error, ok
from connectors.errors import MigrationError

from .client import RemoteHost


def check_login(remote: RemoteHost, name: str) -> AccessResult:
    """Log in (the host key is checked against known_hosts unless switched off)."""
    try:
        remote.connect()
    except MigrationError as exc:
        return from_error(name, exc)
    key = "host key checked against " + str(remote.known_hosts) if remote.strict_host_key else \
        "host key NOT checked (strict_host_key = false)"
    return ok(name, f"{remote.label}: login works; {key}")


def check_readable_dir(remote: RemoteHost, name: str, path: str) -> AccessResult:
    """``path`` is a directory the login can list (the mirror's copies of the parts)."""
    try:
        with remote._errors(f"list {path}"):
            sftp = remote.sftp()
            if not stat.S_ISDIR(sftp.stat(path).st_mode or 0):
                return failed(name, f"{remote.label}: {path} is not a directory", "set the mirror's path to the "
                              "directory that holds the parts")
            entries = len(sftp.listdir(path))
    except MigrationError as exc:
        return from_error(name, exc, "set the mirror's path to the directory that holds the parts")
    return ok(name, f"{remote.label}:{path} is readable ({entries} entries)")

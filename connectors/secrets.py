"""Keep secrets out of logs, the journal, reports, exceptions and CSV files.

Every secret value cloud2box resolves is registered here; :func:`redact` masks any registered
value (and the code segment of Bitrix24 webhook URLs) in a string. The logging filter applies it
to every record, so a secret that slips into a message never reaches a handler.
"""

from __future__ import annotations

import logging
import re
import threading

MASK = "***"

_lock = threading.Lock()
_secrets: set[str] = set()

# https://portal/rest/{USER_ID}/{CODE}/method.json: the CODE is the credential.
_WEBHOOK_RE = re.compile(r"(/rest/\d+/)([^/\s?#\"']+)")
# user:password@host in URLs
_USERINFO_RE = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)([^@\s/]+)(@)", re.IGNORECASE)


def register_secret(value: str | None) -> None:
    """Remember a secret value so that :func:`redact` masks it everywhere.

    Very short values (under 4 characters) are not registered: masking them would shred
    ordinary text, and no real credential is that short.
    """
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(value)


def redact(text: object) -> str:
    """Return ``text`` as a string with every registered secret and webhook code masked."""
    s = str(text)
    with _lock:
        values = sorted(_secrets, key=len, reverse=True)
    for value in values:
        if value in s:
            s = s.replace(value, MASK)
    s = _WEBHOOK_RE.sub(lambda m: m.group(1) + MASK if m.group(2) != MASK else m.group(0), s)
    return _USERINFO_RE.sub(lambda m: m.group(1) + MASK + m.group(3), s)


def redact_obj(obj):
    """Redact strings inside nested dicts/lists (for JSON evidence)."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {redact(k): redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_obj(v) for v in obj]
    return obj


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in the formatted message of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is the caller's bug; let logging report it
            return True
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        return True


def install_log_redaction(*prefixes: str) -> None:
    """Attach :class:`RedactingFilter` to every handler of the root logger and of the loggers
    under ``prefixes`` (default: prefect, cloud2box, paramiko, urllib3, httpx).

    Handler filters see the records of child loggers too; logger filters would not.
    """
    prefixes = prefixes or ("prefect", "cloud2box", "paramiko", "urllib3", "httpx")
    flt = RedactingFilter()
    loggers = [logging.getLogger()] + [
        logging.getLogger(name) for name in list(logging.Logger.manager.loggerDict)
        if name.split(".")[0] in prefixes
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(flt)


# --- secrets by reference -------------------------------------------------------------------
# The TOML never holds a secret value, only where to find it. Connectors receive resolved
# ``SecretStr`` values; resolving Prefect Secret blocks is the flows' job (no Prefect here).

from pydantic import BaseModel, ConfigDict, model_validator  # noqa: E402


class SecretRef(BaseModel):
    """Where a secret lives: ``{env = "VAR"}`` or ``{prefect_secret = "block-name"}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    env: str | None = None
    prefect_secret: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "SecretRef":
        if bool(self.env) == bool(self.prefect_secret):
            raise ValueError('give exactly one of env = "VAR_NAME" or prefect_secret = "block-name"')
        return self

    def describe(self) -> str:
        return f"env var {self.env}" if self.env else f"Prefect Secret block {self.prefect_secret!r}"

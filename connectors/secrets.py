"""Keep secrets out of logs, the journal, reports, exceptions and CSV files.

Every secret value cloud2box resolves is registered here; :func:`redact` masks any registered
value, URL passwords, and the credentials that platforms put in URLs (each platform's
``redaction`` patterns, registered with :func:`register_redaction` when the registry loads it;
the first :func:`redact` loads every registered platform, so masking needs no flow or config).
The logging filter applies it to every record, so a secret that slips into a message never
reaches a handler.
"""

from __future__ import annotations

import logging
import re
import threading

MASK = "***"

_lock = threading.Lock()
_secrets: set[str] = set()
_patterns: list[re.Pattern] = []  # group 2 of each (a credential inside a URL) is masked
_load_lock = threading.RLock()  # other threads wait for the platforms; the loading thread may redact
_platforms_loaded = _loading = False
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


def register_redaction(pattern: re.Pattern | str) -> None:
    """From now on, :func:`redact` masks what group 2 of ``pattern`` matches and keeps the rest of
    the match, e.g. ``(/api/\\d+/)([^/]+)`` masks the path segment after ``/api/<id>/``."""
    compiled = re.compile(pattern)
    if compiled.groups < 2:
        raise ValueError("a redaction pattern needs at least two groups; group 2 is the credential")
    with _lock:
        if compiled not in _patterns:
            _patterns.append(compiled)


def _load_platform_patterns() -> None:
    """Load every registered platform once, so its patterns apply before any flow has run."""
    global _platforms_loaded, _loading
    with _load_lock:
        if _platforms_loaded or _loading:  # _loading: importing a platform redacted something
            return
        _loading = True
        try:
            from connectors import platforms

            platforms.load_all()
            _platforms_loaded = True
        finally:
            _loading = False


def _mask_group_2(m: re.Match) -> str:
    if m.group(2) == MASK:
        return m.group(0)
    start, end = m.start(2) - m.start(0), m.end(2) - m.start(0)
    return m.group(0)[:start] + MASK + m.group(0)[end:]


def redact(text: object) -> str:
    """Return ``text`` as a string with every registered secret and URL credential masked."""
    if not _platforms_loaded:
        _load_platform_patterns()
    s = str(text)
    with _lock:
        values = sorted(_secrets, key=len, reverse=True)
        patterns = list(_patterns)
    for value in values:
        if value in s:
            s = s.replace(value, MASK)
    for pattern in patterns:
        s = pattern.sub(_mask_group_2, s)
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

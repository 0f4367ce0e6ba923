"""The one exception tree of cloud2box.

::

    MigrationError                 anything cloud2box raises on purpose
     ├── TransientError            worth retrying: timeouts, 5xx, rate limits, dropped connections
     │    └── RateLimitedError     the remote said when to come back (``retry_after`` seconds)
     └── FatalError                retrying cannot help; a human must act (``fix`` says how)
          ├── ConfigError          the config file or environment is wrong (lists every problem)
          ├── AuthError            wrong/expired credentials, host key mismatch
          ├── IntegrityError       data that must not be trusted: bad hash, broken gzip, short part
          ├── GateRejected         a customer rejected a phase gate
          ├── StepNotDone          a person reported a manual step as not done
          ├── RunNotFound          the journal has no run with that id
          └── BudgetExhausted      a sync's hard request budget is spent: it stops and alerts

Library errors (requests, paramiko, sqlalchemy, socket) are converted into this tree at the
connector boundary, once; retry decisions look only at ``TransientError``.
"""

from __future__ import annotations


class MigrationError(Exception):
    """Base of every error cloud2box raises on purpose."""

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        self.message = message
        self.fix = fix
        super().__init__(f"{message} — fix: {fix}" if fix else message)


class TransientError(MigrationError):
    """A failure that may go away by itself; safe to retry within a bound."""


class RateLimitedError(TransientError):
    """The remote asked us to slow down; ``retry_after`` is seconds to wait (None: unknown)."""

    def __init__(self, message: str, *, retry_after: float | None = None, fix: str | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message, fix=fix)


class FatalError(MigrationError):
    """Retrying cannot help: stop and tell the human what to do."""


class ConfigError(FatalError):
    """The configuration is invalid. ``problems`` lists every problem found, not just the first."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"{source}: {len(self.problems)} problem(s) in the configuration:\n{lines}",
            fix=f"edit {source} (see config.example.toml) and start again",
        )


class AuthError(FatalError):
    """Credentials or identities were refused (webhook code, password, SSH host key)."""


class IntegrityError(FatalError):
    """Data failed verification (hash, gzip CRC, size) and must not be used."""


class GateRejected(FatalError):
    """A customer rejected a phase gate; the migration stops here until re-run."""


class StepNotDone(FatalError):
    """A person reported a manual step as not done; the run stops at that step."""


class RunNotFound(FatalError):
    """The journal has no run with that id (``fix`` lists the latest runs)."""


__all__ = [
    "MigrationError",
    "TransientError",
    "RateLimitedError",
    "FatalError",
    "ConfigError",
    "AuthError",
    "IntegrityError",
    "GateRejected",
    "StepNotDone",
    "RunNotFound",
]


class BudgetExhausted(FatalError):
    """A request budget (per sweep or per day) is spent; the sync stops until the budget allows."""

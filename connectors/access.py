"""What ``cloud2box check`` reports for one credential or dependency, and how a connector says it.

A connector proves that it can reach what a run will use, without changing anything there, and
returns :class:`AccessResult` rows: ``ok`` (with what it found), ``failed`` (one line and the fix)
or ``skipped`` (not configured, or nothing to prove without changing something). The flows run
the probes, with timeouts and in parallel; connectors only say what they found.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from connectors.errors import MigrationError
from connectors.secrets import redact

Status = Literal["ok", "failed", "skipped"]

__all__ = ["AccessResult", "Status", "failed", "from_error", "ok", "one_line", "skipped"]


def one_line(text: object, limit: int = 300) -> str:
    """``text`` redacted, on one line, at most ``limit`` characters (a finding fits a table cell)."""
    flat = " ".join(redact(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


@dataclass(frozen=True)
class AccessResult:
    """One row of the check table: ``name`` says what was checked ("cloud webhook")."""

    name: str
    status: Status
    finding: str
    fix: str = ""

    def __post_init__(self) -> None:  # whatever a probe put in, no secret and no line break leaves here
        object.__setattr__(self, "finding", one_line(self.finding))
        object.__setattr__(self, "fix", one_line(self.fix))

    @property
    def failed(self) -> bool:
        return self.status == "failed"


def ok(name: str, finding: str) -> AccessResult:
    return AccessResult(name, "ok", finding)


def failed(name: str, finding: str, fix: str) -> AccessResult:
    return AccessResult(name, "failed", finding, fix)


def skipped(name: str, why: str) -> AccessResult:
    return AccessResult(name, "skipped", why)


def from_error(name: str, exc: BaseException, fix: str = "") -> AccessResult:
    """A failed row from an exception: a known failure's message and fix, else its type and text."""
    if isinstance(exc, MigrationError):
        return failed(name, exc.message, exc.fix or fix)
    return failed(name, f"{type(exc).__name__}: {exc}", fix)

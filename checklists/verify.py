"""Post-migration verification: the checks of checklists/verify.toml and the code that runs them.

Each check compares the box with the cloud (or with what the case taught us to expect) and
returns a :class:`CheckResult`: ``passed``, ``failed`` (with the severity the TOML gives it) or
``not-run`` with the reason — missing access, switched off, a kind the platform lacks, or an error
while checking. A check that did not run is never counted as passed.

A check's ``kind`` names the code that runs it: the generic kinds here (the HTTPS certificate) and
the CRM platform's own (``Platform.checks.kinds()``), which know its API and its database.

What a check may reach is one :class:`VerifyAccess`: the portals' clients (the platform's, from
``Platform.crm.endpoints``), the box's database (an ``sql(statements) -> results`` callable, the host
agent's ``sql`` op over SSH), the box's HTTPS address, the platform's own options
(``PlatformChecks.access_options``). The flows build it from the config; tests build it from the sandbox.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

from connectors import platforms
from connectors.box_host.post_restore import Sql
from connectors.errors import MigrationError
from connectors.outputs import Markdown, markdown_text
from connectors.platform import CheckNotRun, Platform
from connectors.secrets import redact

from .configuration import VERIFY_PATH
from .toml_model import load_model, require_unique_ids

Severity = Literal["fire", "emergency", "sla"]
Access = Literal["cloud", "box", "box_db", "https"]
Status = Literal["passed", "failed", "not-run"]

ACCESS_HINTS = {
    "cloud": "no webhook for the cloud portal: add [crm_delta] with cloud_webhook_secret",
    "box": "no webhook for the box portal: add [crm_delta] with box_webhook_secret",
    "box_db": "no access to the box's database: add [box_host] (SSH and the DB login)",
    "https": "no HTTPS address of the box portal: set [verify] https_url (or an https:// box_portal)",
}


class Check(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9-]+$")
    title: str
    kind: str
    severity: Severity
    needs: list[Access] = Field(default_factory=list)
    why: str = ""
    fix: str = ""
    params: dict[str, Any] = Field(default_factory=dict)


class CheckList(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    checks: list[Check]

    @model_validator(mode="after")
    def _valid(self) -> "CheckList":
        require_unique_ids([c.id for c in self.checks], "check")
        unknown = [f"{c.id}: {c.kind}" for c in self.checks if c.kind not in KINDS]
        if unknown:
            raise ValueError(f"unknown check kinds {unknown}; known: {', '.join(sorted(KINDS))}")
        return self


def load_checks(path: str | Path = VERIFY_PATH) -> CheckList:
    return load_model(path, CheckList, missing="verification checks not found; the shipped ones are "
                                                "checklists/verify.toml")


@dataclass
class VerifyAccess:
    """Everything the checks may use; ``None`` = not available (the check is not run)."""

    cloud: Any = None  # the platform's client of the cloud portal (Platform.crm.endpoints)
    box: Any = None  # … and of the box portal
    box_sql: Sql | None = None
    https_url: str = ""
    ca_file: str | None = None
    domain: str = ""  # the box portal's domain, expected in notification links
    options: dict[str, Any] = field(default_factory=dict)  # the platform's own (PlatformChecks.access_options)
    cloud_apps: list[str] = field(default_factory=list)
    cutoff: dt.datetime | None = None  # the backup's cutoff
    delta_moved: bool = False  # step 2.11 has moved the records created after the backup
    # the backup's highest IDs and counts per entity ({"max_id", "count"}) as step 2.11 journaled them
    # before its import; None: not taken yet (the platform reads them from the box)
    backup_marks: dict[str, dict[str, int]] | None = None
    quarantined: dict[str, set[str]] = field(default_factory=dict)  # entity → cloud IDs kept out by the loop guard
    timeout_s: float = 20.0
    unavailable: dict[str, str] = field(default_factory=dict)  # access → why it is missing (overrides the hint)

    def has(self, need: str) -> bool:
        return {"cloud": self.cloud, "box": self.box, "box_db": self.box_sql, "https": self.https_url}[need] \
            not in (None, "")

    def why_not(self, need: str) -> str:
        return self.unavailable.get(need) or ACCESS_HINTS[need]


@dataclass
class CheckResult:
    id: str
    title: str
    severity: str  # the severity a failure has
    status: Status
    summary: str
    fix: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    items: list[dict] = field(default_factory=list)  # what people must look at (records, users, apps…)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


_MARKS = {"passed": "✅ passed", "failed": "❌ FAILED", "not-run": "⚪ not run"}


@dataclass
class Verification:
    results: list[CheckResult]

    @property
    def passed(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == "passed"]

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def not_run(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == "not-run"]

    @property
    def fires(self) -> list[CheckResult]:
        return [r for r in self.failed if r.severity == "fire"]

    def summary(self) -> str:
        return (f"{len(self.passed)} passed, {len(self.failed)} failed "
                f"({len(self.fires)} fire), {len(self.not_run)} not run")

    def rows(self) -> list[dict]:
        """One row per check for a table (``check``, ``result``, ``severity``, ``finding``);
        rendered by :func:`journal.verification.verification_markdown`."""
        return [{"check": r.id, "result": _MARKS[r.status], "severity": r.severity,
                 "finding": Markdown(markdown_text(r.summary) + (f" — *fix:* {markdown_text(r.fix)}"
                                                                 if r.status == "failed" and r.fix else ""))}
                for r in self.results]


def run_checks(access: VerifyAccess, checks: CheckList | None = None, *, platform: Platform | None = None,
               skip: list[str] = (), progress: Callable[[int, int, str], None] | None = None) -> Verification:
    """Run every check of ``checks`` (default: checklists/verify.toml) with ``access``, each with the
    kinds of ``platform`` (default: the default platform)."""
    checks = checks or load_checks()
    results = []
    for n, check in enumerate(checks.checks):
        if progress:
            progress(n, len(checks.checks), check.id)
        results.append(run_check(check, access, platform=platform, skipped=check.id in skip))
    return Verification(results)


def run_check(check: Check, access: VerifyAccess, *, platform: Platform | None = None,
              skipped: bool = False) -> CheckResult:
    """Run ``check`` with ``access`` and the kinds of ``platform`` (default: the default platform):
    passed, failed, or not run with the reason (switched off, missing access, a kind the platform
    lacks, or an error while checking)."""
    def result(status: Status, summary: str, **kw) -> CheckResult:
        return CheckResult(check.id, check.title, check.severity, status, summary,
                           fix=check.fix if status == "failed" else "", **kw)

    if skipped:
        return result("not-run", "switched off in [verify] skip")
    platform = platform or platforms.default()
    kind = kinds_of(platform).get(check.kind)
    if kind is None:
        return result("not-run", f"the platform {platform.name} has no check kind {check.kind!r}")
    missing = [n for n in check.needs if not access.has(n)]
    if missing:
        return result("not-run", "; ".join(access.why_not(n) for n in missing))
    t0 = time.monotonic()
    try:
        ok, summary, evidence, items = kind(access, **check.params)
    except CheckNotRun as exc:
        return result("not-run", str(exc), seconds=time.monotonic() - t0)
    except Exception as exc:  # noqa: BLE001
        # could not tell: that is not a pass, and not a finding about the box either
        text = exc.message if isinstance(exc, MigrationError) else f"{type(exc).__name__}: {exc}"
        return result("not-run", f"could not check: {redact(text)}", seconds=time.monotonic() - t0)
    return result("passed" if ok else "failed", summary, evidence=evidence, items=items,
                  seconds=round(time.monotonic() - t0, 3))


# --- the generic checks: each returns (ok, summary, evidence, items) -------------------------

def check_https_certificate(a: VerifyAccess, min_days: float = 14) -> tuple:
    """The box answers at ``https_url`` with a certificate the system (or ``ca_file``) trusts, valid
    for at least ``min_days`` more days."""
    from cryptography import x509

    url = urlsplit(a.https_url)
    if url.scheme != "https" or not url.hostname:
        raise CheckNotRun(f"{a.https_url!r} is not an https:// address")
    host, port = url.hostname, url.port or 443
    ctx = ssl.create_default_context(cafile=a.ca_file) if a.ca_file else ssl.create_default_context()
    trust_error = None
    try:
        with socket.create_connection((host, port), timeout=a.timeout_s) as sock, \
                ctx.wrap_socket(sock, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    except ssl.SSLCertVerificationError as exc:
        trust_error = exc.verify_message or str(exc)
        # read the certificate anyway, to say when it expires
        loose = ssl.create_default_context()
        loose.check_hostname, loose.verify_mode = False, ssl.CERT_NONE
        with socket.create_connection((host, port), timeout=a.timeout_s) as sock, \
                loose.wrap_socket(sock, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    cert = x509.load_der_x509_certificate(der)
    not_after = cert.not_valid_after_utc
    days = (not_after - dt.datetime.now(dt.timezone.utc)).total_seconds() / 86400
    evidence = {"url": a.https_url, "subject": cert.subject.rfc4514_string(), "not_after": not_after.isoformat(),
                "days_left": round(days, 1), "trusted": trust_error is None}
    if trust_error:
        return False, f"the certificate of {host} is not accepted: {trust_error} (valid until " \
                      f"{not_after:%Y-%m-%d}, {days:.0f} days)", evidence, []
    if days < min_days:
        return False, f"the certificate of {host} expires in {days:.1f} days ({not_after:%Y-%m-%d}); at least " \
                      f"{min_days:g} needed", evidence, []
    return True, f"valid until {not_after:%Y-%m-%d} ({days:.0f} days)", evidence, []


GENERIC_KINDS: dict[str, Callable[..., tuple]] = {"https_certificate": check_https_certificate}


def kinds_of(platform: Platform) -> dict[str, Callable[..., tuple]]:
    """The check kinds that run for ``platform``: the generic ones and the platform's own."""
    return {**GENERIC_KINDS, **(platform.checks.kinds() if platform.checks else {})}


#: every kind a check may name: the generic ones and every registered platform's (a kind the
#: configured platform lacks is reported not run)
KINDS: frozenset[str] = frozenset(kind for p in platforms.load_all() for kind in kinds_of(p))

__all__ = ["Check", "CheckList", "CheckResult", "Verification", "VerifyAccess", "kinds_of", "load_checks",
           "run_check", "run_checks"]

"""Post-migration verification: the checks of checklists/verify.toml and the code that runs them.

Each check compares the box with the cloud (or with what the case taught us to expect) and
returns a :class:`CheckResult`: ``passed``, ``failed`` (with the severity the TOML gives it) or
``not-run`` with the reason — missing access, switched off, or an error while checking. A check
that did not run is never counted as passed.

What a check may reach is one :class:`VerifyAccess`: the portals' REST clients, the box's database
(an ``sql(statements) -> results`` callable, the host agent's ``sql`` op over SSH), the box's
HTTPS address. The flows build it from the config; tests build it from the sandbox.
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

from connectors.bitrix24.delta import backup_max_id
from connectors.bitrix24.lists import iter_rows, php_query
from connectors.bitrix24.model import ENTITIES, ORIGINATOR
from connectors.bitrix24.rest import Bitrix24Client
from connectors.box_host.post_restore import REINDEX_OPTION, Sql, option
from connectors.errors import MigrationError
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

    cloud: Bitrix24Client | None = None
    box: Bitrix24Client | None = None
    box_sql: Sql | None = None
    https_url: str = ""
    ca_file: str | None = None
    domain: str = ""  # the box portal's domain, expected in notification links
    pull_options: dict[str, str] = field(default_factory=lambda: {"nginx": "Y", "push": "Y"})
    network_auth_ids: list[str] = field(default_factory=lambda: ["bitrix24"])
    cloud_apps: list[str] = field(default_factory=list)
    cutoff: dt.datetime | None = None  # the backup's cutoff
    delta_moved: bool = False  # step 2.11 has moved the records created after the backup
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
                 "finding": (r.summary + (f" — *fix:* {r.fix}" if r.status == "failed" and r.fix else ""))
                 .replace("|", "/")} for r in self.results]

def run_checks(access: VerifyAccess, checks: CheckList | None = None, *, skip: list[str] = (),
               progress: Callable[[int, int, str], None] | None = None) -> Verification:
    """Run every check of ``checks`` (default: checklists/verify.toml) with ``access``."""
    checks = checks or load_checks()
    results = []
    for n, check in enumerate(checks.checks):
        if progress:
            progress(n, len(checks.checks), check.id)
        results.append(run_check(check, access, skipped=check.id in skip))
    return Verification(results)


def run_check(check: Check, access: VerifyAccess, *, skipped: bool = False) -> CheckResult:
    def result(status: Status, summary: str, **kw) -> CheckResult:
        return CheckResult(check.id, check.title, check.severity, status, summary,
                           fix=check.fix if status == "failed" else "", **kw)

    if skipped:
        return result("not-run", "switched off in [verify] skip")
    missing = [n for n in check.needs if not access.has(n)]
    if missing:
        return result("not-run", "; ".join(access.why_not(n) for n in missing))
    t0 = time.monotonic()
    try:
        ok, summary, evidence, items = KINDS[check.kind](access, **check.params)
    except _NotRun as exc:
        return result("not-run", str(exc), seconds=time.monotonic() - t0)
    except Exception as exc:  # noqa: BLE001
        # could not tell: that is not a pass, and not a finding about the box either
        text = exc.message if isinstance(exc, MigrationError) else f"{type(exc).__name__}: {exc}"
        return result("not-run", f"could not check: {redact(text)}", seconds=time.monotonic() - t0)
    return result("passed" if ok else "failed", summary, evidence=evidence, items=items,
                  seconds=round(time.monotonic() - t0, 3))


class _NotRun(Exception):
    """The check cannot run with what it was given (said in the message)."""


# --- the checks: each returns (ok, summary, evidence, items) ---------------------------------

def _ids(client: Bitrix24Client, entity: str, flt: dict, field: str = "ID") -> set[str]:
    """``field`` of every record matching ``flt`` (fast ID-chained lists: ~1 request per 2 500 rows)."""
    return {str(r.get(field)) for r in iter_rows(client, f"crm.{entity}.list", filter=flt, select=["ID", field])}


def check_crm_counts(a: VerifyAccess) -> tuple:
    """Every record of the backup the cloud still has is on the box (by ID: the box keeps the
    backup's IDs); after step 2.11 every record created in the cloud since the backup has a box
    twin (by ORIGIN_ID), except what the loop guard holds in quarantine. Counts alone could hide a
    missing record behind one deleted in the cloud."""
    if a.cutoff is None:
        raise _NotRun("the backup's cutoff is not known ([crm_delta] cutoff or the journal of step 2.3)")
    evidence, items, bad = {}, [], []
    for entity in ENTITIES:
        max_id = backup_max_id(a.box, entity, a.cutoff)
        cloud_old = _ids(a.cloud, entity, {"<=ID": max_id})
        box_old = _ids(a.box, entity, {"<=ID": max_id})
        # echoes of our own writes in the cloud (ORIGINATOR_ID = cloud2box) are not records to move
        cloud_rows = list(iter_rows(a.cloud, f"crm.{entity}.list", select=["ID", "ORIGINATOR_ID"], after_id=max_id))
        cloud_new = {str(r["ID"]) for r in cloud_rows if str(r.get("ORIGINATOR_ID") or "") != ORIGINATOR}
        moved = _ids(a.box, entity, {"ORIGINATOR_ID": ORIGINATOR}, "ORIGIN_ID")
        held_back = cloud_new & a.quarantined.get(entity, set())
        missing_old = sorted(cloud_old - box_old, key=int)
        missing_new = sorted(cloud_new - moved - held_back, key=int)
        evidence[entity] = {"backup_max_id": max_id, "cloud_backup_records": len(cloud_old),
                            "box_backup_records": len(box_old), "deleted_in_cloud": len(box_old - cloud_old),
                            "cloud_created_since": len(cloud_new), "box_moved": len(cloud_new & moved),
                            "quarantined": len(held_back), "pending_2_11": 0 if a.delta_moved else len(missing_new)}
        if missing_old:
            bad.append(f"{len(missing_old)} {entity}(s) of the backup missing on the box")
            items.append({"entity": entity, "problem": "backup records missing on the box",
                          "cloud_ids": missing_old[:50]})
        if missing_new and a.delta_moved:
            bad.append(f"{len(missing_new)} {entity}(s) created in the cloud since the backup not on the box")
            items.append({"entity": entity, "problem": "created since the backup, not moved",
                          "cloud_ids": missing_new[:50]})
    if bad:
        return False, "; ".join(bad), evidence, items
    pending = sum(e["pending_2_11"] for e in evidence.values())
    total = sum(e["cloud_backup_records"] for e in evidence.values())
    summary = f"all {total} records of the backup are on the box"
    if pending:
        summary += f"; {pending} created in the cloud since the backup move at step 2.11"
    elif a.delta_moved:
        summary += f"; {sum(e['box_moved'] for e in evidence.values())} created since the backup moved"
    held = sum(e["quarantined"] for e in evidence.values())
    if held:
        summary += f"; {held} held in quarantine by the loop guard"
    return True, summary, evidence, items


def _users(client: Bitrix24Client) -> list[dict]:
    users, start = [], 0
    for _ in range(2_000):  # 100 000 users at 50 a page: a bound, not a limit anyone meets
        body = client.call("user.get", {"start": start})
        users.extend(body.get("result") or [])
        if "next" not in body:
            return users
        start = int(body["next"])
    raise ValueError(f"{client.name}: user.get did not end")


def _active(u: dict) -> bool:
    return u.get("ACTIVE") in (True, "Y", "1", 1, "true")


def check_users(a: VerifyAccess) -> tuple:
    box_mail = {str(u.get("EMAIL") or "").lower() for u in _users(a.box) if _active(u)}
    missing = [{"user": f"{u.get('NAME', '')} {u.get('LAST_NAME', '')}".strip(), "email": u.get("EMAIL"),
                "problem": "no active account on the box"}
               for u in _users(a.cloud) if _active(u) and u.get("EMAIL") and str(u["EMAIL"]).lower() not in box_mail]
    resets: list[dict] = []
    resets_note = "password resets not checked (no access to the box's database)"
    if a.box_sql is not None:
        ids = ", ".join("'" + x.replace("'", "") + "'" for x in a.network_auth_ids) or "''"
        rows = a.box_sql([f"SELECT LOGIN, COALESCE(EMAIL, '') FROM b_user WHERE ACTIVE='Y' AND "
                          f"EXTERNAL_AUTH_ID IN ({ids}) ORDER BY ID"])[0]
        resets = [{"user": r[0], "email": r[1], "problem": "Bitrix24.Network user: send a password reset"} for r in rows]
        resets_note = f"{len(resets)} Bitrix24.Network user(s) need a password reset"
    evidence = {"missing_on_box": len(missing), "password_resets": len(resets)}
    if missing:
        names = ", ".join(str(m["email"]) for m in missing[:5])
        return False, f"{len(missing)} active cloud user(s) cannot log in to the box: {names}; {resets_note}", \
            evidence, missing + resets
    return True, f"every active cloud user has a box account; {resets_note}", evidence, resets


def check_notification_domain(a: VerifyAccess) -> tuple:
    if not a.domain:
        raise _NotRun("the box portal's domain is not known: set [post_restore] domain or [migration] box_portal")
    server_name = option(a.box_sql, "main", "server_name") or ""
    sites = a.box_sql(["SELECT LID, COALESCE(SERVER_NAME, '') FROM b_lang WHERE ACTIVE='Y'"])[0]
    wrong = [f"main.server_name={server_name!r}"] if server_name != a.domain else []
    wrong += [f"site {lid} SERVER_NAME={name!r}" for lid, name in sites if name != a.domain]
    evidence = {"expected": a.domain, "server_name": server_name, "sites": {lid: name for lid, name in sites}}
    if wrong:
        return False, f"links would lack the domain {a.domain}: " + ", ".join(wrong), evidence, []
    return True, f"main module and {len(sites)} site(s) use {a.domain}", evidence, []


def check_push_pull(a: VerifyAccess) -> tuple:
    current = {k: option(a.box_sql, "pull", k) for k in a.pull_options}
    wrong = {k: v for k, v in current.items() if v != a.pull_options[k]}
    evidence = {"expected": a.pull_options, "found": current}
    if wrong:
        return False, "push & pull server off: " + ", ".join(f"pull.{k}={v!r}" for k, v in wrong.items()), evidence, []
    return True, "push & pull server enabled (" + ", ".join(f"pull.{k}={v}" for k, v in current.items()) + ")", \
        evidence, []


def check_search_index(a: VerifyAccess) -> tuple:
    count = int(a.box_sql(["SELECT COUNT(*) FROM b_search_content"])[0][0][0])
    queued = option(a.box_sql, "search", REINDEX_OPTION) == "Y"
    evidence = {"indexed_items": count, "reindex_queued": queued}
    if not count:
        return False, "the search index is empty" + (" (a reindex is queued, not yet run)" if queued else ""), \
            evidence, []
    return True, f"{count} item(s) in the search index", evidence, []


def check_marketplace_apps(a: VerifyAccess) -> tuple:
    if not a.cloud_apps:
        raise _NotRun("the cloud's apps are not listed: copy their codes from the cloud's Applications → "
                      "Installed page into [verify] cloud_apps")
    rows = a.box_sql(["SELECT CODE, COALESCE(APP_NAME, ''), ACTIVE, INSTALLED FROM b_rest_app"])[0]
    working = {r[0] for r in rows if r[2] == "Y" and r[3] == "Y"}
    names = {r[0]: r[1] for r in rows}
    missing = [{"app": code, "name": names.get(code, ""),
                "problem": "installed but not active" if code in names else "not installed on the box"}
               for code in a.cloud_apps if code not in working]
    evidence = {"cloud_apps": list(a.cloud_apps), "box_apps": sorted(working)}
    if missing:
        return False, f"{len(missing)} app(s) of the cloud missing on the box: " + \
            ", ".join(m["app"] for m in missing), evidence, missing
    return True, f"all {len(a.cloud_apps)} app(s) of the cloud are installed and active", evidence, []


def _comment_counts(client: Bitrix24Client, task_ids: list[str], cutoff: dt.datetime) -> dict[str, int | None]:
    cmd = {f"t{tid}": "task.commentitem.getlist?" + php_query(
        {"TASKID": tid, "ORDER": {"ID": "asc"}, "FILTER": {"<=POST_DATE": cutoff.isoformat(timespec="seconds")}})
        for tid in task_ids}
    res = client.batch(cmd)
    out: dict[str, int | None] = {}
    for tid in task_ids:
        key = f"t{tid}"
        if key in res["result"]:
            out[tid] = len(res["result"][key] or [])
            continue
        err = res["result_error"].get(key) or {}
        text = str(err.get("error_description", "")).lower()
        # the tasks module answers a missing task with "action failed" (#8); anything else (scope,
        # access, arguments) says nothing about the comments
        if "not found" not in text and "action_failed" not in text and "action failed" not in text:
            # a scope or permission problem says nothing about the comments: the check cannot tell
            raise ValueError(f"{client.name}: task.commentitem.getlist for task {tid} failed: {err.get('error')}")
        out[tid] = None  # the task is not there
    return out


def check_task_comments(a: VerifyAccess, sample: int = 20) -> tuple:
    if a.cutoff is None:
        raise _NotRun("the backup's cutoff is not known: comments posted after it are not in the backup")
    body = a.cloud.call("tasks.task.list", {"order": {"ID": "desc"}, "select": ["ID", "TITLE"],
                                            "filter": {"<=CREATED_DATE": a.cutoff.isoformat(timespec="seconds")}})
    tasks = (body.get("result") or {}).get("tasks") or []
    ids = [str(t.get("id") or t.get("ID")) for t in tasks][: max(1, min(int(sample), 50))]
    if not ids:
        return True, "the cloud has no tasks from before the backup to compare", {"sampled": 0}, []
    cloud, box = _comment_counts(a.cloud, ids, a.cutoff), _comment_counts(a.box, ids, a.cutoff)
    ids = [tid for tid in ids if cloud[tid] is not None]  # gone from the cloud since the list: nothing to compare
    short = [{"task": tid, "cloud_comments": cloud[tid], "box_comments": box[tid],
              "problem": "task missing on the box" if box[tid] is None else "fewer comments on the box"}
             for tid in ids if box[tid] is None or cloud[tid] > box[tid]]
    evidence = {"sampled": len(ids), "cloud_comments": sum(v or 0 for v in cloud.values()),
                "box_comments": sum(v or 0 for v in box.values())}
    if short:
        return False, f"{len(short)} of {len(ids)} sampled task(s) show fewer comments on the box", evidence, short
    return True, f"{len(ids)} sampled task(s): {evidence['box_comments']} comment(s) posted before the backup, " \
                 f"equal in both portals", evidence, []


def check_https_certificate(a: VerifyAccess, min_days: float = 14) -> tuple:
    from cryptography import x509

    url = urlsplit(a.https_url)
    if url.scheme != "https" or not url.hostname:
        raise _NotRun(f"{a.https_url!r} is not an https:// address")
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


def check_telephony(a: VerifyAccess) -> tuple:
    """At least one outgoing line in the telephony module (``voximplant.line.get``, allowed for a
    webhook): the customer's PBX connected as a SIP line (``sip<N>``), or a rented number. The
    apps' external lines (``telephony.externalLine.get``) answer only in an app's context."""
    lines = a.box.call("voximplant.line.get").get("result") or {}
    lines = lines if isinstance(lines, dict) else {}  # PHP sends an empty object as []
    evidence = {"lines": lines}
    if not lines:
        return False, "no line in the box's telephony module: calls would not reach the CRM", evidence, []
    return True, f"{len(lines)} line(s): " + ", ".join(f"{k} ({v})" for k, v in list(lines.items())[:5]), evidence, []


KINDS: dict[str, Callable[..., tuple]] = {
    "crm_counts": check_crm_counts, "users": check_users, "notification_domain": check_notification_domain,
    "push_pull": check_push_pull, "search_index": check_search_index, "marketplace_apps": check_marketplace_apps,
    "task_comments": check_task_comments, "https_certificate": check_https_certificate,
    "telephony": check_telephony,
}

__all__ = ["Check", "CheckList", "CheckResult", "Verification", "VerifyAccess", "load_checks", "run_check",
           "run_checks"]

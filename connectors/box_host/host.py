"""The box host over SSH: preflight, staging of verified parts, restore of files and database.

The heavy lifting runs ON the host: the platform's restore agent (one stdlib-only Python file,
``Platform.restore.agent_source``) is uploaded into the staging dir and run with the host's
python3 — the parts never travel back, and the restore needs nothing installed but Python and
the DB client. Requests (with the DB and archive passwords) go over stdin; the agent answers
with one JSON line.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from connectors.errors import AuthError, FatalError, IntegrityError, TransientError
from connectors.secrets import redact
from connectors.ssh import RemoteHost

from .configuration import BoxHostSection, PreflightSettings

AGENT_DIR = ".c2b"
# Runs the agent from stdin: a length line, the agent's source, then its request (read by its main()).
_RUN_FROM_STDIN = ("import sys; b = sys.stdin.buffer; n = int(b.readline()); src = b.read(n); "
                   "ns = {'__name__': 'c2b_agent'}; exec(compile(src, 'restore_agent.py', 'exec'), ns); "
                   "sys.exit(ns['main']())")


class UnsafeArchiveError(IntegrityError):
    """An archive member would land outside the site root (absolute path, ``..``, link out)."""


@dataclass
class Check:
    """One preflight check: ``status`` is pass | fail | skip."""

    name: str
    status: str
    found: str
    needed: str
    fix: str = ""


@dataclass
class PreflightReport:
    checks: list[Check]
    facts: dict

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    def table(self) -> str:
        """A Markdown table: one row per check."""
        rows = ["| check | result | found | needed | fix |", "|---|---|---|---|---|"]
        rows += [f"| {c.name} | {c.status.upper()} | {c.found} | {c.needed} | {c.fix} |" for c in self.checks]
        return "\n".join(rows)

    def evidence(self) -> dict:
        return {"checks": [asdict(c) for c in self.checks], "ok": self.ok}


@dataclass(frozen=True)
class LocalPart:
    """A verified part on this machine (what the downloader produced)."""

    name: str
    path: Path
    size: int
    sha256: str


@dataclass
class StageReport:
    sent: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # already on the host with the right hash
    bytes_sent: int = 0
    duration_s: float = 0.0
    remote_sha256: dict[str, str] = field(default_factory=dict)


def _version(text: str | None) -> tuple[int, ...]:
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    return tuple(int(g) for g in m.groups() if g is not None) if m else ()


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


class BoxHost:
    """Operations on the box host. ``remote`` is a connected-on-demand :class:`RemoteHost`."""

    def __init__(self, settings: BoxHostSection, remote: RemoteHost, *, agent_source: Path,
                 db_password: str | None = None, archive_password: str | None = None) -> None:
        self.settings = settings
        self.remote = remote
        self.agent_source = agent_source
        self._db_password = db_password
        self._archive_password = archive_password
        self._agent_ready = False

    @property
    def agent_path(self) -> str:
        return f"{self.settings.staging_dir.rstrip('/')}/{AGENT_DIR}/{self.agent_source.name}"

    def _db(self, database: str | None = None) -> dict:
        d = self.settings.db
        return {"host": d.host, "port": d.port, "user": d.user, "password": self._db_password or "",
                "database": database or d.database, "client": d.client, "site_host": d.site_host}

    # -- the agent ------------------------------------------------------------------------
    def mkdir(self, path: str) -> None:
        status, _, err = self.remote.run(f"mkdir -p -- {shlex.quote(path)}", timeout=60)
        if status != 0:
            raise FatalError(f"{self.remote.label}: cannot create {path}: {redact(err.strip())[:300]}",
                             fix="check the path and the SSH user's rights on the host")

    def deploy_agent(self) -> None:
        """Upload the agent unless the host already has this exact version."""
        if self._agent_ready:
            return
        local = self.agent_source.read_bytes()
        self.mkdir(f"{self.settings.staging_dir.rstrip('/')}/{AGENT_DIR}")
        if self.remote.sha256(self.agent_path) != hashlib.sha256(local).hexdigest():
            self.remote.put(self.agent_source, self.agent_path, resume=False)
        self._agent_ready = True

    def call(self, op: str, request: dict, *, timeout: float | None = None) -> dict:
        """Run one agent operation; return its JSON answer or raise the matching error."""
        self.deploy_agent()
        payload = json.dumps({"op": op, **request}).encode()
        command = f"{shlex.quote(self.settings.python)} {shlex.quote(self.agent_path)} {op}"
        status, out, err = self.remote.run(command, timeout=timeout or self.settings.command_timeout_s, input=payload)
        lines = [line for line in out.strip().splitlines() if line.startswith("{")]
        if not lines:
            if status == 127 or "not found" in err:
                raise FatalError(f"{self.remote.label}: {self.settings.python} is not available on the host",
                                 fix="install Python 3 on the box host or set [box_host] python to its path")
            raise TransientError(f"{self.remote.label}: restore agent ({op}) gave no answer "
                                 f"(exit {status}): {redact(err.strip())[-400:]}",
                                 fix="look at the host's load and free disk, then re-run the step")
        answer = json.loads(lines[-1])
        if answer.get("ok"):
            return answer
        message, fix = redact(answer.get("error", "?")), answer.get("fix") or None
        kind = answer.get("kind")
        if kind == "unsafe":
            raise UnsafeArchiveError(f"restore refused: {message}", fix="do not restore this archive; ask the vendor "
                                     "for a new backup and report the member named here")
        if kind == "auth":
            raise AuthError(message, fix=fix)
        if kind == "transient":
            raise TransientError(message, fix=fix)
        if "corrupt" in message or "truncated" in message or "checksum" in message or "holds" in message:
            raise IntegrityError(message, fix=fix)
        raise FatalError(f"{self.remote.label}: {op}: {message}", fix=fix)

    def facts_read_only(self, *, timeout: float = 60) -> dict:
        """The agent's ``facts`` (paths, python, the DB login and whether the database exists) without
        uploading it: its source and the request travel over stdin and run from memory, so nothing is
        written on the host (``cloud2box check``). The DB password travels over stdin, as always."""
        source = self.agent_source.read_bytes()
        request = json.dumps({"op": "facts", "paths": [self.settings.site_root, self.settings.staging_dir],
                              "db": self._db()}).encode()
        status, out, err = self.remote.run(f"{shlex.quote(self.settings.python)} -c {shlex.quote(_RUN_FROM_STDIN)}",
                                           timeout=timeout, input=b"%d\n" % len(source) + source + request)
        lines = [line for line in out.strip().splitlines() if line.startswith("{")]
        if not lines:
            if status == 127 or "not found" in err:
                raise FatalError(f"{self.remote.label}: {self.settings.python} is not available on the host",
                                 fix="install Python 3 on the box host or set [box_host] python to its path")
            raise FatalError(f"{self.remote.label}: the restore agent's facts gave no answer (exit {status}): "
                             f"{redact(err.strip())[-300:]}", fix="run the same python on the host by hand and "
                             "look at its error")
        answer = json.loads(lines[-1])
        if not answer.get("ok"):
            raise FatalError(f"{self.remote.label}: facts: {redact(answer.get('error', '?'))}", fix=answer.get("fix"))
        return answer

    # -- preflight (steps 1.1, 1.2, 1.5) ------------------------------------------------------
    def facts(self, *, with_db: bool = True) -> dict:
        paths = [self.settings.site_root, self.settings.staging_dir]
        before = time.time()
        facts = self.call("facts", {"paths": paths, "db": self._db() if with_db else None}, timeout=120)
        after = time.time()
        # the host read its clock between our two readings: compare with our midpoint
        facts["clock_skew_s"] = round((facts["time"] + facts["time_after"]) / 2 - (before + after) / 2, 3)
        facts["round_trip_s"] = round(after - before, 3)
        return facts

    def preflight(self, *, required_bytes: int = 0, groups: tuple[str, ...] = ("deploy", "resources", "box")) -> PreflightReport:
        """Check the host against the thresholds; ``required_bytes`` is what the restore will
        need on the staging/site disk (parts + unpacked + DB)."""
        p: PreflightSettings = self.settings.preflight
        facts = self.facts(with_db=p.check_db and "box" in groups)
        checks: list[Check] = []

        def add(group: str, name: str, ok: bool | None, found: str, needed: str, fix: str) -> None:
            if group in groups:
                status = "skip" if ok is None else "pass" if ok else "fail"
                checks.append(Check(name, status, found, needed, fix if status == "fail" else ""))

        add("deploy", "SSH login and host key", True, self.remote.label, "verified host key", "")
        add("deploy", "operating system", facts["system"] == "Linux", f"{facts.get('os')} ({facts['release']})",
            "Linux", "the box runs on a Linux host")
        add("deploy", "python for the restore agent", _version(facts["python"]) >= (3, 8), facts["python"], "≥ 3.8",
            "install python3 ≥ 3.8 on the host")
        for path, info in facts["paths"].items():
            add("deploy", f"path {path}", info["writable"], "writable" if info["writable"] else "not writable",
                "writable by the SSH user", f"create {path} and give the SSH user write access")
        add("resources", "CPU cores", (facts["cpus"] or 0) >= p.min_cpus if p.min_cpus else None,
            str(facts["cpus"]), f"≥ {p.min_cpus}", "give the host more CPU cores")
        ram = facts.get("ram_bytes") or 0
        add("resources", "RAM", ram >= p.min_ram_mib * 2**20 if p.min_ram_mib else None, f"{ram / 2**20:.0f} MiB",
            f"≥ {p.min_ram_mib} MiB", "give the host more memory")
        # staging and site root may share a disk or not; the smaller free space must hold it all (conservative)
        free = min(d["free_bytes"] for d in facts["disk"].values())
        add("resources", "free disk", free >= required_bytes if required_bytes else None, _gib(free),
            f"≥ {_gib(required_bytes)} (parts + unpacked + DB)",
            f"free {_gib(max(required_bytes - free, 0))} more on the disk of {self.settings.staging_dir}")
        ports = set(facts["ports"])
        for port in p.ports:
            add("resources", f"port {port} listening", port in ports, "listening" if port in ports else "closed",
                "listening", f"start the web server / service on port {port}")
        skew = facts["clock_skew_s"]
        add("resources", "clock skew", abs(skew) <= p.max_clock_skew_s + facts["round_trip_s"] if p.max_clock_skew_s
            else None, f"{skew:+.1f} s", f"≤ {p.max_clock_skew_s:g} s", "enable NTP (chrony/systemd-timesyncd)")
        php = facts.get("php")
        add("box", "PHP version", (_version(php) >= _version(p.php_min)) if p.php_min else None, php or "not installed",
            f"≥ {p.php_min}" if p.php_min else "not checked", f"install PHP ≥ {p.php_min} (the box edition needs it)")
        if p.check_db:
            version = facts.get("db_version")
            maria = "mariadb" in (version or "").lower()
            minimum = p.mariadb_min if maria else p.mysql_min
            ok = version is not None and _version(version) >= _version(minimum)
            found = version or f"no login: {facts.get('db_error')}"
            add("box", "database version", ok, found, f"MariaDB ≥ {p.mariadb_min} or MySQL ≥ {p.mysql_min}",
                "start MariaDB/MySQL, create the portal's DB user, or upgrade the server"
                if version is None else f"upgrade the database server to ≥ {minimum}")
        return PreflightReport(checks, facts)

    # -- staging -------------------------------------------------------------------------------
    def stage(self, parts: list[LocalPart], *, on_bytes: Callable[[int], None] | None = None) -> StageReport:
        """Send the verified parts into the staging dir; the remote sha256 must equal the local one.

        A part already there with the right hash is kept (re-runs send nothing twice); a shorter
        one is resumed by offset; a wrong one is replaced. With ``parts_on_host`` nothing is
        sent, the hashes are still checked.
        """
        report = StageReport()
        started = time.monotonic()
        self.mkdir(self.settings.staging_dir)
        for part in parts:
            remote = self.remote_part(part.name)
            digest = self.remote.sha256(remote) if self.remote.exists(remote) else None
            if digest == part.sha256:
                report.kept.append(part.name)
            elif self.settings.parts_on_host:
                raise IntegrityError(f"{part.name} on the host has sha256 {digest or 'none'}, the verified copy "
                                     f"{part.sha256}", fix="download the part again on the host, then re-run")
            else:
                have = self.remote.size(remote) if digest is not None else 0
                resume = 0 < have < part.size  # a shorter copy is a cut-off upload: continue it
                report.bytes_sent += self.remote.put(part.path, remote, resume=resume, on_data=on_bytes)
                digest = self.remote.sha256(remote)
                if digest is None:
                    raise FatalError(f"{self.remote.label}: sha256sum is not available",
                                     fix="install coreutils on the host")
                if digest != part.sha256:
                    if resume:  # the old half may have been wrong: send the whole part once more
                        report.bytes_sent += self.remote.put(part.path, remote, resume=False, on_data=on_bytes)
                        digest = self.remote.sha256(remote)
                    if digest != part.sha256:
                        raise IntegrityError(f"{part.name} on the host has sha256 {digest} after the upload, the "
                                             f"verified copy {part.sha256}",
                                             fix="check the host's disk (dmesg, SMART) and free space, then re-run")
                report.sent.append(part.name)
            report.remote_sha256[part.name] = digest
        report.duration_s = time.monotonic() - started
        return report

    def remote_part(self, name: str) -> str:
        return f"{self.settings.staging_dir.rstrip('/')}/{name}"

    # -- restore -------------------------------------------------------------------------------
    def restore_files(self, part_names: list[str], *, run_key: str = "", force: bool = False, **hooks) -> dict:
        """Extract the staged parts (in this order) into the site root; see the agent.

        A restore that finished for the same parts and ``run_key`` (the migration run) is not
        repeated; a new run (the cutover after the rehearsal) always restores afresh.
        """
        key = hashlib.md5(self._archive_password.encode()).hexdigest() if self._archive_password else None
        request = {"parts": [self.remote_part(n) for n in part_names], "target": self.settings.site_root,
                   "state": f"{self.settings.staging_dir.rstrip('/')}/{AGENT_DIR}/restore-state.json",
                   "key": key, "force": force, "run_key": run_key, **hooks}
        return self.call("restore", request)

    def import_db(self, dump_files: list[str], *, count_rows: bool = True) -> dict:
        """Import the dump files (site-root relative, in order) into a recreated database."""
        root = self.settings.site_root.rstrip("/")
        return self.call("import_db", {"db": self._db(), "files": [f"{root}/{f}" for f in dump_files],
                                       "count_rows": count_rows})

    def write_site_settings(self) -> dict:
        return self.call("write_settings", {"target": self.settings.site_root, "db": self._db()}, timeout=120)

    def sql(self, statements: list[str]) -> list[list[list[str | None]]]:
        """Result rows of each statement, run on the portal's DB."""
        return self.call("sql", {"db": self._db(), "statements": statements}, timeout=600)["results"]

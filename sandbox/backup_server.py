"""The sandbox's backup delivery server: the vendor's protocol and plain part URLs, on loopback.

Routes (all with HTTP ``Range``, HTTP/1.1 keep-alive):

- ``GET /buy_tmp/backup.php?license=md5(KEY)&action=get_info`` → ``<files><file name size/>…``
- ``GET /buy_tmp/backup.php?license=…&action=read_file&file_name=N&check_word=md5('BITRIXCLOUDSERVICE'.PASSWORD)``
  → ``<file><host/><path/><headers><header name="…">…</header></headers></file>``: where the part is
  and the signed header the storage wants.
- ``GET /storage/NAME`` with the signed header: the part's bytes (403 without it).
- ``GET|HEAD /parts/NAME``: the part's bytes, no auth, with an S3-style ``ETag`` (md5);
  ``GET /parts/manifest.json``: ``{name: {size, sha256, md5}}``.

Each connection is throttled (``rate`` bytes/s, default ~800 KB/s like the cloud; 0 = unthrottled).
Faults are switched on at run time through :attr:`BackupServer.faults` (and the command line):
flipped bytes in a part, a connection drop mid-body, an ignored Range (200 with the whole part),
a 200 HTML error page, 503/429 with Retry-After.

Run: ``python -m sandbox.backup_server --make 8M --rate 800k --corrupt 1``
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit
from xml.sax.saxutils import quoteattr

from sandbox.backup_maker import parse_part_name

INFO_PATH = "/buy_tmp/backup.php"
SIGNATURE_HEADER = "X-Bitrix-Cloud-Signature"
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
HTML_ERROR = (b"<!DOCTYPE html><html><head><title>Error</title></head><body><h1>Service temporarily "
              b"unavailable</h1><p>Please try again later.</p></body></html>")


def md5_hex(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def check_word(password: str) -> str:
    """What the vendor's restore script sends as ``check_word``."""
    return md5_hex("BITRIXCLOUDSERVICE" + password)


@dataclass
class _Fault:
    kind: str  # drop | ignore_range | html | unavailable
    part: str | None  # None: any part
    times: int | None  # None: until cleared
    after_bytes: int = 0
    retry_after: float = 1.0
    status: int = 503


@dataclass
class Stats:
    """What the server sent; the resume benchmark reads ``body_bytes``."""

    requests: int = 0
    body_bytes: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


class Faults:
    """Faults to inject, thread-safe. Each ``times`` fault fires that many times, then is gone."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self.corrupt: dict[str, list[int]] = {}
        self.fired: dict[str, int] = {}

    def corrupt_part(self, part: str, offsets: list[int] | None = None, *, times: int | None = None) -> None:
        """Flip bytes of ``part`` on the wire (the file on disk stays good: a mirror can serve it).

        Default: three bytes in the second half, past the header member. ``times``: how many
        responses carrying a flipped byte (None: until cleared).
        """
        with self._lock:
            self.corrupt[part] = [list(offsets) if offsets is not None else None, times]

    def drop(self, *, part: str | None = None, after_bytes: int = 64 * 1024, times: int | None = 1) -> None:
        """Close the connection after ``after_bytes`` of a body that promised more."""
        self._add(_Fault("drop", part, times, after_bytes=after_bytes))

    def ignore_range(self, *, part: str | None = None, times: int | None = 1) -> None:
        """Answer a Range request with 200 and the whole part."""
        self._add(_Fault("ignore_range", part, times))

    def html_error(self, *, part: str | None = None, times: int | None = 1) -> None:
        """Answer with status 200 and an HTML error page instead of the data."""
        self._add(_Fault("html", part, times))

    def unavailable(self, *, part: str | None = None, times: int | None = 1, retry_after: float = 1.0,
                    status: int = 503) -> None:
        """Answer 503 (or 429) with ``Retry-After``."""
        self._add(_Fault("unavailable", part, times, retry_after=retry_after, status=status))

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self.corrupt.clear()

    def _add(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def take(self, part: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.part in (None, part):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            self._faults.remove(fault)
                    self.fired[fault.kind] = self.fired.get(fault.kind, 0) + 1
                    return fault
        return None

    def flips(self, part: str, size: int, start: int, length: int) -> list[int]:
        """Offsets to flip in the response bytes ``start … start+length-1`` of ``part``."""
        with self._lock:
            entry = self.corrupt.get(part)
            if entry is None:
                return []
            offsets = entry[0] if entry[0] is not None else [size // 2, size // 2 + 1000, size - 100]
            hit = [o for o in offsets if start <= o < start + length]
            if hit and entry[1] is not None:
                entry[1] -= 1
                if entry[1] <= 0:
                    del self.corrupt[part]
            if hit:
                self.fired["corrupt"] = self.fired.get("corrupt", 0) + 1
            return hit


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, fmt, *args):  # quiet: tests and the demo print their own lines
        pass

    # -- routing --------------------------------------------------------------------------
    def do_HEAD(self):
        self._route(head=True)

    def do_GET(self):
        self._route(head=False)

    def _route(self, head: bool) -> None:
        owner = self.server.owner
        url = urlsplit(self.path)
        with owner.lock:
            owner.stats.requests += 1
        try:
            if url.path == INFO_PATH:
                self._vendor_api(parse_qs(url.query))
            elif url.path == "/_stats":  # for benchmarks that run the server in its own process
                with owner.lock:
                    stats = {"requests": owner.stats.requests, "body_bytes": owner.stats.body_bytes}
                self._small(200, json.dumps(stats).encode(), "application/json")
            elif url.path == "/parts/manifest.json":
                self._small(200, json.dumps(owner.manifest()).encode(), "application/json")
            elif url.path.startswith("/parts/"):
                self._part(unquote(url.path[len("/parts/"):]), head, signed=False)
            elif url.path.startswith("/storage/"):
                self._part(unquote(url.path[len("/storage/"):]), head, signed=True)
            else:
                self._small(404, b"not found", "text/plain")
        except (ConnectionError, socket.timeout, OSError):
            self.close_connection = True

    def _small(self, status: int, body: bytes, ctype: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _vendor_api(self, q: dict) -> None:
        owner = self.server.owner
        arg = lambda k: (q.get(k) or [""])[0]  # noqa: E731
        if not hmac.compare_digest(arg("license"), md5_hex(owner.licence_key)):
            self._small(403, b"<error>LICENSE_NOT_FOUND</error>", "text/xml")
            return
        if arg("action") == "get_info":
            rows = "".join(f"<file name={quoteattr(p.name)} size=\"{p.stat().st_size}\"/>" for p in owner.part_paths())
            self._small(200, f"<?xml version=\"1.0\"?><files>{rows}</files>".encode(), "text/xml")
        elif arg("action") == "read_file":
            if not hmac.compare_digest(arg("check_word"), check_word(owner.password)):
                self._small(403, b"<error>WRONG_CHECK_WORD</error>", "text/xml")
                return
            name = arg("file_name")
            if not (owner.directory / name).is_file() or parse_part_name(name) is None:
                self._small(404, b"<error>FILE_NOT_FOUND</error>", "text/xml")
                return
            body = (f"<?xml version=\"1.0\"?><file><host>{owner.host}:{owner.port}</host>"
                    f"<path>/storage/{quote(name)}</path><headers><header name=\"{SIGNATURE_HEADER}\">"
                    f"{owner.signature(name)}</header></headers></file>")
            self._small(200, body.encode(), "text/xml")
        else:
            self._small(400, b"<error>UNKNOWN_ACTION</error>", "text/xml")

    # -- the data ---------------------------------------------------------------------------
    def _part(self, name: str, head: bool, signed: bool) -> None:
        owner = self.server.owner
        path = owner.directory / name
        if "/" in name or parse_part_name(name) is None or not path.is_file():
            self._small(404, b"no such part", "text/plain")
            return
        if signed and not hmac.compare_digest(self.headers.get(SIGNATURE_HEADER, ""), owner.signature(name)):
            self._small(403, b"<Error><Code>AccessDenied</Code></Error>", "application/xml")
            return
        size = path.stat().st_size
        fault = None if head else owner.faults.take(name)
        if fault and fault.kind == "unavailable":
            self._small(fault.status, b"busy", "text/plain", {"Retry-After": f"{fault.retry_after:g}"})
            return
        if fault and fault.kind == "html":
            self._small(200, HTML_ERROR, "text/html; charset=utf-8")
            return
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng and not (fault and fault.kind == "ignore_range"):
            m = _RANGE_RE.match(rng.strip())
            if not m or (not m.group(1) and not m.group(2)):
                self._small(416, b"bad range", "text/plain", {"Content-Range": f"bytes */{size}"})
                return
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:  # suffix range: the last N bytes
                start = max(0, size - int(m.group(2)))
            if start >= size or start > end:
                self._small(416, b"range not satisfiable", "text/plain", {"Content-Range": f"bytes */{size}"})
                return
            status = 206
        length = end - start + 1
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        if not signed and owner.etag:
            self.send_header("ETag", f"\"{owner.md5_of(path)}\"")
        self.end_headers()
        if head:
            return
        limit = fault.after_bytes if fault and fault.kind == "drop" else None
        self._send_file(path, name, start, length, size, limit)

    def _send_file(self, path: Path, name: str, start: int, length: int, size: int, limit: int | None) -> None:
        owner = self.server.owner
        flips = owner.faults.flips(name, size, start, length)
        rate = owner.rate
        if not rate and not flips and limit is None:
            # Unthrottled and clean: let the kernel copy (keeps the sandbox's CPU for the client).
            with open(path, "rb") as f:
                self.wfile.flush()
                sent = self.connection.sendfile(f, start, length)
            with owner.lock:
                owner.stats.body_bytes += sent
            return
        piece = max(4096, min(256 * 1024, rate // 20)) if rate else 256 * 1024
        began = time.monotonic()
        sent = 0
        with open(path, "rb") as f:
            f.seek(start)
            while sent < length:
                want = min(piece, length - sent)
                if limit is not None:
                    want = min(want, limit - sent)
                    if want <= 0:
                        # Drop mid-body: the client was promised `length` bytes and gets fewer.
                        self.close_connection = True
                        self.wfile.flush()
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                data = f.read(want)
                if not data:
                    break
                if flips:
                    buf = bytearray(data)
                    for o in flips:
                        if start + sent <= o < start + sent + len(data):
                            buf[o - start - sent] ^= 0xFF
                    data = bytes(buf)
                if rate:
                    # Pace each connection: the cloud's storage caps every stream, not the client.
                    ahead = (sent + len(data)) / rate - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)
                self.wfile.write(data)
                sent += len(data)
                with owner.lock:
                    owner.stats.body_bytes += len(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    allow_reuse_address = True
    owner: "BackupServer"

    def handle_error(self, request, client_address) -> None:
        pass  # clients hang up mid-body on purpose (kill -9 tests, dropped connections): not news


class BackupServer:
    """Serve the backup parts in ``directory`` on ``host`` (loopback) in a background thread.

    Use as a context manager or call :meth:`start` / :meth:`close`.
    """

    def __init__(self, directory: str | Path, *, licence_key: str = "SANDBOX-LICENCE-KEY-0001",
                 password: str = "sandbox-backup-password", rate: int = 800 * 1024, host: str = "127.0.0.1",
                 port: int = 0, etag: bool = True) -> None:
        self.directory = Path(directory)
        self.licence_key = licence_key
        self.password = password
        self.rate = int(rate)
        self.host = host
        self.etag = etag
        self.faults = Faults()
        self.stats = Stats()
        self.lock = threading.Lock()
        self._md5_cache: dict[tuple, str] = {}
        self._secret = os.urandom(16)
        self._server = _Server((host, port), _Handler)
        self._server.owner = self
        self.port = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    # -- addresses --------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def info_url(self) -> str:
        """The vendor protocol's endpoint (``backup.php``)."""
        return self.url + INFO_PATH

    @property
    def manifest_url(self) -> str:
        return self.url + "/parts/manifest.json"

    def part_paths(self) -> list[Path]:
        parts = [p for p in self.directory.iterdir() if p.is_file() and parse_part_name(p.name)]
        return sorted(parts, key=lambda p: parse_part_name(p.name)[1])

    def part_urls(self) -> list[str]:
        return [f"{self.url}/parts/{quote(p.name)}" for p in self.part_paths()]

    def signature(self, name: str) -> str:
        return hmac.new(self._secret, name.encode(), "sha256").hexdigest()

    def md5_of(self, path: Path) -> str:
        st = path.stat()
        key = (path.name, st.st_size, st.st_mtime_ns)
        if key not in self._md5_cache:
            h = hashlib.md5()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            self._md5_cache[key] = h.hexdigest()
        return self._md5_cache[key]

    def manifest(self) -> dict[str, dict]:
        out = {}
        for p in self.part_paths():
            sha = hashlib.sha256(p.read_bytes()).hexdigest()
            out[p.name] = {"size": p.stat().st_size, "sha256": sha, "md5": self.md5_of(p)}
        return out

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> "BackupServer":
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"backup-server-{self.port}", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread:
            self._thread.join(timeout=10)

    def __enter__(self) -> "BackupServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


ENCRYPTION_SECRET = "backup_encryption_password"  # the [secrets] entry [box_host] archive_password_secret names


@dataclass
class BackupSandbox:
    """The demo's backup delivery: the server, the SSH mirror and what a config needs to use them."""

    server: BackupServer
    mirror: object | None  # sandbox.ssh_mirror.SshMirror
    backup: object  # sandbox.backup_maker.BackupSet
    corrupt_part: str | None
    secrets: dict[str, str]  # [secrets] entry name -> env var name
    env: dict[str, str]  # env var name -> value (set these before the flow resolves secrets)

    def toml_lines(self, *, connections: int = 4, chunk_mib: float = 0.5) -> list[str]:
        """The ``[backup]`` section (and sub-tables) pointing at these servers."""
        lines = [
            "[backup]",
            'source = "bitrix24"',
            f'info_url = "{self.server.info_url}"',
            'licence_key_secret = "backup_licence_key"',
            'password_secret = "backup_password"',
            'dest_dir = "backup"',
            "",
            "[backup.download]",
            f"connections = {connections}",
            f"chunk_mib = {chunk_mib}",
            "show_progress = false",
            "",
        ]
        if self.mirror is not None:
            m = self.mirror
            lines += [
                "[backup.mirror]",
                f'host = "{m.host}"',
                f"port = {m.port}",
                f'username = "{m.username}"',
                f'key_file = "{m.key_file}"',
                f'known_hosts = "{m.known_hosts}"',
                'path = "/"',
                "",
            ]
        return lines

    @property
    def encrypted(self) -> bool:
        return ENCRYPTION_SECRET in self.secrets

    def secrets_toml_lines(self) -> list[str]:
        """Entries for the top-level ``[secrets]`` table (without the header)."""
        return [f'{name} = {{ env = "{var}" }}' for name, var in self.secrets.items()]

    def describe(self) -> list[str]:
        kind = "encrypted " if self.encrypted else ""
        out = [f"backup server {self.server.info_url} ({len(self.backup.parts)} {kind}parts"
               + (f", {self.corrupt_part} corrupted on the wire)" if self.corrupt_part else ")")]
        if self.mirror is not None:
            out.append(f"SSH mirror sftp://{self.mirror.username}@{self.mirror.host}:{self.mirror.port}/")
        return out

    def close(self) -> None:
        self.server.close()
        if self.mirror is not None:
            self.mirror.close()

    def __enter__(self) -> "BackupSandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def start_backup_sandbox(work_dir: str | Path, *, total_bytes: int = 3 * 2**20, part_size: int = 1024 * 1024,
                         rate: int = 0, corrupt: int | None = 1, mirror: bool = True, seed: int = 1,
                         encrypt_password: str | None = None) -> BackupSandbox:
    """Start the demo's backup delivery on loopback: a small multi-part backup (3–4 parts),
    served by :class:`BackupServer` with part number ``corrupt`` corrupted on the wire, and an
    SSH mirror serving good copies. With ``encrypt_password`` the backup is encrypted as the cloud
    writes it today (``NAME.enc.gz``, aes-256-ecb, version 1.2) and the password is offered as the
    secret ``backup_encryption_password``. Call ``close()`` when done."""
    from sandbox.backup_maker import make_backup
    from sandbox.ssh_mirror import start_mirror

    work = Path(work_dir)
    backup = make_backup(work / "backup-source", total_bytes=total_bytes, part_size=part_size, seed=seed,
                         encrypt_password=encrypt_password)
    server = BackupServer(backup.directory, rate=rate).start()
    corrupt_name = None
    if corrupt is not None and len(backup.parts) > corrupt:
        corrupt_name = backup.parts[corrupt].name
        server.faults.corrupt_part(corrupt_name)
    ssh = None
    if mirror:
        try:
            ssh = start_mirror(backup.directory, work / "ssh-mirror")
        except BaseException:
            server.close()
            raise
    secrets = {"backup_licence_key": "C2B_BACKUP_LICENCE_KEY", "backup_password": "C2B_BACKUP_PASSWORD"}
    env = {"C2B_BACKUP_LICENCE_KEY": server.licence_key, "C2B_BACKUP_PASSWORD": server.password}
    if encrypt_password is not None:
        secrets[ENCRYPTION_SECRET] = "C2B_BACKUP_ENCRYPTION_PASSWORD"
        env["C2B_BACKUP_ENCRYPTION_PASSWORD"] = encrypt_password
    return BackupSandbox(server, ssh, backup, corrupt_name, secrets, env)


def _size(text: str) -> int:
    units = {"k": 2**10, "m": 2**20, "g": 2**30}
    text = text.strip().lower()
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def main(argv: list[str] | None = None) -> int:
    from sandbox.backup_maker import make_backup

    ap = argparse.ArgumentParser(description="Serve a sandbox backup like the vendor's cloud does.")
    ap.add_argument("--dir", default="sandbox-backup", help="directory of the parts")
    ap.add_argument("--make", metavar="SIZE", help="first write a backup of SIZE tar bytes (e.g. 8M)")
    ap.add_argument("--part-size", default="2M")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--rate", default="800k", help="bytes/s per connection; 0 = unthrottled")
    ap.add_argument("--corrupt", action="append", default=[], metavar="PART",
                    help="flip bytes in this part (a name or a part number); repeatable")
    ap.add_argument("--drop", type=int, default=0, metavar="N", help="drop N connections mid-body")
    ap.add_argument("--ignore-range", type=int, default=0, metavar="N", help="ignore Range N times")
    ap.add_argument("--html-error", type=int, default=0, metavar="N", help="send a 200 HTML error page N times")
    ap.add_argument("--unavailable", type=int, default=0, metavar="N", help="answer 503 + Retry-After N times")
    ap.add_argument("--duration", type=float, default=0, help="stop after this many seconds (0: on Ctrl-C)")
    args = ap.parse_args(argv)
    if args.make:
        make_backup(args.dir, total_bytes=_size(args.make), part_size=_size(args.part_size))
    server = BackupServer(args.dir, rate=_size(args.rate), port=args.port).start()
    names = [p.name for p in server.part_paths()]
    for spec in args.corrupt:
        server.faults.corrupt_part(names[int(spec)] if spec.isdigit() else spec)
    if args.drop:
        server.faults.drop(times=args.drop)
    if args.ignore_range:
        server.faults.ignore_range(times=args.ignore_range)
    if args.html_error:
        server.faults.html_error(times=args.html_error)
    if args.unavailable:
        server.faults.unavailable(times=args.unavailable)
    print(f"backup server {server.url} ({len(names)} parts, {args.rate}/s per connection)", flush=True)
    print(f"  vendor protocol: {server.info_url}?license=md5(KEY)&action=get_info")
    for u in server.part_urls():
        print(f"  {u}", flush=True)
    try:
        if args.duration:
            time.sleep(args.duration)
        else:
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

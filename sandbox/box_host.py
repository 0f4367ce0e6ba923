"""The sandbox's box host: an SSH server (paramiko) on loopback that runs commands and serves
files under one local directory, plus a database of its own on the machine's MariaDB.

It behaves like the real host for everything cloud2box does there: exec channels run the
command with ``/bin/sh -c`` (stdin, stdout, stderr and exit status passed through — the restore
agent, ``sha256sum``, ``mkdir -p``), SFTP reads and writes files. Paths are the machine's own
absolute paths, but only those under the sandbox's root are served over SFTP, and commands start
in that root. Public-key login with a generated key; the generated host key is in a known_hosts
file, so the client verifies it as against a real host. It is a trainer's sandbox on loopback,
not a jail: commands are not confined.

The database: a fresh ``c2b_box_<random>`` database and a user of the same name with a random
password (what ``[secrets] box_db_password`` carries), both dropped by :meth:`BoxHostSandbox.close`.
The sandbox's admin login also stands in for the box admin's hands: :meth:`BoxHostSandbox.sql`
(a fault, a look) and :meth:`BoxHostSandbox.reindex_search` (Settings → Search → Reindex).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from sandbox.ssh_mirror import _Server, _Sftp, listen_ssh, serve_ssh

PASSWORD_ENV = "C2B_SANDBOX_BOX_DB_PASSWORD"
# the b_option (search module) name cloud2box's step 2.4 leaves when it queued a reindex; kept
# here, not imported, so the sandbox stays independent of the product
REINDEX_OPTION = "c2b_reindex_queued"


class _HostSftp(_Sftp):
    """SFTP on the machine's real paths, limited to the sandbox root."""

    def _real(self, path: str) -> Path:
        real = Path(path if path.startswith("/") else self.root / path).resolve()
        if real != self.root and self.root not in real.parents:
            raise PermissionError(path)
        return real

    def canonicalize(self, path: str) -> str:
        return str(Path(path if path.startswith("/") else self.root / path).resolve())

    def chattr(self, path, attr):
        try:
            if attr.st_mode is not None:
                os.chmod(self._real(path), attr.st_mode & 0o7777)
            return paramiko.SFTP_OK
        except OSError as exc:
            return self._err(exc)


class _HostServer(_Server):
    """The mirror's login and exec hook, with commands run by ``/bin/sh`` under the sandbox root."""

    def _exec(self, channel: paramiko.Channel, command: str) -> None:
        time.sleep(0.05)  # paramiko confirms the exec request after the hook returns (see ssh_mirror)
        proc = subprocess.Popen(["/bin/sh", "-c", command], cwd=self.host.root, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.host._procs.append(proc)

        def feed() -> None:
            try:
                while True:
                    data = channel.recv(1 << 16)
                    if not data:
                        break
                    proc.stdin.write(data)
                    proc.stdin.flush()
            except (OSError, EOFError):
                pass
            finally:
                try:
                    proc.stdin.close()
                except OSError:
                    pass

        def pump(stream, send) -> None:
            for block in iter(lambda: stream.read1(1 << 16), b""):
                send(block)

        threads = [threading.Thread(target=feed, daemon=True),
                   threading.Thread(target=pump, args=(proc.stdout, channel.sendall), daemon=True),
                   threading.Thread(target=pump, args=(proc.stderr, channel.sendall_stderr), daemon=True)]
        for t in threads:
            t.start()
        try:
            status = proc.wait()
            for t in threads[1:]:
                t.join(timeout=30)
            channel.send_exit_status(status)
        except OSError:
            pass
        finally:
            channel.shutdown_write()
            time.sleep(0.05)
            channel.close()


@dataclass
class BoxHostSandbox:
    """A running sandbox box host and what a config needs to use it."""

    root: Path
    host: str
    port: int
    username: str
    key_file: Path
    known_hosts: Path
    client_key: paramiko.PKey
    host_key: paramiko.PKey
    database: str
    db_user: str
    db_password: str
    db_host: str = "127.0.0.1"
    db_port: int = 3306
    domain: str = "crm.sandbox.example"
    archive_password_secret: str | None = None  # the [secrets] entry holding an encrypted backup's password
    secrets: dict[str, str] = field(default_factory=lambda: {"box_db_password": PASSWORD_ENV})
    _sock: socket.socket | None = None
    _stop: threading.Event | None = None
    _transports: list = field(default_factory=list)
    _procs: list = field(default_factory=list)
    _admin: dict = field(default_factory=dict)

    @property
    def site_root(self) -> Path:
        return self.root / "www"

    @property
    def staging_dir(self) -> Path:
        return self.root / "staging"

    @property
    def env(self) -> dict[str, str]:
        return {PASSWORD_ENV: self.db_password}

    def toml_lines(self) -> list[str]:
        """``[box_host]`` (+ db, preflight) and ``[post_restore]`` pointing at this host."""
        return [
            "[box_host]",
            f'host = "{self.host}"',
            f"port = {self.port}",
            f'username = "{self.username}"',
            f'key_file = "{self.key_file}"',
            f'known_hosts = "{self.known_hosts}"',
            f'site_root = "{self.site_root}"',
            f'staging_dir = "{self.staging_dir}"',
            f'python = "{"python3" if shutil.which("python3") else sys.executable}"',
            *([f'archive_password_secret = "{self.archive_password_secret}"'] if self.archive_password_secret else []),
            "",
            "[box_host.db]",
            f'host = "{self.db_host}"',
            f"port = {self.db_port}",
            f'user = "{self.db_user}"',
            'password_secret = "box_db_password"',
            f'database = "{self.database}"',
            "",
            "[box_host.preflight]",
            "# the sandbox host has no PHP and no web server: PHP is not checked, its SSH port stands in",
            "min_cpus = 1",
            "min_ram_mib = 512",
            'php_min = ""',
            f"ports = [{self.port}]",
            "",
            "[post_restore]",
            f'domain = "{self.domain}"',
            "",
        ]

    def secrets_toml_lines(self) -> list[str]:
        return [f'{name} = {{ env = "{var}" }}' for name, var in self.secrets.items()]

    def describe(self) -> list[str]:
        return [f"box host ssh://{self.username}@{self.host}:{self.port} (site root {self.site_root}, "
                f"MariaDB database {self.database} on {self.db_host}:{self.db_port})"]

    def sql(self, statement: str) -> list[tuple]:
        """Run one SQL statement on the box database as the MariaDB admin; the rows it returns
        (``[]`` for statements without a result). Tests inject the box's faults with it, e.g.
        ``UPDATE b_option SET VALUE='N' WHERE MODULE_ID='pull' AND NAME='push'``.

        Raises RuntimeError once the sandbox is closed (its database is gone).
        """
        with self._box_db() as conn:
            cur = conn.cursor()
            cur.execute(statement)
            return list(cur.fetchall()) if cur.description else []

    def reindex_search(self) -> int:
        """What the box admin's Settings → Search → Reindex does, for the sandbox's one indexed
        module: rebuild ``b_search_content`` from the restored CRM leads (``MODULE_ID`` 'crm',
        ``ITEM_ID`` ``L<ID>``, the lead's ``TITLE``) and drop the reindex marker that step 2.4
        leaves (``b_option`` search/c2b_reindex_queued). Returns the number of items indexed.

        Raises RuntimeError when the box database has no restored CRM table yet.
        """
        import pymysql

        with self._box_db() as conn:
            cur = conn.cursor()
            try:
                conn.begin()  # the index is rebuilt whole or not at all
                cur.execute("DELETE FROM b_search_content")
                indexed = cur.execute("INSERT INTO b_search_content (MODULE_ID, ITEM_ID, TITLE) "
                                      "SELECT 'crm', CONCAT('L', ID), TITLE FROM b_crm_lead ORDER BY ID")
                cur.execute(f"DELETE FROM b_option WHERE MODULE_ID='search' AND NAME='{REINDEX_OPTION}'")
                conn.commit()
            except pymysql.err.ProgrammingError as exc:
                conn.rollback()
                raise RuntimeError(f"cannot reindex the box database {self.database}: {exc.args[-1]} "
                                   f"(restore the backup first)") from None
        return indexed

    def _box_db(self):
        if not self._admin:
            raise RuntimeError(f"the sandbox box host is closed: its database {self.database} is gone")
        return _admin_connect(self._admin, database=self.database)

    def close(self) -> None:
        if self._stop:
            self._stop.set()
        if self._sock:
            self._sock.close()
        for t in self._transports:
            t.close()
        for p in self._procs:
            if p.poll() is None:
                p.kill()
        if self._admin:
            _drop_db(self._admin, self.database, self.db_user)
            self._admin = {}

    def __enter__(self) -> "BoxHostSandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _admin_connect(admin: dict, database: str | None = None):
    import pymysql

    return pymysql.connect(host=admin["host"], port=admin["port"], user=admin["user"], password=admin["password"],
                           database=database, connect_timeout=5, read_timeout=60, write_timeout=60,
                           autocommit=True)


def _drop_db(admin: dict, database: str, user: str) -> None:
    try:
        conn = _admin_connect(admin)
    except Exception:  # the server went away: nothing left to clean
        return
    with conn:
        cur = conn.cursor()
        cur.execute(f"DROP DATABASE IF EXISTS `{database}`")
        for host in ("localhost", "127.0.0.1"):
            cur.execute(f"DROP USER IF EXISTS '{user}'@'{host}'")


def start_box_host(work_dir: str | Path, *, host: str = "127.0.0.1", port: int = 0, username: str = "box",
                   db_host: str = "127.0.0.1", db_port: int = 3306, db_admin_user: str = "root",
                   db_admin_password: str = "", domain: str = "crm.sandbox.example",
                   archive_password_secret: str | None = None) -> BoxHostSandbox:
    """Start the sandbox box host: SSH on ``host:port`` (0: a free port) serving ``work_dir/host``,
    a fresh database and user on the MariaDB at ``db_host:db_port`` (created with the admin login).

    Raises RuntimeError when MariaDB cannot be reached (the demo needs it for the DB part).
    """
    import pymysql

    work = Path(work_dir)
    root = (work / "host").resolve()
    (root / "www").mkdir(parents=True, exist_ok=True)
    (root / "staging").mkdir(parents=True, exist_ok=True)
    admin = {"host": db_host, "port": db_port, "user": db_admin_user, "password": db_admin_password}
    name = f"c2b_box_{uuid.uuid4().hex[:8]}"
    password = secrets.token_urlsafe(18)
    try:
        conn = _admin_connect(admin)
    except pymysql.err.MySQLError as exc:
        raise RuntimeError(f"the sandbox box host needs MariaDB/MySQL on {db_host}:{db_port} "
                           f"(login {db_admin_user}): {exc}") from None
    with conn:
        cur = conn.cursor()
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        for h in ("localhost", "127.0.0.1"):
            cur.execute(f"CREATE USER '{name}'@'{h}' IDENTIFIED BY %s", (password,))
            cur.execute(f"GRANT ALL PRIVILEGES ON `{name}`.* TO '{name}'@'{h}'")
    ssh = listen_ssh(work, "box", host, port)
    box = BoxHostSandbox(root, host, ssh.port, username, ssh.client_key_file, ssh.known_hosts, ssh.client_key,
                         ssh.host_key, name, name, password, db_host, db_port, domain,
                         archive_password_secret=archive_password_secret, _sock=ssh.sock,
                         _stop=threading.Event(), _admin=admin)
    serve_ssh(box, ssh, sftp=_HostSftp, server=_HostServer, name="box-host")
    return box

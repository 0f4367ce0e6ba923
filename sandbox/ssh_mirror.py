"""A small SSH server (paramiko) on loopback that serves a local directory over SFTP: the demo's
backup mirror, holding good copies of the parts.

Public-key login with a generated key; a generated host key written to a known_hosts file, so
the client checks the host key exactly as it would against a real host. ``sha256sum PATH`` is
answered on exec channels (what :meth:`connectors.ssh.RemoteHost.sha256` runs).
Paths are relative to the served directory (``/`` is its root).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko
from paramiko import SFTP_FAILURE, SFTP_NO_SUCH_FILE, SFTP_OK, SFTP_PERMISSION_DENIED


def generate_key(path: Path) -> paramiko.PKey:
    """An ed25519 key via ssh-keygen (fast); RSA by paramiko when ssh-keygen is missing."""
    path.unlink(missing_ok=True)
    if shutil.which("ssh-keygen"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "cloud2box-sandbox", "-f", str(path)],
                       check=True, timeout=30, stdin=subprocess.DEVNULL)
        return paramiko.Ed25519Key.from_private_key_file(str(path))
    key = paramiko.RSAKey.generate(2048)
    key.write_private_key_file(str(path))
    path.with_suffix(".pub").write_text(f"{key.get_name()} {key.get_base64()} cloud2box-sandbox\n")
    return key


class _Sftp(paramiko.SFTPServerInterface):
    def __init__(self, server, root: str, *args, **kwargs) -> None:
        super().__init__(server, *args, **kwargs)
        self.root = Path(root).resolve()

    def _real(self, path: str) -> Path:
        real = (self.root / path.lstrip("/")).resolve()
        if real != self.root and self.root not in real.parents:
            raise PermissionError(path)
        return real

    def _attrs(self, real: Path, name: str | None = None) -> paramiko.SFTPAttributes:
        attr = paramiko.SFTPAttributes.from_stat(os.stat(real))
        if name is not None:
            attr.filename = name
        return attr

    def _err(self, exc: OSError) -> int:
        if isinstance(exc, FileNotFoundError):
            return SFTP_NO_SUCH_FILE
        if isinstance(exc, PermissionError):
            return SFTP_PERMISSION_DENIED
        return SFTP_FAILURE

    def canonicalize(self, path: str) -> str:
        return "/" + str(Path("/", path).resolve()).lstrip("/")

    def list_folder(self, path):
        try:
            real = self._real(path)
            return [self._attrs(real / n, n) for n in sorted(os.listdir(real))]
        except OSError as exc:
            return self._err(exc)

    def stat(self, path):
        try:
            return self._attrs(self._real(path))
        except OSError as exc:
            return self._err(exc)

    lstat = stat

    def open(self, path, flags, attr):
        try:
            real = self._real(path)
            mode = "rb"
            if flags & (os.O_WRONLY | os.O_RDWR):
                mode = "r+b" if real.exists() and not flags & os.O_TRUNC else "wb"
                if flags & os.O_APPEND:
                    mode = "ab"
            f = open(real, mode)
        except OSError as exc:
            return self._err(exc)
        handle = paramiko.SFTPHandle(flags)
        handle.readfile = f if "r" in mode else None
        handle.writefile = f if mode != "rb" else None
        handle.filename = str(real)
        return handle

    def remove(self, path):
        try:
            self._real(path).unlink()
            return SFTP_OK
        except OSError as exc:
            return self._err(exc)

    def rename(self, oldpath, newpath):
        try:
            os.replace(self._real(oldpath), self._real(newpath))
            return SFTP_OK
        except OSError as exc:
            return self._err(exc)

    def posix_rename(self, oldpath, newpath):
        return self.rename(oldpath, newpath)

    def mkdir(self, path, attr):
        try:
            self._real(path).mkdir()
            return SFTP_OK
        except OSError as exc:
            return self._err(exc)


class _Server(paramiko.ServerInterface):
    """Public-key login for one user and exec requests; the box host sandbox reuses it with its own
    ``_exec``. ``host`` is the running sandbox (``username``, ``client_key``, ``root``)."""

    def __init__(self, host) -> None:
        self.host = host

    def get_allowed_auths(self, username):
        return "publickey"

    def check_auth_publickey(self, username, key):
        ok = username == self.host.username and key.asbytes() == self.host.client_key.asbytes()
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_channel_request(self, kind, chanid):
        return paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel, command):
        threading.Thread(target=self._exec, args=(channel, command.decode(errors="replace")), daemon=True).start()
        return True

    def _exec(self, channel: paramiko.Channel, command: str) -> None:
        # paramiko confirms the exec request after this hook returns; answering (or closing)
        # before that confirmation makes the client see "Channel closed".
        time.sleep(0.05)
        try:
            argv = shlex.split(command)
            if not argv or argv[0] != "sha256sum" or len(argv) < 2:
                channel.sendall_stderr("sandbox mirror: only sha256sum is supported\n".encode())
                channel.send_exit_status(127)
                return
            path = argv[-1]
            real = (self.host.root / path.lstrip("/")).resolve()
            if self.host.root not in real.parents or not real.is_file():
                channel.sendall_stderr(f"sha256sum: {path}: No such file or directory\n".encode())
                channel.send_exit_status(1)
                return
            h = hashlib.sha256()
            with open(real, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            channel.sendall(f"{h.hexdigest()}  {path}\n".encode())
            channel.send_exit_status(0)
        finally:
            channel.shutdown_write()
            time.sleep(0.05)
            channel.close()


@dataclass
class SshMirror:
    """A running mirror. ``known_hosts`` and ``key_file`` are what a client needs."""

    root: Path
    host: str
    port: int
    username: str
    key_file: Path
    known_hosts: Path
    client_key: paramiko.PKey
    host_key: paramiko.PKey
    _sock: socket.socket | None = None
    _stop: threading.Event | None = None
    _transports: list | None = None

    def close(self) -> None:
        if self._stop:
            self._stop.set()
        if self._sock:
            self._sock.close()
        for t in self._transports or []:
            t.close()

    def __enter__(self) -> "SshMirror":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class SshListener:
    """A listening socket with its host key, the client's key and a known_hosts naming the host key."""

    sock: socket.socket
    port: int
    host_key: paramiko.PKey
    client_key: paramiko.PKey
    client_key_file: Path
    known_hosts: Path


def listen_ssh(work: Path, prefix: str, host: str, port: int) -> SshListener:
    """Keys ``<prefix>_host_key``/``<prefix>_client_key`` and ``<prefix>_known_hosts`` in ``work``,
    and a socket listening on ``host:port`` (0: a free port)."""
    host_key = generate_key(work / f"{prefix}_host_key")
    client_key = generate_key(work / f"{prefix}_client_key")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(16)
    port = sock.getsockname()[1]
    known_hosts = work / f"{prefix}_known_hosts"
    known_hosts.write_text(f"[{host}]:{port} {host_key.get_name()} {host_key.get_base64()}\n")
    return SshListener(sock, port, host_key, client_key, work / f"{prefix}_client_key", known_hosts)


def serve_ssh(owner, listener: SshListener, *, sftp: type, server: type, name: str) -> None:
    """Accept SSH connections for ``owner`` (its ``root``, ``_stop`` and ``_transports``) in a daemon
    thread: SFTP with ``sftp`` under ``owner.root``, auth and exec by a ``server(owner)`` per connection."""

    def serve() -> None:
        while not owner._stop.is_set():
            try:
                conn, _ = listener.sock.accept()
            except OSError:
                return
            t = paramiko.Transport(conn)
            # a client hanging up is normal here; keep paramiko's server-side noise out of the demo
            t.set_log_channel(f"sandbox.{name}.transport")
            logging.getLogger(f"sandbox.{name}.transport").setLevel(logging.CRITICAL)
            t.add_server_key(listener.host_key)
            t.set_subsystem_handler("sftp", paramiko.SFTPServer, sftp, str(owner.root))
            owner._transports.append(t)
            try:
                t.start_server(server=server(owner))
            except (paramiko.SSHException, EOFError, OSError):
                t.close()

    threading.Thread(target=serve, name=f"{name}-{listener.port}", daemon=True).start()


def start_mirror(root: str | Path, work_dir: str | Path, *, username: str = "mirror",
                 host: str = "127.0.0.1", port: int = 0) -> SshMirror:
    """Serve ``root`` over SFTP on ``host:port`` (0: a free port); keys go into ``work_dir``."""
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    ssh = listen_ssh(work, "mirror", host, port)
    mirror = SshMirror(Path(root).resolve(), host, ssh.port, username, ssh.client_key_file, ssh.known_hosts,
                       ssh.client_key, ssh.host_key, ssh.sock, threading.Event(), [])
    serve_ssh(mirror, ssh, sftp=_Sftp, server=_Server, name="ssh-mirror")
    return mirror

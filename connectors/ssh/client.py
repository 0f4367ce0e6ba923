"""A small SSH/SFTP client (paramiko) for hosts cloud2box works with: the backup mirror and the
box host (run commands with a timeout, upload with resume, small files, remote sha256).

Host keys are verified against known_hosts by default (``RejectPolicy``): an unknown or changed
key is an :class:`~connectors.errors.AuthError` that says how to check and add it. Accepting
unknown keys needs an explicit ``strict_host_key=False`` (trust on first use), and is logged.

Every command run goes to ``on_command`` (the journal's ``ssh-command`` events) as a
:class:`CommandRecord`: the redacted command line, exit status and duration — never its input,
which is where secrets travel.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import paramiko

from connectors.errors import AuthError, FatalError, IntegrityError, TransientError
from connectors.secrets import redact

from .configuration import SshHostSettings

_BLOCK = 256 * 1024
# One SFTP write request (data + ~30 bytes of header) must fit in one 32 KiB SSH packet (OpenSSH's
# session channel maximum): a full 32 KiB request spills into a second, tiny packet and costs ~30 %.
_PUT_BLOCK = 32 * 1024 - 512
log = logging.getLogger("cloud2box.ssh")


class _Transport(paramiko.Transport):
    """paramiko's transport with AES-GCM preferred: one AEAD pass instead of AES-CTR + HMAC per
    packet, which is what paramiko's throughput hinges on (the other ciphers stay allowed)."""

    _preferred_ciphers = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com") + tuple(
        c for c in paramiko.Transport._preferred_ciphers if "gcm" not in c)


@dataclass(frozen=True)
class CommandRecord:
    """One remote command as the journal sees it (``command`` is redacted)."""

    host: str
    command: str
    exit_status: int | None  # None: it did not finish (timeout, dropped connection)
    duration_s: float


class _LocalIOError(Exception):
    """Internal: an OSError of the local file in :meth:`RemoteHost.get`, kept apart from SSH errors."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class _LocalFile:
    """The local end of a download: created 0600 without following a link (it holds customer data);
    every OSError on it surfaces as :class:`_LocalIOError`."""

    def __init__(self, path: Path, offset: int) -> None:
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            os.fchmod(self._fd, 0o600)  # a copy left by an older release may be world-readable
            os.ftruncate(self._fd, offset)  # bytes before offset are kept, bytes after it are replaced
        except OSError as exc:
            raise _LocalIOError(exc) from exc
        self._pos = offset

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                n = os.pwrite(self._fd, view, self._pos)
                self._pos += n
                view = view[n:]
        except OSError as exc:
            raise _LocalIOError(exc) from exc

    def close(self) -> None:
        """fsync, then close: the bytes are on disk when :meth:`RemoteHost.get` returns."""
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise _LocalIOError(exc) from exc
        finally:
            os.close(self._fd)


class RemoteHost:
    """One SSH host. Use as a context manager; connects lazily on first use.

    Args:
        client_factory: makes the ``paramiko.SSHClient`` (tests plug in here).
        password, key_passphrase: resolved secret values (never logged).
    """

    def __init__(self, host: str, *, port: int = 22, username: str, key_file: str | os.PathLike | None = None,
                 password: str | None = None, key_passphrase: str | None = None,
                 known_hosts: str | os.PathLike | None = None, strict_host_key: bool = True,
                 timeout: float = 15.0, client_factory: Callable[[], paramiko.SSHClient] = paramiko.SSHClient,
                 on_command: Callable[[CommandRecord], None] | None = None, sftp_client: str = "auto") -> None:
        self.host, self.port, self.username = host, port, username
        self.key_file = str(Path(key_file).expanduser()) if key_file else None
        self._password = password
        self._passphrase = key_passphrase
        self.known_hosts = Path(known_hosts).expanduser() if known_hosts else Path("~/.ssh/known_hosts").expanduser()
        self.strict_host_key = strict_host_key
        self.timeout = timeout
        self._factory = client_factory
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self.on_command = on_command
        self.sftp_client = sftp_client

    @classmethod
    def from_settings(cls, s: SshHostSettings, *, password: str | None = None, key_passphrase: str | None = None,
                      on_command: Callable[[CommandRecord], None] | None = None) -> "RemoteHost":
        return cls(s.host, port=s.port, username=s.username, key_file=s.key_file, password=password,
                   key_passphrase=key_passphrase, known_hosts=s.known_hosts, strict_host_key=s.strict_host_key,
                   timeout=s.connect_timeout_s, on_command=on_command, sftp_client=s.sftp_client)

    @property
    def label(self) -> str:
        return f"{self.username}@{self.host}:{self.port}"

    # -- connection -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Convert paramiko/socket errors into the cloud2box tree, once."""
        try:
            yield
        except paramiko.BadHostKeyException:
            raise AuthError(f"{self.label}: the host key does not match known_hosts ({self.known_hosts})",
                            fix="someone may be in the middle; check the key with the host's admin, then update "
                                "known_hosts") from None
        except paramiko.AuthenticationException:
            raise AuthError(f"{self.label}: login refused for {what}",
                            fix="check the user name, key file and its authorized_keys entry") from None
        except paramiko.SSHException as exc:
            text = str(exc)
            if "not found in known_hosts" in text:
                raise AuthError(f"{self.label}: host key unknown (not in {self.known_hosts})",
                                fix=f"check the host's fingerprint, then add it: ssh-keyscan -p {self.port} {self.host}"
                                    f" >> {self.known_hosts}") from None
            raise TransientError(f"{self.label}: SSH error during {what}: {redact(text)}") from None
        except paramiko.ssh_exception.NoValidConnectionsError as exc:  # every address refused the connection
            reasons = "; ".join(sorted({e.strerror or type(e).__name__ for e in exc.errors.values()}))
            raise TransientError(f"{self.label}: nothing answers on port {self.port} during {what} ({reasons})",
                                 fix=f"check that {self.host} is up, that sshd listens on port {self.port} and "
                                     "that no firewall is in the way; then re-run") from None
        except (socket.timeout, TimeoutError, ConnectionError, EOFError) as exc:
            raise TransientError(f"{self.label}: connection problem during {what} ({type(exc).__name__})",
                                 fix="check that the host is up and reachable") from None
        except FileNotFoundError:
            raise FatalError(f"{self.label}: {what}: no such file", fix="check the path on the host") from None
        except PermissionError:
            raise FatalError(f"{self.label}: {what}: permission denied", fix="check the file's owner and mode") from None
        except OSError as exc:
            raise TransientError(f"{self.label}: {what}: {type(exc).__name__}: {redact(exc)}") from None

    def connect(self) -> "RemoteHost":
        if self._client is not None:
            return self
        client = self._factory()
        with self._errors("connect"):
            if self.known_hosts.is_file():
                client.load_host_keys(str(self.known_hosts))
            if not self.strict_host_key:
                # the user switched verification off explicitly; say so every time it is used
                log.warning("%s: strict_host_key = false: an unknown host key is trusted on first use "
                            "(and stored in %s)", self.label, self.known_hosts)
            client.set_missing_host_key_policy(
                paramiko.RejectPolicy() if self.strict_host_key else paramiko.AutoAddPolicy())  # trust_on_first_use: explicit, logged
            client.connect(self.host, port=self.port, username=self.username, key_filename=self.key_file,
                           password=self._password, passphrase=self._passphrase, timeout=self.timeout,
                           banner_timeout=self.timeout, auth_timeout=self.timeout,
                           allow_agent=self.key_file is None and self._password is None,
                           look_for_keys=self.key_file is None and self._password is None,
                           transport_factory=_Transport)
            transport = client.get_transport()
            if transport is not None:
                transport.set_keepalive(15)
            if not self.strict_host_key:
                with contextlib.suppress(OSError):
                    self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
                    client.save_host_keys(str(self.known_hosts))
        self._client = client
        return self

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
            self._sftp = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> "RemoteHost":
        return self.connect()

    def __exit__(self, *exc) -> None:
        self.close()

    def sftp(self) -> paramiko.SFTPClient:
        self.connect()
        if self._sftp is None:
            with self._errors("open SFTP"):
                self._sftp = self._client.open_sftp()
                self._sftp.get_channel().settimeout(self.timeout * 4)
        return self._sftp

    # -- operations -------------------------------------------------------------------------
    def run(self, command: str, *, timeout: float = 300, input: bytes | None = None) -> tuple[int, str, str]:
        """Run ``command``; return (exit status, stdout, stderr).

        ``input`` is sent to the command's stdin, then stdin is closed (secrets go this way,
        never on the command line). A command still running after ``timeout`` seconds is a
        :class:`TransientError`. The redacted command line and its duration go to ``on_command``.
        """
        self.connect()
        started = time.monotonic()
        status: int | None = None
        try:
            with self._errors(f"run {command.split()[0]}"):
                stdin, out, err = self._client.exec_command(command, timeout=timeout)
                if input is not None:
                    stdin.write(input)
                    stdin.flush()
                stdin.channel.shutdown_write()
                # stderr is read in a second pass; a chatty stderr cannot block stdout because paramiko
                # buffers each stream on its own
                stdout = out.read().decode(errors="replace")
                stderr = err.read().decode(errors="replace")
                status = out.channel.recv_exit_status()
                return status, stdout, stderr
        except TransientError as exc:
            if "socket.timeout" in exc.message or "TimeoutError" in exc.message:
                raise TransientError(f"{self.label}: {redact(command.split()[0])} did not finish within {timeout:g} s",
                                     fix="look at the host's load; raise the timeout if the work is just big") from None
            raise
        finally:
            if self.on_command is not None:
                self.on_command(CommandRecord(self.label, redact(command), status,
                                              round(time.monotonic() - started, 3)))

    def size(self, path: str) -> int:
        """Size of a remote file in bytes."""
        with self._errors(f"stat {path}"):
            return self.sftp().stat(path).st_size

    def sha256(self, path: str) -> str | None:
        """sha256 of a remote file via ``sha256sum`` on the host; None when the host has no sha256sum."""
        status, out, _ = self.run(f"sha256sum -- {shlex.quote(path)}")
        if status != 0 or not out:
            return None
        digest = out.split()[0].lower()
        return digest if len(digest) == 64 else None

    def get(self, remote_path: str, local_path: str | os.PathLike, *, offset: int = 0,
            on_data: Callable[[bytes], None] | None = None) -> int:
        """Copy a remote file from ``offset`` to the same offset of ``local_path`` (resume by offset).

        Bytes before ``offset`` in the local file are kept, bytes after it are replaced.
        ``on_data`` sees every block right after it is written (verification while writing).
        Returns the bytes copied. The local file is fsynced before return.
        """
        local = Path(local_path)
        copied = 0
        try:
            with self._errors(f"get {remote_path}"):
                remote = self.sftp().open(remote_path, "rb")
                try:
                    remote.seek(offset)
                    # Pipelined reads from `offset` to the end, bounded so a 1 GB part does not queue in RAM.
                    remote.prefetch(self.sftp().stat(remote_path).st_size, max_concurrent_requests=64)
                    f = _LocalFile(local, offset)
                    try:
                        while True:
                            block = remote.read(_BLOCK)
                            if not block:
                                break
                            f.write(block)
                            copied += len(block)
                            if on_data is not None:
                                on_data(block)
                    finally:
                        f.close()
                finally:
                    remote.close()
        except _LocalIOError as exc:
            # the local disk's problem (full, read-only …), not the connection's: the caller must see
            # the OSError itself (path, errno) instead of a retryable SSH error
            raise exc.error from None
        return copied

    def put(self, local_path: str | os.PathLike, remote_path: str, *, resume: bool = True,
            on_data: Callable[[int], None] | None = None) -> int:
        """Stream a local file to ``remote_path``; return the bytes sent.

        With ``resume`` a shorter remote file is continued from its size (a longer one is
        rewritten); afterwards the remote size must equal the local size, or
        :class:`~connectors.errors.IntegrityError`. ``on_data(n)`` sees the bytes sent (every
        block with paramiko, once at the end with OpenSSH's sftp).

        Which SFTP client sends the bytes follows ``sftp_client``: ``auto`` uses OpenSSH's
        ``sftp`` when the login allows it (a key without passphrase, strict host keys, a
        known_hosts file) — about a third faster than paramiko, which is CPU-bound in Python —
        and paramiko otherwise; the host key is checked against the same known_hosts either way.
        """
        local = Path(local_path)
        total = local.stat().st_size
        sftp = self.sftp()
        offset = 0
        with self._errors(f"put {remote_path}"):
            if resume:
                try:
                    have = sftp.stat(remote_path).st_size
                except FileNotFoundError:
                    have = 0
                offset = have if have <= total else 0
        why_not = self._openssh_unusable()
        if self.sftp_client == "openssh" and why_not:
            raise FatalError(f"{self.label}: sftp_client = \"openssh\" cannot be used: {why_not}",
                             fix='set sftp_client = "auto" or "paramiko", or use a key without passphrase')
        if self.sftp_client != "paramiko" and not why_not:
            sent = self._put_openssh(local, remote_path, offset, total)
            if on_data is not None:
                on_data(sent)
        else:
            sent = self._put_paramiko(local, remote_path, offset, total, on_data)
        with self._errors(f"stat {remote_path}"):
            got = sftp.stat(remote_path).st_size
        if got != total:
            raise IntegrityError(f"{self.label}:{remote_path} has {got} bytes after the upload, expected {total}",
                                 fix="check free disk space on the host, then send it again")
        return sent

    def _put_paramiko(self, local: Path, remote_path: str, offset: int, total: int,
                      on_data: Callable[[int], None] | None) -> int:
        sent = 0
        with self._errors(f"put {remote_path}"):
            remote = self.sftp().open(remote_path, "r+b" if offset else "wb", bufsize=0)
            try:
                remote.set_pipelined(True)  # no round trip per packet: what keeps SFTP near scp speed
                remote.seek(offset)
                with open(local, "rb") as f:
                    f.seek(offset)
                    while True:
                        block = f.read(_PUT_BLOCK)
                        if not block:
                            break
                        remote.write(block)
                        sent += len(block)
                        if on_data is not None:
                            on_data(len(block))
                if offset + sent < total:
                    raise IntegrityError(f"{local.name} changed while it was sent", fix="send it again")
            finally:
                remote.close()
        return sent

    def _openssh_unusable(self) -> str:
        """Why OpenSSH's sftp cannot log in the way this host is configured ('' when it can)."""
        if not shutil.which("sftp"):
            return "no sftp program on this machine"
        if not self.key_file or self._password or self._passphrase:
            return "it needs a key file without passphrase (passwords and passphrases are not passed to it)"
        if not self.strict_host_key or not self.known_hosts.is_file():
            return "it needs strict host key checking with an existing known_hosts file"
        return ""

    def _put_openssh(self, local: Path, remote_path: str, offset: int, total: int) -> int:
        def quoted(path: str) -> str:
            return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'

        batch = f"{'reput' if offset else 'put'} {quoted(str(local))} {quoted(remote_path)}\n"
        argv = ["sftp", "-b", "-", "-o", "LogLevel=ERROR", "-P", str(self.port), "-i", self.key_file,
                "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", f"ConnectTimeout={max(1, int(self.timeout))}", "-o", "ServerAliveInterval=15",
                f"{self.username}@{self.host}"]
        started = time.monotonic()
        status: int | None = None
        try:
            # at least 256 KiB/s, plus the login: a hung transfer ends instead of blocking the run
            proc = subprocess.run(argv, input=batch.encode(), capture_output=True,
                                  timeout=300 + (total - offset) / 2**18)
            status = proc.returncode
        except subprocess.TimeoutExpired:
            raise TransientError(f"{self.label}: sftp upload of {local.name} stalled",
                                 fix="check the link to the host, then re-run (the upload resumes)") from None
        finally:
            if self.on_command is not None:
                self.on_command(CommandRecord(self.label, redact(f"sftp {batch.strip()}"), status,
                                              round(time.monotonic() - started, 3)))
        if status != 0:
            err = redact(proc.stderr.decode(errors="replace").strip())[-400:]
            if "Host key verification failed" in err or "REMOTE HOST IDENTIFICATION HAS CHANGED" in err:
                raise AuthError(f"{self.label}: the host key does not match known_hosts ({self.known_hosts})",
                                fix="someone may be in the middle; check the key with the host's admin")
            if "Permission denied" in err and "publickey" in err:
                raise AuthError(f"{self.label}: login refused for sftp", fix="check the user name and key file")
            raise TransientError(f"{self.label}: sftp upload of {local.name} failed: {err}",
                                 fix="check free disk space and the path on the host, then re-run (it resumes)")
        return total - offset

    def read_text(self, path: str, *, limit: int = 1 << 20) -> str:
        """A small remote text file (at most ``limit`` bytes)."""
        with self._errors(f"read {path}"):
            with self.sftp().open(path, "rb") as f:
                return f.read(limit).decode("utf-8", errors="replace")

    def write_text(self, path: str, text: str, *, mode: int = 0o644) -> None:
        """Write a small remote file atomically (temp file, then rename over ``path``)."""
        tmp = f"{path}.c2b-tmp"
        with self._errors(f"write {path}"):
            sftp = self.sftp()
            with sftp.open(tmp, "wb") as f:
                f.write(text.encode("utf-8"))
            sftp.chmod(tmp, mode)
            sftp.posix_rename(tmp, path)

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists on the host."""
        with self._errors(f"stat {path}"):
            try:
                self.sftp().stat(path)
                return True
            except FileNotFoundError:
                return False

"""A small SSH/SFTP client (paramiko) for hosts cloud2box works with: the backup mirror now, the
box host later (run commands, upload).

Host keys are verified against known_hosts by default (``RejectPolicy``): an unknown or changed
key is an :class:`~connectors.errors.AuthError` that says how to check and add it. Accepting
unknown keys needs an explicit ``strict_host_key=False``.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
from pathlib import Path
from typing import Callable, Iterator

import paramiko

from connectors.errors import AuthError, FatalError, TransientError
from connectors.secrets import redact

from .configuration import SshHostSettings

_BLOCK = 256 * 1024


class RemoteHost:
    """One SSH host. Use as a context manager; connects lazily on first use.

    Args:
        client_factory: makes the ``paramiko.SSHClient`` (tests plug in here).
        password, key_passphrase: resolved secret values (never logged).
    """

    def __init__(self, host: str, *, port: int = 22, username: str, key_file: str | os.PathLike | None = None,
                 password: str | None = None, key_passphrase: str | None = None,
                 known_hosts: str | os.PathLike | None = None, strict_host_key: bool = True,
                 timeout: float = 15.0, client_factory: Callable[[], paramiko.SSHClient] = paramiko.SSHClient) -> None:
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

    @classmethod
    def from_settings(cls, s: SshHostSettings, *, password: str | None = None,
                      key_passphrase: str | None = None) -> "RemoteHost":
        return cls(s.host, port=s.port, username=s.username, key_file=s.key_file, password=password,
                   key_passphrase=key_passphrase, known_hosts=s.known_hosts, strict_host_key=s.strict_host_key,
                   timeout=s.connect_timeout_s)

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
            client.set_missing_host_key_policy(
                paramiko.RejectPolicy() if self.strict_host_key else paramiko.AutoAddPolicy())
            client.connect(self.host, port=self.port, username=self.username, key_filename=self.key_file,
                           password=self._password, passphrase=self._passphrase, timeout=self.timeout,
                           banner_timeout=self.timeout, auth_timeout=self.timeout,
                           allow_agent=self.key_file is None and self._password is None,
                           look_for_keys=self.key_file is None and self._password is None)
            transport = client.get_transport()
            if transport is not None:
                transport.set_keepalive(15)
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
    def run(self, command: str, *, timeout: float = 300) -> tuple[int, str, str]:
        """Run ``command``; return (exit status, stdout, stderr)."""
        self.connect()
        with self._errors(f"run {command.split()[0]}"):
            _, out, err = self._client.exec_command(command, timeout=timeout)
            stdout = out.read().decode(errors="replace")
            stderr = err.read().decode(errors="replace")
            return out.channel.recv_exit_status(), stdout, stderr

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
        with self._errors(f"get {remote_path}"):
            remote = self.sftp().open(remote_path, "rb")
            try:
                remote.seek(offset)
                # Pipelined reads from `offset` to the end, bounded so a 1 GB part does not queue in RAM.
                remote.prefetch(self.sftp().stat(remote_path).st_size, max_concurrent_requests=64)
                mode = "r+b" if local.exists() else "wb"
                with open(local, mode) as f:
                    f.seek(offset)
                    f.truncate(offset)
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
                        f.flush()
                        os.fsync(f.fileno())
            finally:
                remote.close()
        return copied

    def put(self, local_path: str | os.PathLike, remote_path: str) -> None:
        """Upload a file (the later box-host issue builds on this)."""
        with self._errors(f"put {remote_path}"):
            self.sftp().put(str(local_path), remote_path)

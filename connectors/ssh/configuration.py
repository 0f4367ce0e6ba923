"""Configuration of an SSH host (the backup mirror, the box host)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SshHostSettings(BaseModel):
    """How to reach one SSH host. Host keys are checked against ``known_hosts`` unless the user
    explicitly sets ``strict_host_key = false``."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(description="host name or address")
    port: int = Field(default=22, ge=1, le=65535)
    username: str = Field(description="login name")
    key_file: Path | None = Field(default=None, description="private key file (default: the SSH agent / ~/.ssh keys)")
    key_passphrase_secret: str | None = Field(default=None, description="[secrets] entry: the key's passphrase")
    password_secret: str | None = Field(default=None, description="[secrets] entry: a password (keys are better)")
    known_hosts: Path | None = Field(default=None, description="known_hosts file (default ~/.ssh/known_hosts)")
    strict_host_key: bool = Field(default=True, description="refuse hosts whose key is not in known_hosts")
    connect_timeout_s: float = Field(default=15, gt=0)
    sftp_client: Literal["auto", "paramiko", "openssh"] = Field(
        default="auto", description="who uploads files: OpenSSH's sftp when the login allows it (auto; faster), "
                                    "or always paramiko / always OpenSSH")

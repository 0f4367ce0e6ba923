"""Configuration of the backup transfer: the ``[backup]`` section and its sub-tables.

Secrets are referenced by the NAME of an entry of the top-level ``[secrets]`` table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from connectors.ssh.configuration import SshHostSettings


class DownloadSettings(BaseModel):
    """How the downloader talks HTTP (``[backup.download]``)."""

    model_config = ConfigDict(extra="forbid")

    connections: int = Field(default=8, ge=1, le=128, description="parallel HTTP connections (across and within parts)")
    chunk_mib: float = Field(default=8, gt=0, le=1024,
                             description="MiB per Range request; a killed download re-fetches at most one chunk per connection")
    connect_timeout_s: float = Field(default=10, gt=0, description="seconds to open a connection")
    read_timeout_s: float = Field(default=60, gt=0, description="seconds without a byte before a request is given up")
    max_attempts: int = Field(default=8, ge=1, le=50, description="attempts per chunk on transient errors")
    backoff_s: float = Field(default=0.5, ge=0, description="first wait between attempts (doubles each time)")
    max_wait_s: float = Field(default=120, gt=0, description="longest single wait, also caps a server's Retry-After")
    show_progress: bool = Field(default=True, description="tqdm progress bar on the terminal")

    @property
    def chunk_size(self) -> int:
        """Chunk size in bytes, rounded to 64 KiB."""
        return max(64 * 1024, int(self.chunk_mib * 2**20) // (64 * 1024) * (64 * 1024))


class MirrorSettings(SshHostSettings):
    """An SSH host holding good copies of the parts (``[backup.mirror]``)."""

    path: str = Field(description="directory on the mirror that holds the parts")


class BackupSection(BaseModel):
    """Where the backup goes and how (``[backup]``); ``source`` says where it comes from.

    Each source is a subclass that fixes ``source`` to its tag: :class:`UrlsBackupSection` here,
    and each platform's own delivery (``connectors.platform.BackupDelivery.section``). The config
    picks the subclass by ``source``.
    """

    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="where the parts come from: urls (plain part URLs) or the platform's name "
                                    "(its own delivery)")
    dest_dir: Path = Field(default=Path("backup"),
                           description="where the parts go; relative paths are under the run's work directory")
    download: DownloadSettings = DownloadSettings()
    mirror: MirrorSettings | None = Field(default=None, description="SSH host with good copies, for repairs")


class UrlsBackupSection(BackupSection):
    """The parts as plain URLs (``[backup] source = "urls"``)."""

    source: Literal["urls"]
    part_urls: list[str] = Field(default_factory=list, description="one URL per part")
    manifest_url: str = Field(default="", description="optional JSON {part: {sha256, md5}}")

    @model_validator(mode="after")
    def _urls_given(self) -> "UrlsBackupSection":
        if not self.part_urls:
            raise ValueError("source = 'urls' needs part_urls (one URL per part)")
        return self

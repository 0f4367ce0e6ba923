"""Configuration of the box host (``[box_host]``).

The platform's box layout (site root, staging dir, the portal's DB login and database) has no
default here: the config fills it from ``Platform.restore.box_defaults`` under what the file says."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from connectors.ssh.configuration import SshHostSettings


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BoxDbSettings(_Model):
    """The box's MySQL/MariaDB as seen from the host (the import runs there with its client)."""

    host: str = Field(default="localhost", description="DB host as the box host reaches it")
    port: int = Field(default=3306, ge=1, le=65535)
    user: str = Field(min_length=1, description="DB login of the portal")
    password_secret: str | None = Field(default="box_db_password", description="[secrets] entry: the DB password")
    database: str = Field(pattern=r"^[A-Za-z0-9_$]{1,64}$",
                          description="the portal's database; DROPPED and recreated by the restore")
    client: str = Field(default="", description="mysql client on the host (default: mariadb, then mysql)")
    site_host: str = Field(default="", description="DB host written into the site's settings (default: host)")


class PreflightSettings(_Model):
    """Thresholds of steps 1.2/1.5; a check whose threshold is empty/0 is reported as skipped."""

    min_cpus: int = Field(default=2, ge=0)
    min_ram_mib: int = Field(default=4096, ge=0)
    php_min: str = Field(default="8.1", description="lowest PHP version ('' = PHP not checked)")
    mysql_min: str = Field(default="8.0", description="lowest MySQL version")
    mariadb_min: str = Field(default="10.5", description="lowest MariaDB version")
    check_db: bool = Field(default=True, description="log into the DB and check its version")
    ports: list[int] = Field(default_factory=lambda: [80, 443], description="ports that must be listening")
    max_clock_skew_s: float = Field(default=5.0, ge=0, description="0 = not checked")
    expected_backup_gib: float = Field(default=0, ge=0, description="backup size for step 1.2's disk check, "
                                       "before the backup exists (later: the downloaded parts' size)")
    unpacked_factor: float = Field(default=1.0, ge=0, description="unpacked bytes per backup byte (estimate)")
    db_factor: float = Field(default=1.0, ge=0, description="DB bytes on disk per backup byte (estimate)")


class BoxHostSection(SshHostSettings):
    """The self-hosted box: SSH access, where things go, its DB, preflight thresholds."""

    site_root: str = Field(min_length=1, description="the portal's document root on the host")
    staging_dir: str = Field(min_length=1, description="where the parts are staged")
    python: str = Field(default="python3", description="the host's Python 3 (runs the restore agent)")
    parts_on_host: bool = Field(default=False,
                                description="the downloader ran on the host: parts are already in staging_dir")
    archive_password_secret: str | None = Field(
        default=None, description="[secrets] entry: the backup's encryption password (encrypted backups only)")
    command_timeout_s: float = Field(default=6 * 3600, gt=0, description="limit of one restore/import command")
    db: BoxDbSettings
    preflight: PreflightSettings = PreflightSettings()

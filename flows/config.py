"""The one configuration tree of cloud2box, loaded from TOML and validated once at start.

Every problem is reported at once, each naming the file and the dotted key. Secrets are never
in the file: a ``SecretRef`` names an environment variable or a Prefect Secret block, resolved
into ``SecretStr`` by :func:`resolve_secrets` and registered for redaction.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from checklists.toml_model import read_toml, validation_problems
from connectors import platforms
from connectors.errors import ConfigError
from connectors.platform import Platform
from connectors.secrets import SecretRef, register_secret
from checklists.configuration import VerifySection
from connectors.bitrix24.configuration import CrmDeltaSection, SweepSection
from connectors.box_host.configuration import BoxHostSection, PostRestoreSection
from connectors.http_download.configuration import BackupSection
from journal.configuration import ForecastSection, LadderSection, NoticesSection, TriageSection

CHECKLISTS_DIR = Path(__file__).resolve().parent.parent / "checklists"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MigrationSection(_Model):
    name: str = Field(min_length=1, description="a short name of this migration, e.g. the company")
    platform: str = Field(default=platforms.DEFAULT, description="the CRM platform (connectors.platforms)")
    portal: str = Field(description="the cloud portal's address, e.g. https://crm.example.com")
    box_portal: str = Field(default="", description="the box portal's address after the move")
    timezone: str = "UTC"
    contact: str = Field(default="", description="who users contact during the downtime")

    @field_validator("platform")
    @classmethod
    def _known_platform(cls, v: str) -> str:
        if v not in platforms.names():
            raise ValueError(f"{v!r} is not a known platform; known: {', '.join(platforms.names())}")
        return v

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}; use an IANA name such as Europe/Berlin") from None
        return v

    @field_validator("portal", "box_portal")
    @classmethod
    def _url(cls, v: str) -> str:
        if v and not v.startswith(("http://", "https://")):
            raise ValueError(f"{v!r} is not a URL; write it as https://host")
        return v.rstrip("/")


class JournalSection(_Model):
    url: str = Field(
        default="sqlite:///cloud2box-journal.db",
        description="SQLAlchemy URL: sqlite:///path.db or postgresql+psycopg2://user@host/db",
    )
    out_dir: Path = Path("cloud2box-out")

    @field_validator("url")
    @classmethod
    def _supported(cls, v: str) -> str:
        if not v.startswith(("sqlite", "postgresql", "mysql", "mariadb")):
            raise ValueError(f"unsupported journal URL {v.split(':', 1)[0]!r}; use sqlite:/// or postgresql+psycopg2://")
        return v


class PrefectSection(_Model):
    pause_timeout_s: int = Field(default=3 * 24 * 3600, gt=0, description="how long a sign-off may wait")
    poll_interval_s: int = Field(default=10, gt=0, description="how often a paused run checks for input")


class RunbookSection(_Model):
    path: Path = CHECKLISTS_DIR / "runbook.toml"
    risks: Path = Field(default=CHECKLISTS_DIR / "risks.toml", description="the risk register shown at gate 1")
    manual_steps: list[str] = Field(default_factory=list,
                                    description="steps to do by hand even though the runbook automates them")


class Config(_Model):
    """The whole configuration; ``source`` is the file it came from (for messages)."""

    migration: MigrationSection
    journal: JournalSection = JournalSection()
    prefect: PrefectSection = PrefectSection()
    runbook: RunbookSection = RunbookSection()
    backup: BackupSection | None = Field(default=None, description="step 2.3: where the backup comes from")
    box_host: BoxHostSection | None = Field(default=None, description="steps 1.1, 1.2, 1.5, 2.3, 2.4: the box host over SSH")
    post_restore: PostRestoreSection = PostRestoreSection()
    crm_delta: CrmDeltaSection | None = Field(default=None, description="step 2.11: the CRM records since the backup")
    sweeps: SweepSection = Field(default_factory=SweepSection, description="step 3.1: straggler sweeps (needs "
                                                                               "[crm_delta])")
    verify: VerifySection = Field(default_factory=VerifySection, description="checks before steps 2.8, 2.9, 3.2")
    notices: NoticesSection = NoticesSection()
    ladder: LadderSection = LadderSection()
    forecast: ForecastSection = ForecastSection()
    triage: TriageSection = TriageSection()
    secrets: dict[str, SecretRef] = Field(
        default_factory=dict, description="named secrets, e.g. cloud_webhook = {env = 'C2B_CLOUD_WEBHOOK'}"
    )
    source: str = Field(default="<defaults>", exclude=True)

    @property
    def platform(self) -> Platform:
        """The CRM platform ``[migration] platform`` names."""
        return platforms.get(self.migration.platform, source=self.source)

    def snapshot(self) -> dict:
        """A JSON-able copy for the journal: references only, never a secret value."""
        return self.model_dump(mode="json")


def load_config(path: str | os.PathLike, *, overrides: dict | None = None) -> Config:
    """Load and validate ``path``; raise :class:`ConfigError` listing every problem."""
    raw = read_toml(path, missing="file not found; copy config.example.toml and edit it")
    return config_from_dict(raw, source=str(path), overrides=overrides)


def config_from_dict(raw: dict, *, source: str = "<dict>", overrides: dict | None = None) -> Config:
    data = _deep_merge(raw, overrides or {})
    data["source"] = source
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, validation_problems(exc)) from None
    problems = [f"[{key}] file {path} not found" for key, path in
                (("runbook.path", config.runbook.path), ("runbook.risks", config.runbook.risks),
                 ("verify.path", config.verify.path)) if not Path(path).exists()]
    if problems:
        raise ConfigError(source, problems)
    return config


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def resolve_secrets(config: Config, *, prefect_reader=None) -> dict[str, SecretStr]:
    """Resolve every secret reference; raise :class:`ConfigError` naming each one missing.

    ``prefect_reader(name) -> str`` reads a Prefect Secret block (passed in by the flows so this
    module stays usable without a Prefect server).
    """
    values: dict[str, SecretStr] = {}
    problems: list[str] = []
    for key, ref in config.secrets.items():
        value: str | None = None
        if ref.env:
            value = os.environ.get(ref.env)
        elif prefect_reader is not None:
            try:
                value = prefect_reader(ref.prefect_secret)
            except Exception as exc:  # a missing block raises ValueError; report, don't crash
                problems.append(f"[secrets.{key}] cannot read {ref.describe()}: {type(exc).__name__}")
                continue
        if not value:
            problems.append(f"[secrets.{key}] {ref.describe()} is not set; set it before starting")
            continue
        register_secret(value)
        values[key] = SecretStr(value)
    if problems:
        raise ConfigError(config.source, problems)
    return values


Mode = Literal["rehearsal", "cutover"]

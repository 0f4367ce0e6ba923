"""The one configuration tree of cloud2box, loaded from TOML and validated once at start.

Every problem is reported at once, each naming the file and the dotted key. Secrets are never
in the file: a ``SecretRef`` names an environment variable or a Prefect Secret block, resolved
into ``SecretStr`` by :func:`resolve_secrets` and registered for redaction.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from checklists.toml_model import read_toml, validation_problems
from connectors import platforms
from connectors.errors import ConfigError
from connectors.platform import Platform
from connectors.secrets import SecretRef, register_secret
from checklists.configuration import VerifySection
from connectors.box_host.configuration import BoxHostSection
from connectors.http_download.configuration import UrlsBackupSection
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


class SweepSection(_Model):
    """Phase 3 straggler sweeps and their loop guard (seed 000): cadence, quarantine, budgets."""

    enabled: bool = Field(True, description="sweep while the sweep step (3.1) is open")
    interval_minutes: float = Field(15.0, gt=0, description="a sweep every N minutes")
    quarantine_changes: int = Field(4, ge=1, description="K: a record seen changed by more than K sweeps within "
                                                         "the window is quarantined (not synced) and alerted")
    quarantine_window_minutes: float = Field(120.0, gt=0, description="M: the window of the change count")
    requests_per_sweep: int = Field(300, ge=10, description="hard cap of REST requests of one sweep")
    requests_per_day: int = Field(5000, ge=10, description="hard cap of the sweeps' REST requests per UTC day")
    overlap_seconds: float = Field(120.0, ge=0, description="each sweep re-lists this much before the last one")
    max_sweeps: int = Field(1000, ge=1, description="a bound on sweeps per step (3 days at 5 min is 864)")
    alert_urls: list[str] = Field(default_factory=list,
                                  description="apprise URLs (or [secrets] names) of the contractor, for sync alerts; "
                                              "empty: alerts are journaled and written next to the notices")
    notify_stragglers: bool = Field(True, description="send the users still working in the cloud a notice")
    events_listen: str = Field("", description="host:port to receive the cloud's outgoing webhook events "
                                               "(ONCRMLEADADD …) and sweep early; empty: interval only")
    events_token_secret: str = Field("", description="[secrets] entry holding the outgoing webhook's "
                                                     "application_token (events without it are refused)")
    min_gap_seconds: float = Field(30.0, ge=0, description="events never start sweeps closer than this")

    @field_validator("events_listen")
    @classmethod
    def _host_port(cls, v: str) -> str:
        if v:
            host, _, port = v.rpartition(":")
            if not host or not port.isdigit() or not 0 <= int(port) < 65536:
                raise ValueError(f"{v!r} is not host:port, e.g. 127.0.0.1:8765")
        return v

    @model_validator(mode="after")
    def _quarantine_reachable(self) -> "SweepSection":
        # a sweep sees one modification time per record: the window holds at most window/interval + 1
        sweeps_in_window = int(self.quarantine_window_minutes / self.interval_minutes) + 1
        if self.quarantine_changes >= sweeps_in_window:
            raise ValueError(f"quarantine_changes = {self.quarantine_changes} can never be passed: a window of "
                             f"{self.quarantine_window_minutes:g} min holds only {sweeps_in_window} sweeps every "
                             f"{self.interval_minutes:g} min; lower quarantine_changes or widen the window")
        return self

    @model_validator(mode="after")
    def _token_with_listener(self) -> "SweepSection":
        if self.events_listen and not self.events_token_secret:
            raise ValueError("events_listen needs events_token_secret: the outgoing webhook's application_token "
                             "is the only proof an event comes from the portal")
        return self


def _by_platform(sections: list[type[BaseModel]]) -> Any:
    """One config section of every registered platform, told apart by its ``platform`` field (a
    discriminated union; one platform needs no discriminator)."""
    if len(sections) == 1:
        return sections[0]
    return Annotated[Union[tuple(sections)], Field(discriminator="platform")]


_PLATFORMS = platforms.load_all()
CrmSection = _by_platform([p.crm.section for p in _PLATFORMS])
PostRestoreSection = _by_platform([p.restore.post_restore_section for p in _PLATFORMS])

# [backup]: plain part URLs or a platform's own delivery, told apart by ``source``
BackupConfig = Annotated[Union[UrlsBackupSection, *(p.delivery.section for p in _PLATFORMS)],
                         Field(discriminator="source")]
_NAMES = {p.name for p in _PLATFORMS}
_UNION_TAGS = {"backup": {"urls", *_NAMES}, "crm_delta": _NAMES, "post_restore": _NAMES}


class Config(_Model):
    """The whole configuration; ``source`` is the file it came from (for messages)."""

    migration: MigrationSection
    journal: JournalSection = JournalSection()
    prefect: PrefectSection = PrefectSection()
    runbook: RunbookSection = RunbookSection()
    backup: BackupConfig | None = Field(default=None, description="step 2.3: where the backup comes from")
    box_host: BoxHostSection | None = Field(default=None, description="steps 1.1, 1.2, 1.5, 2.3, 2.4: the box host over SSH")
    post_restore: PostRestoreSection = Field(description="step 2.4: the platform's settings after restore")
    crm_delta: CrmSection | None = Field(default=None, description="step 2.11: the CRM records since the backup")
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

    @model_validator(mode="before")
    @classmethod
    def _platform_defaults(cls, data: Any) -> Any:
        """Fill in what ``[migration] platform`` implies, so a file names its platform once: the
        tag of each platform section, the platform's own backup delivery when ``[backup] source``
        is not given, and the platform's box layout under ``[box_host]``."""
        if not isinstance(data, dict) or not isinstance(data.get("migration"), dict):
            return data
        name = data["migration"].get("platform", platforms.DEFAULT)
        if name not in platforms.names():
            return data  # MigrationSection names the problem
        data = dict(data)
        for key in ("crm_delta", "post_restore"):
            section = data.get(key, {} if key == "post_restore" else None)
            if isinstance(section, dict):
                data[key] = {"platform": name, **section}
        if isinstance(data.get("backup"), dict):
            data["backup"] = {"source": name, **data["backup"]}
        if isinstance(data.get("box_host"), dict):
            data["box_host"] = _deep_merge(platforms.get(name).restore.box_defaults, data["box_host"])
        return data

    @model_validator(mode="after")
    def _one_platform(self) -> "Config":
        """Every platform section belongs to the migration's platform (a file may name another
        platform's section explicitly; its parts, clients and fixes would not fit this one)."""
        name = self.migration.platform
        tagged = [("backup", "source", self.backup, {"urls", name}), ("crm_delta", "platform", self.crm_delta, {name}),
                  ("post_restore", "platform", self.post_restore, {name})]
        wrong = [f"[{key}] {tag} = {getattr(section, tag)!r} does not fit [migration] platform = {name!r}"
                 for key, tag, section, allowed in tagged if section is not None and getattr(section, tag) not in allowed]
        if wrong:
            raise ValueError("; ".join(wrong))
        return self

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
        raise ConfigError(source, validation_problems(exc, union_tags=_UNION_TAGS)) from None
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

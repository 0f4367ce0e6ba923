"""Config sections of the journal side: ``[notices]``, ``[ladder]``, ``[forecast]``, ``[triage]``.

The lead adds them to :class:`flows.config.Config` as ``notices: NoticesSection = NoticesSection()``
and so on. Notice URLs may carry tokens (Slack, Telegram, mail passwords): name an entry of the
top-level ``[secrets]`` table instead of writing the URL, and :func:`resolve_notice_urls` picks
the resolved value.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from connectors.errors import ConfigError

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoticesSection(_Model):
    urls: list[str] = Field(
        default_factory=list,
        description="apprise URLs (json://host/path, mailtos://…, slack://…, tgram://…) or names of [secrets] "
                    "entries holding them; a URL with a token must be a secret name",
    )
    language: str = Field(default="en", pattern=r"^[a-z]{2}(-[A-Za-z]{2})?$",
                          description="language of the notices (templates in journal/templates/notices/<lang>)")
    templates_dir: Path | None = Field(
        default=None, description="a directory with <lang>/<kind>.j2 overriding the shipped templates")
    dry_run: bool = Field(default=False, description="write notices to files instead of sending them")
    out_dir: Path | None = Field(default=None, description="where dry-run notices go (default: journal out_dir/notices)")
    next_update_minutes: int = Field(default=60, gt=0, description="promised interval between progress updates")
    audience: str = Field(default="the CRM users", description="who receives the notices, as said in them")
    workaround: str = Field(
        default="Record new leads and calls in the shared sheet agreed in step 2.2; they are entered into the "
                "CRM when it is back.",
        description="what users do while the CRM is down")
    timeout_s: float = Field(default=15.0, gt=0, description="per-target delivery timeout")


class LadderSection(_Model):
    """Escalation thresholds during user downtime, in minutes (seed 002: 1 h, 4 h, 12 h)."""

    enabled: bool = True
    workaround_after_min: float = Field(default=60, gt=0, description="send users the workaround notice")
    decision_after_min: float = Field(default=240, gt=0, description="pause for the customer's roll-back decision")
    data_return_after_min: float = Field(default=720, gt=0, description="generate the data-return plan")
    check_interval_s: float = Field(default=30, gt=0, description="how often the flow checks for due updates")

    @model_validator(mode="after")
    def _ordered(self) -> "LadderSection":
        if not self.workaround_after_min < self.decision_after_min < self.data_return_after_min:
            raise ValueError("ladder thresholds must grow: workaround < decision < data_return")
        return self


class ForecastSection(_Model):
    p90_factor: float = Field(default=1.25, ge=1.0,
                              description="P90/P50 of an automated step when the rehearsal recorded no rate spread")
    manual_p90_factor: float = Field(default=1.5, ge=1.0, description="P90/P50 of a manual step")
    eta_change_min_s: float = Field(default=60.0, ge=0, description="journal a live ETA change only if it moves "
                                                                    "at least this much …")
    eta_change_pct: float = Field(default=5.0, ge=0, description="… and at least this share of the remaining time")


class TriageSection(_Model):
    rules: Path = Field(default=Path(__file__).resolve().parent.parent / "checklists" / "triage.toml")


def resolve_notice_urls(section: NoticesSection, secrets: dict[str, SecretStr], source: str = "<config>") -> list[str]:
    """The apprise URLs to notify: secret names resolved; ConfigError names every unknown entry."""
    urls, problems = [], []
    for i, entry in enumerate(section.urls):
        if entry in secrets:
            urls.append(secrets[entry].get_secret_value())
        elif "://" in entry:
            urls.append(entry)
        else:
            # not repeated: it may be a token pasted without its scheme
            problems.append(f"[notices.urls.{i}] is neither an apprise URL (scheme://…) nor the name of a [secrets] "
                            "entry; write the URL, or put it into [secrets] and write that entry's name")
    if problems:
        raise ConfigError(source, problems)
    return urls

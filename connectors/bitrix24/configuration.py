"""Config section ``[crm_delta]``: step 2.11, moving the CRM records changed since the backup."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ENTITIES = ("company", "contact", "lead", "deal")


class CrmDeltaSection(BaseModel):
    """Where the cloud and the box are, how hard we may call them, and what to move."""

    model_config = ConfigDict(extra="forbid")

    cloud_webhook_secret: str = Field("cloud_webhook", description="[secrets] entry holding the cloud's incoming "
                                      "webhook code (or its whole URL https://PORTAL/rest/USER_ID/CODE/)")
    box_webhook_secret: str = Field("box_webhook", description="[secrets] entry holding the box's webhook code or URL")
    webhook_user_id: int = Field(1, ge=1, description="USER_ID in the webhook URLs (the user who made the webhooks)")
    cutoff: dt.datetime | None = Field(None, description="the backup's cutoff with its offset, e.g. "
                                       "2026-11-20T09:00:00+03:00; empty: taken from the journal of the backup step")
    entities: list[str] = Field(list(ENTITIES), description="what to move, in dependency order")
    rate: float = Field(2.0, gt=0, description="requests/s of the portal's plan (Enterprise: 5)")
    burst: int = Field(50, ge=1, description="leaky bucket size of the portal's plan (Enterprise: 250)")
    box_rate: float = Field(2.0, gt=0, description="requests/s allowed on the box")
    box_burst: int = Field(50, ge=1)
    timeout_s: float = Field(60.0, gt=0, description="seconds per REST request")
    max_attempts: int = Field(8, ge=1, le=50, description="bound of retries per request (transient errors only)")
    max_wait_s: float = Field(900.0, gt=0, description="longest wait for a portal limit to reset")
    fallback_user_id: int = Field(1, ge=1, description="box user who gets records of users missing in the box")
    use_batch_import: bool = Field(True, description="use crm.item.batchImport when the box offers it")
    detect_deleted: bool = Field(True, description="list backup records gone from the cloud (never deleted)")
    migration_key: str = Field("", description="key of the cloud→box id map; empty: the migration run (each run "
                                               "restores a fresh box)")

    @field_validator("cutoff")
    @classmethod
    def _aware(cls, v: dt.datetime | None) -> dt.datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("the cutoff needs a UTC offset, e.g. 2026-11-20T09:00:00+03:00")
        return v

    @field_validator("entities")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [e for e in v if e not in ENTITIES]
        if bad:
            raise ValueError(f"unknown entities {bad}; known: {', '.join(ENTITIES)}")
        return [e for e in ENTITIES if e in v]  # dependency order, whatever order was written


class SweepSection(BaseModel):
    """Phase 3 straggler sweeps and their loop guard (seed 000): cadence, quarantine, budgets."""

    model_config = ConfigDict(extra="forbid")

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

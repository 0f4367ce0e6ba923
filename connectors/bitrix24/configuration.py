"""Config sections ``[crm_delta]`` (step 2.11, moving the CRM records changed since the backup) and
``[backup]`` with the vendor's own delivery (step 2.3, ``source = "bitrix24"``)."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from connectors.http_download.configuration import BackupSection

ENTITIES = ("company", "contact", "lead", "deal")


class CrmDeltaSection(BaseModel):
    """Where the cloud and the box are, how hard we may call them, and what to move."""

    model_config = ConfigDict(extra="forbid")

    platform: Literal["bitrix24"] = Field("bitrix24", description="the platform these settings are for")
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


class Bitrix24BackupSection(BackupSection):
    """The backup from the vendor's backup service (``backup.php``): the portal's licence key and
    the backup password find and sign the parts."""

    source: Literal["bitrix24"] = Field(default="bitrix24", description="the vendor's delivery protocol")
    info_url: str = Field(default="https://www.1c-bitrix.ru/buy_tmp/backup.php",
                          description="the vendor's backup.php endpoint")
    licence_key_secret: str = Field(default="backup_licence_key",
                                    description="[secrets] entry: the portal's licence key")
    password_secret: str = Field(default="backup_password", description="[secrets] entry: the backup password")

    @field_validator("info_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"info_url {v!r} is not an http(s) URL")
        return v

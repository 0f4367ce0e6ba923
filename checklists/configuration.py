"""Config section ``[verify]``: the post-migration checks (checklists/verify.toml)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

VERIFY_PATH = Path(__file__).resolve().parent / "verify.toml"


class VerifySection(BaseModel):
    """What the checks may reach beyond the portals' webhooks and the box host."""

    model_config = ConfigDict(extra="forbid")

    path: Path = Field(VERIFY_PATH, description="the checks (checklists/verify.toml)")
    https_url: str = Field("", description="the box portal's HTTPS address; empty: [migration] box_portal when "
                                           "it is https://")
    ca_file: Path | None = Field(None, description="a CA bundle to trust for https_url (default: the system's)")
    cloud_apps: list[str] = Field(default_factory=list,
                                  description="codes of the apps installed in the cloud (Applications → Installed); "
                                              "empty: the marketplace check is not run")
    skip: list[str] = Field(default_factory=list, description="check ids not to run (reported as not run)")
    timeout_s: float = Field(20.0, gt=0, description="seconds per network call of a check")

"""What ``cloud2box check`` proves on Bitrix24, read-only: both webhooks and the backup delivery.

Webhooks (the vendor's REST docs, bitrix-tools/b24-rest-docs):
- ``scope`` lists the scopes the webhook was given (api-reference/common/system/scope.md); the run
  needs ``crm`` (every ``crm.*`` method) and ``user`` (``user.get``, mapping the records' owners).
  A portal without the method is probed by the calls below instead.
- ``crm.lead.list`` with ``start=-1`` reads one page without the count query (the fast export's
  paging), ``user.get`` reads the webhook's own user.
- step 2.11 creates the cloud's custom fields on the box with ``crm.<entity>.userfield.add``, which
  only a CRM administrator may call (api-reference/crm/leads/userfield/crm-lead-userfield-add.md);
  nothing read-only proves that right, so ``profile``'s ``ADMIN`` flag
  (api-reference/common/users/profile.md) stands in: a portal administrator holds it.

Backup delivery: ``get_info`` answers with the part list, and ``read_file`` locates the first part
(which proves the backup password); nothing is downloaded.
"""

from __future__ import annotations

from typing import Any

from connectors.access import AccessResult, failed, from_error, ok, skipped
from connectors.errors import MigrationError

from .rest import Bitrix24Client

NEEDED_SCOPES = ("crm", "user")  # crm.* and user.get; the run calls nothing else it cannot do without
_NEW_WEBHOOK = ("create an incoming webhook with the scopes crm and user on that portal (Developer resources → "
                "Other → Incoming webhook) and put its URL or code into the secret")


def _not_offered(exc: MigrationError) -> bool:
    return "ERROR_METHOD_NOT_FOUND" in exc.message


def check_webhook(client: Bitrix24Client, label: str, *, user_id: int, needs_admin: bool) -> list[AccessResult]:
    """Rows for one portal's webhook: its scopes, a CRM read, a user read (and the admin flag when
    ``needs_admin``). The first refusal ends the probe: the later calls would say the same."""
    name = f"{label} webhook"
    try:
        try:
            granted = client.call("scope")["result"]
        except MigrationError as exc:
            if not _not_offered(exc):
                raise
            granted = None
        if isinstance(granted, list):
            missing = [s for s in NEEDED_SCOPES if s not in granted]
            if missing:
                return [failed(name, f"the webhook lacks the scope(s) {', '.join(missing)} "
                                     f"(it has {', '.join(map(str, granted)) or 'none'})", _NEW_WEBHOOK)]
        client.call("crm.lead.list", {"order": {"ID": "ASC"}, "select": ["ID"], "start": -1})
        users = client.call("user.get", {"FILTER": {"ID": str(user_id)}})["result"]
        rows = [ok(name, f"{client.display_url}: scopes "
                         + (", ".join(s for s in NEEDED_SCOPES) if granted is not None else "not listed by the portal")
                         + f"; crm.lead.list and user.get answer ({len(users or [])} user(s) with ID {user_id})")]
        if needs_admin:
            rows.append(_admin_row(client, label, user_id))
        return rows
    except MigrationError as exc:
        return [from_error(name, exc, _NEW_WEBHOOK)]


def _admin_row(client: Bitrix24Client, label: str, user_id: int) -> AccessResult:
    name = f"{label} custom-field rights"
    try:
        profile = client.call("profile")["result"]
    except MigrationError as exc:
        if _not_offered(exc):
            return skipped(name, "the portal has no profile method: whether custom fields can be created shows at "
                                 "step 2.11")
        return from_error(name, exc)
    if isinstance(profile, dict) and profile.get("ADMIN") in (True, "Y", "1", 1):
        return ok(name, f"user {user_id} is an administrator: step 2.11 can create the cloud's custom fields")
    return failed(name, f"the webhook's user {user_id} is not an administrator of {label}; step 2.11 creates "
                        "custom fields there (crm.<entity>.userfield.add needs a CRM administrator)",
                  "make the webhook's user an administrator of the box, or create the webhook as one")


def check_delivery(source: Any) -> AccessResult:
    """The vendor's backup service: the part list (``get_info``) and the first part's location."""
    name = "backup delivery"
    try:
        files = source.part_names()
        if not files:
            return failed(name, "the backup service lists no backup parts",
                          "ask the vendor's support whether the backup was made; request it again")
        first = files[0][0]
        source.locate(first)
        total = sum(size for _, size in files)
        return ok(name, f"{len(files)} part(s), {total / 2**20:.1f} MiB listed; part {first} can be located")
    except MigrationError as exc:
        return from_error(name, exc, "check info_url and the licence key and backup password secrets")

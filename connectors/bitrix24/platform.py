"""Bitrix24 as a :class:`connectors.platform.Platform`: thin adapters over this package's functions.

``PLATFORM`` is what :func:`connectors.platforms.get` returns for ``"bitrix24"``. The adapters
add no behaviour; the REST client and the steps' functions stay usable directly.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any, Callable

from connectors.errors import ConfigError
from connectors.platform import Platform, SecretLookup, SweepHistory, SweepOutcome

from . import backup_format, delta, importer, reconcile, sweep
from . import post_restore as portal_fixes
from .configuration import ENTITIES, Bitrix24BackupSection, CrmDeltaSection
from .errors import BITRIX24_CODES
from .rest import Bitrix24Client

# https://portal/rest/{USER_ID}/{CODE}/method.json: the CODE is the credential.
WEBHOOK_CODE = re.compile(r"(/rest/\d+/)([^/\s?#\"']+)")


class _Format:
    header_len = backup_format.HEADER_LEN
    header_members = 1  # CTar's first member carries the part's size and the last part's number
    size_field, count_field = "BX", "LN"  # the extra field's subfield ids (CTar::createEmptyGzipExtra)

    def parse_header(self, head: bytes) -> backup_format.PartHeader:
        return backup_format.parse_header(head)

    def part_number(self, name: str) -> int | None:
        split = backup_format.split_part_name(name)
        return split[1] if split else None

    def check_part_names(self, names: list[str]) -> list[str]:
        return backup_format.check_part_names(names)

    def check_part_count(self, names: list[str], last_part: int | None) -> list[str]:
        return backup_format.check_part_count(names, last_part)


class _Delivery:
    """The vendor's cloud backup service (``[backup] source = "bitrix24"``)."""

    section = Bitrix24BackupSection

    def source(self, section: Bitrix24BackupSection, secret: SecretLookup, problems: list[str]):
        from .backup_source import Bitrix24BackupSource

        key = secret(section.licence_key_secret, problems, "the portal's licence key")
        password = secret(section.password_secret, problems, "the backup password")
        if key is None or password is None:
            if not problems:  # an empty secret name: nothing to look up
                problems.append("[backup] licence_key_secret and password_secret must name [secrets] entries")
            return None
        return Bitrix24BackupSource(section.info_url, key, password)


class _Restore:
    agent_source = Path(__file__).parent / "agent" / "restore_agent.py"
    dump_hint = "bitrix/backup/*.sql"
    post_restore_section = portal_fixes.PostRestoreSection

    @property
    def box_defaults(self) -> dict[str, Any]:
        """BitrixVM's layout (a fresh dict: callers may merge into it)."""
        return {"site_root": "/home/bitrix/www", "staging_dir": "/home/bitrix/c2b-staging",
                "db": {"user": "bitrix", "database": "sitemanager"}}

    def dump_order(self, files: list[str]) -> list[str]:
        return backup_format.dump_order(files)

    def post_restore(self, sql: Callable, settings: portal_fixes.PostRestoreSection, *, domain: str) -> list:
        return portal_fixes.run_fixes(sql, settings, domain=domain)


def webhook_url(value: str, portal: str, user_id: int) -> str | None:
    """The webhook URL from a secret holding the whole URL or the code alone (then built from
    ``portal``); None when only the code is known and ``portal`` is empty."""
    value = value.strip()
    if value.startswith(("http://", "https://")):
        return value
    return f"{portal.rstrip('/')}/rest/{user_id}/{value}/" if portal else None


class _Crm:
    entities = ENTITIES
    section = CrmDeltaSection

    def endpoints(self, section: CrmDeltaSection, secrets: dict, migration: Any, *, source: str,
                  budget=None) -> tuple[Bitrix24Client, Bitrix24Client]:
        """The cloud's and the box's REST clients from ``[crm_delta]``, ``[secrets]`` and
        ``[migration].portal``/``box_portal``; ``budget`` is spent by both.

        Raises:
            ConfigError: a webhook secret is missing, or it holds the code alone and the portal is empty.
        """
        problems, urls = [], []
        for name, what, portal, key in ((section.cloud_webhook_secret, "the cloud's webhook URL", migration.portal,
                                         "portal"),
                                        (section.box_webhook_secret, "the box's webhook URL", migration.box_portal,
                                         "box_portal")):
            if name not in secrets:
                problems.append(f"[secrets.{name}] is not defined ({what})")
                continue
            url = webhook_url(secrets[name].get_secret_value(), portal, section.webhook_user_id)
            if url is None:
                problems.append(f"[migration].{key} is empty: the webhook code in [secrets.{name}] needs the "
                                "portal's address (or put the whole webhook URL into the secret)")
            urls.append(url)
        if problems:
            raise ConfigError(source, problems)
        common = {"timeout": section.timeout_s, "max_attempts": section.max_attempts,
                  "max_wait_s": section.max_wait_s, "budget": budget}
        cloud = Bitrix24Client(urls[0], rate=section.rate, burst=section.burst, name="the cloud portal", **common)
        box = Bitrix24Client(urls[1], rate=section.box_rate, burst=section.box_burst, name="the box portal", **common)
        return cloud, box

    def export(self, cloud, box, cutoff: dt.datetime, **kw) -> delta.DeltaExport:
        return delta.export_delta(cloud, box, cutoff, **kw)

    def write_review_files(self, exported: delta.DeltaExport, out_dir: Path) -> list[Path]:
        return delta.write_csvs(exported, out_dir)

    def map_users(self, cloud, box) -> dict[str, str]:
        return importer.map_users(cloud, box)

    def import_delta(self, box, exported, idmap, *, review_dir: Path | None = None, **kw) -> importer.ImportReport:
        """The import; ``review_dir``: where the list of records moved with the box's creation time goes."""
        report = importer.import_delta(box, exported, idmap, **kw)
        if review_dir is not None and any(r.times_not_kept for r in report.entities.values()):
            importer.write_retimed_csv(report, review_dir)
        return report

    def reconcile(self, box, exported, idmap, **kw) -> reconcile.Reconciliation:
        return reconcile.reconcile(box, exported, idmap, **kw)

    def backup_marks(self, box, cutoff: dt.datetime, *, entities,
                     skip_ours: bool = False) -> dict[str, dict[str, int]]:
        from . import dynamic, timeline

        marks = delta.backup_marks(box, cutoff, tuple(entities), skip_ours=skip_ours)
        marks.update(timeline.timeline_marks(box, cutoff))  # activities, products
        marks.update(dynamic.dynamic_marks(box, cutoff))  # dynamic:<entityTypeId> per smart process
        return marks

    def sweep(self, cloud, box, idmap, history: SweepHistory, **kw) -> SweepOutcome:
        return sweep.run_sweep(cloud, box, idmap, history, **kw)

    def presync(self, cloud, box, idmap, history: SweepHistory, *, scan_deleted: bool, **kw) -> SweepOutcome:
        return sweep.run_sweep(cloud, box, idmap, history, stragglers=False, reconcile=True,
                               scan_deleted=scan_deleted, **kw)

    def backlog(self, cloud, since: dt.datetime, *, entities) -> dict[str, int]:
        return delta.changed_since(cloud, since, entities=entities)


class _Events:
    """The portal's outgoing webhooks (``application_token`` checked)."""

    def receiver(self, token: str, on_event, *, host: str, port: int):
        from .events import EventReceiver

        return EventReceiver(token, on_event, host=host, port=port)


class _Checks:
    """The post-migration check kinds of :mod:`.checks` and the ``[post_restore]`` settings they read."""

    def kinds(self) -> dict[str, Callable]:
        from .checks import KINDS

        return dict(KINDS)

    def access_options(self, config) -> dict[str, Any]:
        post = getattr(config, "post_restore", None) or portal_fixes.PostRestoreSection()
        return {"pull_options": dict(post.pull_options), "network_auth_ids": list(post.network_auth_ids)}


class _Access:
    """Read-only proof of the webhooks and the backup delivery (:mod:`.access`)."""

    def webhooks(self, section: CrmDeltaSection, secrets: dict, migration: Any, *, source: str,
                 timeout_s: float) -> list:
        from .access import check_webhook

        try:
            cloud, box = _Crm().endpoints(section, secrets, migration, source=source)
        except ConfigError as exc:
            from connectors.access import failed

            return [failed("webhooks", "; ".join(exc.problems), exc.fix or "")]
        rows = []
        for client, label, admin in ((cloud, "cloud", False), (box, "box", True)):
            client.timeout, client.max_attempts, client.max_wait_s = timeout_s, 1, timeout_s  # a probe, not a run
            try:
                rows += check_webhook(client, label, user_id=section.webhook_user_id, needs_admin=admin)
            finally:
                client.session.close()
        return rows

    def delivery(self, section: Bitrix24BackupSection, secret: SecretLookup, *, timeout_s: float) -> list:
        from connectors.access import failed

        from .access import check_delivery

        problems: list[str] = []
        source = _Delivery().source(section, secret, problems)
        if source is None:
            return [failed("backup delivery", "; ".join(problems), "add the missing [secrets] entries")]
        source.timeout = (min(10.0, timeout_s), timeout_s)
        try:
            return [check_delivery(source)]
        finally:
            source.session.close()


PLATFORM = Platform(name="bitrix24", format=_Format(), delivery=_Delivery(), restore=_Restore(), crm=_Crm(),
                    error_codes=BITRIX24_CODES, events=_Events(), checks=_Checks(), access=_Access(),
                    redaction=(WEBHOOK_CODE,))

"""Realistic CRM data for the sandbox portal, and the cloud/box pair the demo and tests use.

The generated history spans a year before the backup cutoff (creation times spread over it,
modifications after creation), then a few days of post-cutoff work in the cloud: new companies,
contacts, leads and deals (with relations to old and new records), changes to pre-cutoff records,
records created by a user hired after the backup, and one record deleted in the cloud. Tasks with
comments exist before the cutoff (in the backup, IDs kept); some get further comments in the
cloud after it.

:func:`start_pair` seeds the *box* with the backup state (the cloud as of the cutoff, as restored
from the backup; IDs kept) and the *cloud* with the backup state plus the post-cutoff changes.
"""

from __future__ import annotations

import bisect
import datetime as dt
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .server import Portal, PortalLimits, PortalServer, make_tls
from .custom_data import (CustomDataset, make_custom, seed_custom_changes, seed_custom_definitions, seed_custom_items,
                          seed_custom_post)
from .store import CrmStore
from .timeline_data import TimelineDataset, make_timeline, seed_timeline_backup, seed_timeline_post

FIRST = ["Anna", "Ivan", "Maria", "Dmitri", "Olga", "Peter", "Elena", "Sergei", "Irina", "Nikolai", "Jana", "Budi",
         "Siti", "Georgi", "Lena", "Klaus"]
LAST = ["Petrova", "Ivanov", "Schmidt", "Santoso", "Dimitrov", "Müller", "Smirnova", "Kuznetsov", "Wijaya", "Popova"]
KINDS = ["LLC", "GmbH", "PT", "OOD", "AG", "Ltd"]
WORDS = ["Nord", "Alpha", "Sun", "Baltic", "Green", "Delta", "River", "Stone", "Blue", "Prime"]
STATUSES = ["NEW", "IN_PROCESS", "PROCESSED", "JUNK", "CONVERTED"]
STAGES = ["NEW", "PREPARATION", "PREPAYMENT_INVOICE", "EXECUTING", "WON", "LOSE"]
SOURCES = ["CALL", "EMAIL", "WEB", "ADVERTISING", "PARTNER", "OTHER"]
# Values that would be formulas in a spreadsheet: exported CSVs must neutralise them.
TRICKY = ["=HYPERLINK(\"http://x\",\"y\")", "+7 495 000", "-1+2", "@SUM(A1)"]


@dataclass
class Change:
    """One post-cutoff event in the cloud."""

    at: dt.datetime
    kind: str  # add | update | delete
    entity: str
    record_id: int
    fields: dict = field(default_factory=dict)


@dataclass
class CrmDataset:
    """Backup-state records (per entity: ID → fields) plus the ordered post-cutoff changes."""

    cutoff: dt.datetime
    backup: dict[str, dict[int, dict]]
    changes: list[Change]
    users: list[dict]
    new_users: list[dict]
    # Tasks of the backup: {"ID", "TITLE", "CREATED_DATE", "CREATED_BY",
    # "comments": [(comment_id, author_id, post_date, text), ...]} (all before the cutoff).
    tasks: list[dict] = field(default_factory=list)
    # Comments posted in the cloud after the cutoff: (task_id, comment_id, author_id, post_date, text).
    post_comments: list[tuple] = field(default_factory=list)
    # Activities, timeline comments, products and deal product rows, backup and post-cutoff (timeline_data.py).
    timeline: TimelineDataset = field(default_factory=TimelineDataset)
    # Custom fields, WEB/IM, contact ↔ company bindings, the smart process "Shipments" (custom_data.py).
    custom: CustomDataset = field(default_factory=CustomDataset)


def _phone(rng) -> list[dict]:
    return [{"VALUE": f"+7 9{rng.randint(10, 99)} {rng.randint(100, 999)}-{rng.randint(10, 99)}-"
                      f"{rng.randint(10, 99)}", "VALUE_TYPE": rng.choice(["WORK", "MOBILE"])}
            for _ in range(rng.choice([1, 1, 2]))]


def _email(rng, name: str) -> list[dict]:
    return [{"VALUE": f"{name.lower()}{rng.randint(1, 999)}@example.com", "VALUE_TYPE": "WORK"}]


def generate(*, companies: int = 60, contacts: int = 150, leads: int = 400, deals: int = 200,
             cutoff: dt.datetime | None = None, post_days: float = 3.0, post_fraction: float = 0.1,
             modify_fraction: float = 0.05, seed: int = 7, users: int = 8, tasks: int = 30) -> CrmDataset:
    """A year of CRM history before ``cutoff`` and ``post_days`` of changes after it.

    ``post_fraction`` of each entity's records are created after the cutoff; ``modify_fraction``
    of the pre-cutoff records are changed after it; one pre-cutoff lead is deleted in the cloud.
    ``tasks`` tasks (0–6 comments each) exist before the cutoff; some get comments after it.
    """
    rng = random.Random(seed)
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    cutoff = cutoff or (now - dt.timedelta(days=post_days, hours=1))
    post_end = min(now - dt.timedelta(minutes=5), cutoff + dt.timedelta(days=post_days))
    year = dt.timedelta(days=365)
    user_list = [{"ID": str(i), "NAME": rng.choice(FIRST), "LAST_NAME": rng.choice(LAST), "ACTIVE": True,
                  "EMAIL": f"user{i}@corp.example"} for i in range(1, users + 1)]
    new_user = {"ID": str(users + 1), "NAME": "Newhire", "LAST_NAME": "Afterbackup", "ACTIVE": True,
                "EMAIL": f"user{users + 1}@corp.example"}

    def times(n_pre: int, n_post: int) -> list[tuple[dt.datetime, bool]]:
        pre = sorted(cutoff - year + dt.timedelta(seconds=rng.uniform(0, year.total_seconds())) for _ in range(n_pre))
        span = (post_end - cutoff).total_seconds()
        post = sorted(cutoff + dt.timedelta(seconds=rng.uniform(1, span)) for _ in range(n_post))
        return [(t.replace(microsecond=0), False) for t in pre] + [(t.replace(microsecond=0), True) for t in post]

    backup: dict[str, dict[int, dict]] = {e: {} for e in ("company", "contact", "lead", "deal")}
    changes: list[Change] = []
    created_at: dict[str, dict[int, dt.datetime]] = {e: {} for e in backup}
    times_of: dict[str, list[dt.datetime]] = {e: [] for e in backup}  # creation times in ID order (ascending)

    def split(n: int) -> tuple[int, int]:
        post = max(1, int(n * post_fraction))
        return n - post, post

    def assignee(post: bool) -> str:
        if post and rng.random() < 0.1:
            return new_user["ID"]
        return rng.choice(user_list)["ID"]

    def make(entity: str, n: int, build) -> list[int]:
        ids = []
        for i, (t, post) in enumerate(times(*split(n)), start=1):
            fields = build(i, t, post)
            fields.update({"DATE_CREATE": t, "ASSIGNED_BY_ID": assignee(post),
                           "CREATED_BY_ID": rng.choice(user_list)["ID"]})
            if post:
                fields["DATE_MODIFY"] = t
                changes.append(Change(t, "add", entity, i, fields))
            else:
                fields["DATE_MODIFY"] = min(cutoff, t + dt.timedelta(seconds=rng.uniform(0, 30 * 86400)))
                backup[entity][i] = fields
            created_at[entity][i] = t
            times_of[entity].append(t)
            ids.append(i)
        return ids

    def related(entity: str, t: dt.datetime) -> int | None:
        """A record of ``entity`` that existed at ``t`` (old or new). ``make`` numbers records 1, 2, …
        in time order, so those are the IDs 1..n with n found by bisection (a portal of a million
        records in minutes, not hours)."""
        n = bisect.bisect_left(times_of[entity], t)
        if not n:
            return None
        return rng.choice(range(max(1, n - 199), n + 1) if rng.random() < 0.5 else range(1, n + 1))

    make("company", companies, lambda i, t, post: {
        "TITLE": f"{rng.choice(WORDS)} {rng.choice(WORDS)} {rng.choice(KINDS)}" if i % 37 else TRICKY[i % 4],
        "COMPANY_TYPE": rng.choice(["CUSTOMER", "PARTNER", "SUPPLIER"]), "INDUSTRY": rng.choice(["IT", "MANUFACTURING"]),
        "PHONE": _phone(rng), "EMAIL": _email(rng, "office")})
    make("contact", contacts, lambda i, t, post: {
        "NAME": rng.choice(FIRST), "LAST_NAME": rng.choice(LAST), "POST": rng.choice(["CEO", "buyer", "CTO", ""]),
        "COMPANY_ID": related("company", t), "SOURCE_ID": rng.choice(SOURCES),
        "PHONE": _phone(rng), "EMAIL": _email(rng, rng.choice(FIRST))})
    make("lead", leads, lambda i, t, post: {
        "TITLE": f"Lead #{i}: {rng.choice(WORDS)} request" if i % 53 else TRICKY[i % 4],
        "NAME": rng.choice(FIRST), "LAST_NAME": rng.choice(LAST), "STATUS_ID": rng.choice(STATUSES),
        "SOURCE_ID": rng.choice(SOURCES), "OPPORTUNITY": f"{rng.randint(1, 500) * 100}.00", "CURRENCY_ID": "EUR",
        "CONTACT_ID": related("contact", t) if rng.random() < 0.6 else None,
        "COMPANY_ID": related("company", t) if rng.random() < 0.4 else None,
        "PHONE": _phone(rng), "EMAIL": _email(rng, "lead")})
    make("deal", deals, lambda i, t, post: {
        "TITLE": f"Deal #{i}", "STAGE_ID": rng.choice(STAGES), "CATEGORY_ID": "0",
        "OPPORTUNITY": f"{rng.randint(1, 900) * 100}.00", "CURRENCY_ID": "EUR",
        "CONTACT_ID": related("contact", t), "COMPANY_ID": related("company", t),
        "LEAD_ID": related("lead", t) if rng.random() < 0.5 else None})
    for d in list(backup["deal"].values()) + [c.fields for c in changes if c.entity == "deal"]:
        d["CONTACT_IDS"] = [d["CONTACT_ID"]] if d.get("CONTACT_ID") else []

    # Post-cutoff changes of pre-cutoff records, some pointing at post-cutoff records.
    span = (post_end - cutoff).total_seconds()
    for entity in ("company", "contact", "lead", "deal"):
        pre_ids = sorted(backup[entity])
        for rid in rng.sample(pre_ids, max(1, int(len(pre_ids) * modify_fraction))):
            t = (cutoff + dt.timedelta(seconds=rng.uniform(1, span))).replace(microsecond=0)
            if entity == "company":
                fields = {"TITLE": backup[entity][rid]["TITLE"] + " (renamed)", "INDUSTRY": "IT"}
            elif entity == "contact":
                fields = {"POST": "head of sales", "COMPANY_ID": related("company", t)}
            elif entity == "lead":
                fields = {"STATUS_ID": "IN_PROCESS", "CONTACT_ID": related("contact", t)}
            else:
                fields = {"STAGE_ID": "WON", "COMPANY_ID": related("company", t)}
            changes.append(Change(t, "update", entity, rid, fields))
    victim = sorted(set(backup["lead"]) - {c.record_id for c in changes if c.entity == "lead"})[0]
    changes.append(Change(post_end, "delete", "lead", victim))
    changes.sort(key=lambda c: c.at)
    task_list, post_comments = _tasks(random.Random(seed * 7919 + 1), tasks, cutoff, post_end, user_list)
    timeline = make_timeline(random.Random(seed * 7919 + 2), backup, changes, cutoff, post_end, user_list)
    custom = make_custom(random.Random(seed * 7919 + 3), backup, changes, cutoff, post_end, user_list, Change)
    return CrmDataset(cutoff=cutoff, backup=backup, changes=changes, users=user_list, new_users=[new_user],
                      tasks=task_list, post_comments=post_comments, timeline=timeline, custom=custom)


COMMENT_TEXTS = ["Called the customer, waiting for an answer", "Sent the offer", "Photos attached",
                 "Postponed to next week", "Done, please check", "The customer asked for a discount",
                 "Reminder: contract draft", "Отправил КП", "Bitte Rückruf morgen"]


def _tasks(rng: random.Random, n: int, cutoff: dt.datetime, post_end: dt.datetime,
           users: list[dict]) -> tuple[list[dict], list[tuple]]:
    """Tasks with comments before the cutoff, and comments posted after it in the cloud.

    A separate rng so that adding tasks leaves every other generated record unchanged."""
    year = dt.timedelta(days=365)
    task_list: list[dict] = []
    comment_id = 0
    created = sorted((cutoff - year + dt.timedelta(seconds=rng.uniform(0, year.total_seconds() - 86400)))
                     .replace(microsecond=0) for _ in range(n))
    for task_id, t in enumerate(created, start=1):
        posts = sorted((t + dt.timedelta(seconds=rng.uniform(60, (cutoff - t).total_seconds())))
                       .replace(microsecond=0) for _ in range(rng.randint(0, 6)))
        comments = []
        for at in posts:
            comment_id += 1
            comments.append((comment_id, int(rng.choice(users)["ID"]), at, rng.choice(COMMENT_TEXTS)))
        task_list.append({"ID": task_id, "TITLE": f"Task #{task_id}: {rng.choice(COMMENT_TEXTS).lower()}",
                          "CREATED_DATE": t, "CREATED_BY": int(rng.choice(users)["ID"]), "comments": comments})
    later = []
    span = max(60.0, (post_end - cutoff).total_seconds())
    for task in rng.sample(task_list, min(len(task_list), max(1, n // 5))) if task_list else []:
        for _ in range(rng.randint(1, 3)):
            at = (cutoff + dt.timedelta(seconds=rng.uniform(1, span))).replace(microsecond=0)
            text = rng.choice(COMMENT_TEXTS) + " (after the backup)"
            later.append((at, task["ID"], int(rng.choice(users)["ID"]), text))
    later.sort(key=lambda c: (c[0], c[1]))  # comment IDs grow with time, as the portal's sequence does
    post_comments = [(task_id, comment_id + i, author, at, text)
                     for i, (at, task_id, author, text) in enumerate(later, start=1)]
    return task_list, post_comments


def seed_backup(store: CrmStore, data: CrmDataset) -> None:
    """Load the backup state (IDs and times kept) and the users that existed at the cutoff."""
    seed_custom_definitions(store, data.custom)  # records carry values of these fields
    for entity in ("company", "contact", "lead", "deal"):
        for rid, fields in sorted(data.backup[entity].items()):
            store.add(entity, fields, keep_times=True, record_id=rid)
    seed_custom_items(store, data.custom)
    for u in data.users:
        store.users[int(u["ID"])] = dict(u)
    for task in data.tasks:
        store.add_task(task["TITLE"], task["CREATED_DATE"], task["CREATED_BY"], comments=task["comments"],
                       task_id=task["ID"])
    seed_timeline_backup(store, data.timeline)


def seed_cloud(store: CrmStore, data: CrmDataset) -> None:
    """The backup state plus every post-cutoff change, at its time."""
    seed_backup(store, data)
    for u in data.new_users:
        store.users[int(u["ID"])] = dict(u)
    seed_custom_post(store, data.custom)
    for c in data.changes:
        if c.kind == "add":
            store.add(c.entity, c.fields, keep_times=True, record_id=c.record_id)
        elif c.kind == "update":
            store.update(c.entity, c.record_id, c.fields, now=c.at)
        else:
            store.delete(c.entity, c.record_id)
    for task_id, comment_id, author_id, at, text in data.post_comments:
        store.add_comment(task_id, author_id, at, text, comment_id=comment_id)
    seed_timeline_post(store, data.timeline)
    seed_custom_changes(store, data.custom)


@dataclass
class PortalPair:
    """A running cloud portal and box portal, seeded consistently.

    ``cloud_webhook`` / ``box_webhook`` are base URLs with the secret code in them; ``*_code`` the
    codes alone (for the config's secrets); ``cutoff`` the backup's cutoff (aware, UTC);
    ``ca_file`` the certificate to trust when the pair serves HTTPS (else None)."""

    cloud: PortalServer
    box: PortalServer
    cutoff: dt.datetime
    dataset: CrmDataset = field(repr=False)
    ca_file: Path | None = None
    _tls_dir: str | None = field(default=None, repr=False)  # a temporary directory the pair owns

    @property
    def cloud_webhook(self) -> str:
        return self.cloud.webhook

    @property
    def box_webhook(self) -> str:
        return self.box.webhook

    @property
    def cloud_code(self) -> str:
        return self.cloud.portal.code

    @property
    def box_code(self) -> str:
        return self.box.portal.code

    def close(self) -> None:
        self.cloud.close()
        self.box.close()
        if self._tls_dir:
            shutil.rmtree(self._tls_dir, ignore_errors=True)
            self._tls_dir = None

    def __enter__(self) -> "PortalPair":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def start_pair(*, limits: PortalLimits | None = None, box_limits: PortalLimits | None = None,
               box_extra: int = 2, batch_import: bool = True, tls: bool = False,
               tls_dir: str | Path | None = None, **generate_kw: Any) -> PortalPair:
    """Start a cloud + box portal pair on loopback: cloud = backup + post-cutoff changes, box =
    the restored backup whose ID sequences moved on by ``box_extra`` test records per entity,
    created and deleted on the box after the restore (steps 2.8/2.9): box IDs of new records
    differ from the cloud's post-cutoff IDs, as on a real box.

    ``tls``: both portals answer over HTTPS (as real portals do) with one generated certificate,
    written to ``tls_dir`` (default: a temporary directory removed by :meth:`PortalPair.close`);
    its path is ``PortalPair.ca_file``. Plain HTTP stays the default."""
    data = generate(**generate_kw)
    cloud_store, box_store = CrmStore(), CrmStore()
    seed_cloud(cloud_store, data)
    seed_backup(box_store, data)
    for entity in ("company", "contact", "lead", "deal"):
        for i in range(box_extra):
            rid = box_store.add(entity, {"TITLE": f"box test record {i}", "NAME": "Box", "LAST_NAME": "Test",
                                         "ASSIGNED_BY_ID": "1"}, now=data.cutoff)
            box_store.delete(entity, rid)
    context, ca_file, owned = None, None, None
    if tls:
        owned = None if tls_dir is not None else tempfile.mkdtemp(prefix="c2b-portal-tls-")
        context, ca_file = make_tls(tls_dir if tls_dir is not None else owned)
    cloud = PortalServer(Portal(cloud_store, limits=limits), tls=context, ca_file=ca_file).start()
    box = PortalServer(Portal(box_store, limits=box_limits or limits, batch_import=batch_import),
                       tls=context, ca_file=ca_file).start()
    return PortalPair(cloud=cloud, box=box, cutoff=data.cutoff, dataset=data, ca_file=ca_file, _tls_dir=owned)

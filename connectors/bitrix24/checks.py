"""Bitrix24's post-migration check kinds (checklists/verify.toml ``kind``), run by checklists/verify.py.

Each kind is ``kind(access, **params) -> (ok, summary, evidence, items)`` over a
:class:`checklists.verify.VerifyAccess`: ``cloud``/``box`` are this package's REST clients,
``box_sql`` the box's database (``b_option``, ``b_user``, ``b_search_content``, ``b_rest_app`` …),
``options`` what ``PLATFORM.checks.access_options`` read from ``[post_restore]``. A kind that cannot
run with what it was given raises :class:`connectors.platform.CheckNotRun`.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Callable

from connectors.platform import CheckNotRun

from .delta import backup_marks
from .lists import iter_rows, php_query
from .model import ENTITIES, ORIGINATOR
from .post_restore import REINDEX_OPTION, option
from .rest import Bitrix24Client

if TYPE_CHECKING:
    from checklists.verify import VerifyAccess


def _ids(client: Bitrix24Client, entity: str, flt: dict, field: str = "ID") -> set[str]:
    """``field`` of every record matching ``flt`` (fast ID-chained lists: ~1 request per 2 500 rows)."""
    return {str(r.get(field)) for r in iter_rows(client, f"crm.{entity}.list", filter=flt, select=["ID", field])}


def check_crm_counts(a: VerifyAccess) -> tuple:
    """Every record of the backup the cloud still has is on the box (by ID: the box keeps the
    backup's IDs); after step 2.11 every record created in the cloud since the backup has a box
    twin (by ORIGIN_ID), except what the loop guard holds in quarantine. Counts alone could hide a
    missing record behind one deleted in the cloud.

    Which IDs are the backup's: the marks step 2.11 journaled before its import (``a.backup_marks``);
    read from the box now only when there are none (before 2.11 the box is still the backup; a moved
    record created before the cutoff would otherwise pass for one of the backup's)."""
    if a.cutoff is None:
        raise CheckNotRun("the backup's cutoff is not known ([crm_delta] cutoff or the journal of step 2.3)")
    evidence, items, bad = {}, [], []
    journaled = a.backup_marks or {}
    unknown = tuple(e for e in ENTITIES if e not in journaled)
    measured = backup_marks(a.box, a.cutoff, unknown, skip_ours=a.delta_moved) if unknown else {}
    for entity in ENTITIES:
        marks = journaled.get(entity) or measured[entity]
        max_id = int(marks["max_id"])
        cloud_old = _ids(a.cloud, entity, {"<=ID": max_id})
        box_old = _ids(a.box, entity, {"<=ID": max_id})
        # echoes of our own writes in the cloud (ORIGINATOR_ID = cloud2box) are not records to move
        cloud_rows = list(iter_rows(a.cloud, f"crm.{entity}.list", select=["ID", "ORIGINATOR_ID"], after_id=max_id))
        cloud_new = {str(r["ID"]) for r in cloud_rows if str(r.get("ORIGINATOR_ID") or "") != ORIGINATOR}
        moved = _ids(a.box, entity, {"ORIGINATOR_ID": ORIGINATOR}, "ORIGIN_ID")
        held_back = cloud_new & a.quarantined.get(entity, set())
        missing_old = sorted(cloud_old - box_old, key=int)
        missing_new = sorted(cloud_new - moved - held_back, key=int)
        evidence[entity] = {"backup_max_id": max_id, "backup_records": int(marks["count"]),
                            "marks": "journaled before step 2.11's import" if entity in journaled else "read now",
                            "cloud_backup_records": len(cloud_old),
                            "box_backup_records": len(box_old), "deleted_in_cloud": len(box_old - cloud_old),
                            "cloud_created_since": len(cloud_new), "box_moved": len(cloud_new & moved),
                            "quarantined": len(held_back), "pending_2_11": 0 if a.delta_moved else len(missing_new)}
        if missing_old:
            bad.append(f"{len(missing_old)} {entity}(s) of the backup missing on the box")
            items.append({"entity": entity, "problem": "backup records missing on the box",
                          "cloud_ids": missing_old[:50]})
        if missing_new and a.delta_moved:
            bad.append(f"{len(missing_new)} {entity}(s) created in the cloud since the backup not on the box")
            items.append({"entity": entity, "problem": "created since the backup, not moved",
                          "cloud_ids": missing_new[:50]})
    if bad:
        return False, "; ".join(bad), evidence, items
    pending = sum(e["pending_2_11"] for e in evidence.values())
    total = sum(e["cloud_backup_records"] for e in evidence.values())
    summary = f"all {total} records of the backup are on the box"
    if pending:
        summary += f"; {pending} created in the cloud since the backup move at step 2.11"
    elif a.delta_moved:
        summary += f"; {sum(e['box_moved'] for e in evidence.values())} created since the backup moved"
    held = sum(e["quarantined"] for e in evidence.values())
    if held:
        summary += f"; {held} held in quarantine by the loop guard"
    return True, summary, evidence, items


def _users(client: Bitrix24Client) -> list[dict]:
    users, start = [], 0
    for _ in range(2_000):  # 100 000 users at 50 a page: a bound, not a limit anyone meets
        body = client.call("user.get", {"start": start})
        users.extend(body.get("result") or [])
        if "next" not in body:
            return users
        start = int(body["next"])
    raise ValueError(f"{client.name}: user.get did not end")


def _active(u: dict) -> bool:
    return u.get("ACTIVE") in (True, "Y", "1", 1, "true")


def check_users(a: VerifyAccess) -> tuple:
    """Every active cloud user has an active box account (by e-mail); with the box's database, the
    Bitrix24.Network users (``options["network_auth_ids"]``) are listed for a password reset."""
    box_mail = {str(u.get("EMAIL") or "").lower() for u in _users(a.box) if _active(u)}
    missing = [{"user": f"{u.get('NAME', '')} {u.get('LAST_NAME', '')}".strip(), "email": u.get("EMAIL"),
                "problem": "no active account on the box"}
               for u in _users(a.cloud) if _active(u) and u.get("EMAIL") and str(u["EMAIL"]).lower() not in box_mail]
    resets: list[dict] = []
    resets_note = "password resets not checked (no access to the box's database)"
    if a.box_sql is not None:
        ids = ", ".join("'" + x.replace("'", "") + "'" for x in a.options["network_auth_ids"]) or "''"
        rows = a.box_sql([f"SELECT LOGIN, COALESCE(EMAIL, '') FROM b_user WHERE ACTIVE='Y' AND "
                          f"EXTERNAL_AUTH_ID IN ({ids}) ORDER BY ID"])[0]
        resets = [{"user": r[0], "email": r[1], "problem": "Bitrix24.Network user: send a password reset"}
                  for r in rows]
        resets_note = f"{len(resets)} Bitrix24.Network user(s) need a password reset"
    evidence = {"missing_on_box": len(missing), "password_resets": len(resets)}
    if missing:
        names = ", ".join(str(m["email"]) for m in missing[:5])
        return False, f"{len(missing)} active cloud user(s) cannot log in to the box: {names}; {resets_note}", \
            evidence, missing + resets
    return True, f"every active cloud user has a box account; {resets_note}", evidence, resets


def check_notification_domain(a: VerifyAccess) -> tuple:
    """The main module's ``server_name`` and every active site's ``SERVER_NAME`` are the box's domain."""
    if not a.domain:
        raise CheckNotRun("the box portal's domain is not known: set [post_restore] domain or [migration] box_portal")
    server_name = option(a.box_sql, "main", "server_name") or ""
    sites = a.box_sql(["SELECT LID, COALESCE(SERVER_NAME, '') FROM b_lang WHERE ACTIVE='Y'"])[0]
    wrong = [f"main.server_name={server_name!r}"] if server_name != a.domain else []
    wrong += [f"site {lid} SERVER_NAME={name!r}" for lid, name in sites if name != a.domain]
    evidence = {"expected": a.domain, "server_name": server_name, "sites": {lid: name for lid, name in sites}}
    if wrong:
        return False, f"links would lack the domain {a.domain}: " + ", ".join(wrong), evidence, []
    return True, f"main module and {len(sites)} site(s) use {a.domain}", evidence, []


def check_push_pull(a: VerifyAccess) -> tuple:
    """The pull module's options (``options["pull_options"]``) enable the push & pull server."""
    expected = a.options["pull_options"]
    current = {k: option(a.box_sql, "pull", k) for k in expected}
    wrong = {k: v for k, v in current.items() if v != expected[k]}
    evidence = {"expected": expected, "found": current}
    if wrong:
        return False, "push & pull server off: " + ", ".join(f"pull.{k}={v!r}" for k, v in wrong.items()), evidence, []
    return True, "push & pull server enabled (" + ", ".join(f"pull.{k}={v}" for k, v in current.items()) + ")", \
        evidence, []


def check_search_index(a: VerifyAccess) -> tuple:
    """``b_search_content`` is not empty (a queued reindex that has not run yet is said)."""
    count = int(a.box_sql(["SELECT COUNT(*) FROM b_search_content"])[0][0][0])
    queued = option(a.box_sql, "search", REINDEX_OPTION) == "Y"
    evidence = {"indexed_items": count, "reindex_queued": queued}
    if not count:
        return False, "the search index is empty" + (" (a reindex is queued, not yet run)" if queued else ""), \
            evidence, []
    return True, f"{count} item(s) in the search index", evidence, []


def check_marketplace_apps(a: VerifyAccess) -> tuple:
    """Every app code of ``[verify] cloud_apps`` is installed and active in the box's ``b_rest_app``."""
    if not a.cloud_apps:
        raise CheckNotRun("the cloud's apps are not listed: copy their codes from the cloud's Applications → "
                          "Installed page into [verify] cloud_apps")
    rows = a.box_sql(["SELECT CODE, COALESCE(APP_NAME, ''), ACTIVE, INSTALLED FROM b_rest_app"])[0]
    working = {r[0] for r in rows if r[2] == "Y" and r[3] == "Y"}
    names = {r[0]: r[1] for r in rows}
    missing = [{"app": code, "name": names.get(code, ""),
                "problem": "installed but not active" if code in names else "not installed on the box"}
               for code in a.cloud_apps if code not in working]
    evidence = {"cloud_apps": list(a.cloud_apps), "box_apps": sorted(working)}
    if missing:
        return False, f"{len(missing)} app(s) of the cloud missing on the box: " + \
            ", ".join(m["app"] for m in missing), evidence, missing
    return True, f"all {len(a.cloud_apps)} app(s) of the cloud are installed and active", evidence, []


def _comment_counts(client: Bitrix24Client, task_ids: list[str], cutoff: dt.datetime) -> dict[str, int | None]:
    cmd = {f"t{tid}": "task.commentitem.getlist?" + php_query(
        {"TASKID": tid, "ORDER": {"ID": "asc"}, "FILTER": {"<=POST_DATE": cutoff.isoformat(timespec="seconds")}})
        for tid in task_ids}
    res = client.batch(cmd)
    out: dict[str, int | None] = {}
    for tid in task_ids:
        key = f"t{tid}"
        if key in res["result"]:
            out[tid] = len(res["result"][key] or [])
            continue
        err = res["result_error"].get(key) or {}
        text = str(err.get("error_description", "")).lower()
        # the tasks module answers a missing task with "action failed" (#8); anything else (scope,
        # access, arguments) says nothing about the comments
        if "not found" not in text and "action_failed" not in text and "action failed" not in text:
            raise ValueError(f"{client.name}: task.commentitem.getlist for task {tid} failed: {err.get('error')}")
        out[tid] = None  # the task is not there
    return out


def check_task_comments(a: VerifyAccess, sample: int = 20) -> tuple:
    """On the ``sample`` newest tasks created before the backup, the box has as many comments
    posted before the backup as the cloud."""
    if a.cutoff is None:
        raise CheckNotRun("the backup's cutoff is not known: comments posted after it are not in the backup")
    body = a.cloud.call("tasks.task.list", {"order": {"ID": "desc"}, "select": ["ID", "TITLE"],
                                            "filter": {"<=CREATED_DATE": a.cutoff.isoformat(timespec="seconds")}})
    tasks = (body.get("result") or {}).get("tasks") or []
    ids = [str(t.get("id") or t.get("ID")) for t in tasks][: max(1, min(int(sample), 50))]
    if not ids:
        return True, "the cloud has no tasks from before the backup to compare", {"sampled": 0}, []
    cloud, box = _comment_counts(a.cloud, ids, a.cutoff), _comment_counts(a.box, ids, a.cutoff)
    ids = [tid for tid in ids if cloud[tid] is not None]  # gone from the cloud since the list: nothing to compare
    short = [{"task": tid, "cloud_comments": cloud[tid], "box_comments": box[tid],
              "problem": "task missing on the box" if box[tid] is None else "fewer comments on the box"}
             for tid in ids if box[tid] is None or cloud[tid] > box[tid]]
    evidence = {"sampled": len(ids), "cloud_comments": sum(v or 0 for v in cloud.values()),
                "box_comments": sum(v or 0 for v in box.values())}
    if short:
        return False, f"{len(short)} of {len(ids)} sampled task(s) show fewer comments on the box", evidence, short
    return True, f"{len(ids)} sampled task(s): {evidence['box_comments']} comment(s) posted before the backup, " \
                 f"equal in both portals", evidence, []


def check_telephony(a: VerifyAccess) -> tuple:
    """At least one outgoing line in the telephony module (``voximplant.line.get``, allowed for a
    webhook): the customer's PBX connected as a SIP line (``sip<N>``), or a rented number. The
    apps' external lines (``telephony.externalLine.get``) answer only in an app's context."""
    lines = a.box.call("voximplant.line.get").get("result") or {}
    lines = lines if isinstance(lines, dict) else {}  # PHP sends an empty object as []
    evidence = {"lines": lines}
    if not lines:
        return False, "no line in the box's telephony module: calls would not reach the CRM", evidence, []
    return True, f"{len(lines)} line(s): " + ", ".join(f"{k} ({v})" for k, v in list(lines.items())[:5]), evidence, []


KINDS: dict[str, Callable[..., tuple]] = {
    "crm_counts": check_crm_counts, "users": check_users, "notification_domain": check_notification_domain,
    "push_pull": check_push_pull, "search_index": check_search_index, "marketplace_apps": check_marketplace_apps,
    "task_comments": check_task_comments, "telephony": check_telephony,
}

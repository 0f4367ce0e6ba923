"""Straggler sweeps (phase 3): move what people still create or change in the cloud into the box,
with the loop guards seed 000 asks for.

One :func:`run_sweep` lists the cloud's records changed since the last sweep (minus an overlap)
and created above the highest cloud ID seen, imports them with the idempotent importer of step
2.11, and lists who is still working in the cloud. Its loop guards:

1. echoes of our own writes (``ORIGINATOR_ID = cloud2box`` in the cloud) are never exported
   (:mod:`.delta`);
2. a record the importer finds equal on the box is not written (no write → no outbound event on
   the box → nothing to echo);
3. a record that changed more than ``quarantine_changes`` times within ``quarantine_window_s`` is
   quarantined: not synced again until a person releases it, and the caller alerts;
4. every request spends from a :class:`~.budget.RequestBudget` (per sweep, per day); when it is
   spent the sweep stops where it is and says so, the migration goes on.

The change history and the quarantine list are kept by the caller (the journal, in the flows):
this module gets them through :class:`SweepHistory` and returns what it saw.
"""

from __future__ import annotations

import datetime as dt
import logging
import time

from connectors.errors import BudgetExhausted
from connectors.platform import SweepHistory, SweepOutcome, SweepPolicy

from .delta import DeltaExport, deleted_in_cloud, export_delta
from .importer import import_delta
from .reconcile import reconcile as reconcile_delta
from .model import ENTITIES, parse_date
from .rest import Bitrix24Client

log = logging.getLogger("cloud2box.sweep")

__all__ = ["SweepHistory", "SweepOutcome", "SweepPolicy", "run_sweep", "stragglers_of"]  # the types: connectors.platform


def _user_names(cloud: Bitrix24Client, ids: set[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for uid in sorted(ids, key=lambda x: int(x) if x.isdigit() else 0)[:50]:  # a bound: the list is for people
        body = cloud.call("user.get", {"filter": {"ID": uid}})
        for u in body.get("result") or []:
            out[str(u["ID"])] = {"name": f"{u.get('NAME', '')} {u.get('LAST_NAME', '')}".strip(),
                                 "email": u.get("EMAIL", "")}
    return out


def stragglers_of(cloud: Bitrix24Client, delta: DeltaExport, *, since: dt.datetime,
                  integration_user_ids: set[str] = frozenset()) -> list[dict]:
    """Who created or changed records in the cloud after ``since`` (by creator / last modifier,
    else the responsible user), most active first. Our own integration users are left out."""
    per_user: dict[str, dict] = {}
    for entity, d in delta.entities.items():
        for rid, row in d.rows.items():
            changed = parse_date(row.get("DATE_MODIFY")) or parse_date(row.get("DATE_CREATE"))
            if changed is None or changed <= since:
                continue
            who = str(row.get("MODIFY_BY_ID") or row.get("CREATED_BY_ID") or row.get("ASSIGNED_BY_ID") or "")
            if not who or who == "0" or who in integration_user_ids:
                continue
            entry = per_user.setdefault(who, {"user_id": who, "records": 0, "last_at": changed, "examples": []})
            entry["records"] += 1
            entry["last_at"] = max(entry["last_at"], changed)
            if len(entry["examples"]) < 3:
                entry["examples"].append(f"{entity} {rid}")
    if not per_user:
        return []
    names = _user_names(cloud, set(per_user))
    out = []
    for uid, entry in per_user.items():
        out.append({**entry, **names.get(uid, {"name": f"user {uid}", "email": ""}),
                    "last_at": entry["last_at"].isoformat()})
    return sorted(out, key=lambda e: (-e["records"], e["user_id"]))


def run_sweep(cloud: Bitrix24Client, box: Bitrix24Client, idmap, history: SweepHistory, *,
              since: dt.datetime, backup_max_ids: dict[str, int], after_ids: dict[str, int],
              user_map: dict[str, str], policy: SweepPolicy, entities=ENTITIES,
              now: dt.datetime | None = None, integration_user_ids: set[str] = frozenset(),
              stragglers: bool = True, reconcile: bool = False, scan_deleted: bool = False,
              proven: dict[str, dict[str, int]] | None = None) -> SweepOutcome:
    """One sweep (see the module doc). Never raises ``BudgetExhausted``: a spent budget ends the
    sweep with ``stopped`` set, keeping what was already imported.

    The pre-sync's passes (phase 2, everyone still works in the cloud) list no stragglers,
    ``reconcile`` what they moved (a mismatch is a failure: the next pass lists from the same point)
    and prove every record created in the cloud since the ``proven`` marks of the last pass present on
    the box (the outcome's ``proven``: the freeze proves only what came after), and, with
    ``scan_deleted``, compare the whole portal's IDs for records deleted in the cloud
    (:func:`.delta.deleted_in_cloud`), so the freeze need not."""
    now = now or dt.datetime.now(dt.timezone.utc)
    t0 = time.monotonic()
    req0 = cloud.requests + box.requests
    listed_since = since - dt.timedelta(seconds=policy.overlap_s)
    out = SweepOutcome(started_at=now, since=listed_since)
    try:
        delta = export_delta(cloud, box, listed_since, entities=list(entities), detect_deleted=False,
                             max_ids=backup_max_ids, after_ids=after_ids,
                             include_ids=history.released_since_last_sweep())
        out.echoes_skipped = sum(len(d.echoes) for d in delta.entities.values())
        _guard(delta, history, policy, now, out)
        report = import_delta(box, delta, idmap, user_map=user_map, fallback_user_id=policy.fallback_user_id,
                              use_batch_import=policy.use_batch_import)
        out.created = sum(e.created for e in report.entities.values())
        out.updated = sum(e.updated for e in report.entities.values())
        out.unchanged = sum(e.unchanged for e in report.entities.values())
        out.failures = list(report.failures)
        out.records = delta.records
        if reconcile:
            held = {e: {str(i) for i in ids} for e, ids in history.quarantined().items()}
            rec = reconcile_delta(box, delta, idmap, user_map=user_map, fallback_user_id=policy.fallback_user_id,
                                  cloud=cloud, proven=proven or {}, excused=held)
            out.reconciliation = {"ok": rec.ok, "mismatches": rec.mismatches, "per_entity": rec.per_entity()}
            out.proven = rec.proven()
            if not rec.ok:
                out.failures.append(f"reconciliation of the moved records: {rec.mismatches} problem(s): "
                                    f"{str(rec.evidence())[:400]}")
        if scan_deleted:
            out.deleted_in_cloud = deleted_in_cloud(cloud, box, idmap, backup_max_ids, entities=list(entities))
        if stragglers:
            # who still works in the cloud: after the import, so a spent budget costs the list, not records
            out.stragglers = stragglers_of(cloud, delta, since=listed_since, integration_user_ids=integration_user_ids)
    except BudgetExhausted as exc:
        out.stopped = exc.message
        log.warning("sweep stopped: %s", exc.message)
    out.seconds = time.monotonic() - t0
    out.requests = cloud.requests + box.requests - req0
    return out


def _guard(delta: DeltaExport, history: SweepHistory, policy: SweepPolicy, now: dt.datetime,
           out: SweepOutcome) -> None:
    """Record what changed, quarantine records that bounce, drop quarantined ones from the delta.

    The high-water mark (the floor of the next sweep's creation list) covers what this sweep
    handled and the echoes, never a quarantined record: once released it must still be found."""
    seen = history.observed(now - dt.timedelta(seconds=policy.quarantine_window_s))
    quarantined = history.quarantined()
    for entity, d in delta.entities.items():
        out.observed[entity] = {}
        for rid in list(d.rows):
            row = d.rows[rid]
            modified = str(row.get("DATE_MODIFY") or row.get("DATE_CREATE") or "")
            out.observed[entity][rid] = modified
            if rid in quarantined.get(entity, set()):
                out.held_back.append({"entity": entity, "cloud_id": rid, "modified": modified})
            else:
                changes = len(seen.get((entity, rid), set()) | {modified})
                if changes <= policy.quarantine_changes:
                    continue
                out.newly_quarantined.append({"entity": entity, "cloud_id": rid, "changes": changes,
                                              "window_s": policy.quarantine_window_s,
                                              "title": str(row.get("TITLE") or row.get("NAME") or "")[:100]})
            del d.rows[rid]
            d.kind.pop(rid, None)
        handled = [int(r) for r in d.rows] + [int(r) for r in d.echoes]
        if handled:
            out.high_water[entity] = max(out.high_water.get(entity, 0), *handled)

"""Action ``transfer_crm_delta``: step 2.11 — move the CRM records created or changed in the cloud
since the backup into the box, then prove that nothing was lost (reconciliation)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from connectors.errors import ConfigError, IntegrityError, RunNotFound, TransientError
from journal.backup_marks import journaled_marks, record_marks
from journal.counters import StepCounters
from journal.events import EventKind
from journal.idmap import IdMap
from journal.presync import presync_state
from journal.sweeps import quarantined

from . import ActionContext, ActionResult, register


def crm_section(ctx: ActionContext) -> Any:
    """``[crm_delta]``, or the platform's defaults when it is absent (then the webhook secrets are missing)."""
    return ctx.config.crm_delta or ctx.platform.crm.section()


def cutoff_of(ctx: ActionContext, section: Any) -> dt.datetime:
    """The backup's cutoff: from ``[crm_delta] cutoff``, else the journal of this run."""
    if section.cutoff is not None:
        return section.cutoff
    try:
        cutoff = ctx.journal.get_run(ctx.run_id).cutoff
    except RunNotFound:  # a journal without the run: the config must say it (an outage is not that)
        cutoff = None
    if cutoff is None:
        raise ConfigError(ctx.config.source,
                          ["[crm_delta].cutoff is not set and the journal has no backup cutoff for this run: "
                           "record the backup's date at step 2.1 or set cutoff = 2026-11-20T09:00:00+03:00"])
    return cutoff if cutoff.tzinfo else cutoff.replace(tzinfo=dt.timezone.utc)


def crm_clients(ctx: ActionContext, section: Any = None, *, budget=None) -> tuple[Any, Any]:
    """The cloud's and the box's CRM clients from ``[crm_delta]`` and its secrets.
    ``budget``: a :class:`connectors.budget.RequestBudget` both clients spend from."""
    return ctx.platform.crm.endpoints(section or crm_section(ctx), ctx.secrets, ctx.config.migration,
                                      source=ctx.config.source, budget=budget)


def idmap_of(ctx: ActionContext, section: Any = None) -> IdMap:
    """The cloud-ID → box-ID map: it belongs to the box as restored for this run (a new run restores a
    new box); within a run (re-runs, phase 3 sweeps) it is reused; a lost map is rebuilt from the box."""
    section = section or crm_section(ctx)
    return IdMap(ctx.journal, section.migration_key or ctx.run_id, run_id=ctx.run_id)


def backup_marks(ctx: ActionContext, box: Any, cutoff: dt.datetime, idmap: IdMap) -> dict[str, dict[str, int]]:
    """The backup's high-water marks per entity (``{"max_id", "count"}``) as the journal keeps them.

    The first time (nothing journaled for this run and cutoff) they are read from the box — still the
    restored backup, nothing imported yet — and journaled before anything is written; later runs, the
    sweeps and the checks read the journal. Should the map already hold records (a journal from
    before the marks were kept), the box is read leaving the migrated records out.
    """
    entities = tuple(ctx.platform.crm.entities)
    marks = journaled_marks(ctx.journal, ctx.run_id, cutoff)
    if marks is not None and all(e in marks for e in entities):
        return marks
    written = any(idmap.count(e) for e in entities)
    marks = ctx.platform.crm.backup_marks(box, cutoff, entities=entities, skip_ours=written)
    record_marks(ctx.journal, ctx.run_id, cutoff, marks, migration=idmap.migration, step_id=ctx.step_id,
                 box_written_before=written)
    return marks


@register("transfer_crm_delta", requires=("crm_delta",))
def transfer_crm_delta(ctx: ActionContext) -> ActionResult:
    """Export the delta (CSVs for review under work_dir), import it idempotently, reconcile."""
    try:
        return _transfer(ctx)
    except TransientError as exc:  # the transfer is idempotent, and which runbook step runs it is ours to say
        raise TransientError(exc.message, fix=f"{exc.fix or 'check both portals'}, then run step {ctx.step_id} "
                             "again: it continues safely") from exc


def _transfer(ctx: ActionContext) -> ActionResult:
    section = crm_section(ctx)
    crm = ctx.platform.crm
    cloud, box = crm_clients(ctx, section)
    cutoff = cutoff_of(ctx, section)
    idmap = idmap_of(ctx, section)

    t0 = time.monotonic()
    marks = backup_marks(ctx, box, cutoff, idmap)  # before anything is written to the box
    max_ids = {e: m["max_id"] for e, m in marks.items()}
    presync = _presync_plan(ctx, section, max_ids)
    since = presync["since"] if presync else cutoff
    ctx.progress(0, None, "listing the cloud's records changed since the " + ("last pre-sync pass" if presync else "backup"))
    delta = crm.export(cloud, box, since, entities=section.entities,
                       detect_deleted=section.detect_deleted and presync is None, max_ids=max_ids,
                       after_ids=presync["after_ids"] if presync else None,
                       include_ids=presync["held_back"] if presync else None,
                       progress=lambda n, msg: ctx.progress(n, None, f"export: {msg}"))
    out_dir = ctx.work_dir / "crm-delta"
    files = crm.write_review_files(delta, out_dir)
    ctx.journal.add_event(ctx.run_id, EventKind.CRM_DELTA_EXPORT,
                          f"delta since {since.isoformat()}" + (" (the last pre-sync pass, less the overlap)"
                                                                if presync else "")
                          + f": {delta.records} records in {delta.seconds:.1f} s",
                          data={"cutoff": cutoff.isoformat(), "since": since.isoformat(), "entities": delta.summary(),
                                "presync": presync["state"] if presync else None,
                                "csv": [str(f) for f in files], "requests": delta.requests}, step_id=ctx.step_id)
    deleted = {e: d.deleted_in_cloud for e, d in delta.entities.items() if d.deleted_in_cloud}
    if presync:  # the passes compared the whole portal's IDs; deletions are listed from the latest comparison
        deleted = {e: list(ids) for e, ids in (presync["state"].get("deleted_in_cloud") or {}).items() if ids}
    if deleted:
        ctx.journal.add_event(ctx.run_id, EventKind.CRM_DELETED_IN_CLOUD,
                              "records of the backup deleted in the cloud since: the customer decides "
                              "(nothing was deleted on the box)", data={"ids": deleted}, step_id=ctx.step_id)

    user_map = crm.map_users(cloud, box)
    t_import = time.monotonic()
    report = crm.import_delta(box, delta, idmap, user_map=user_map, fallback_user_id=section.fallback_user_id,
                              use_batch_import=section.use_batch_import, review_dir=out_dir,
                              progress=lambda d, t, msg: ctx.progress(d, t, f"import: {msg}"))
    import_s = time.monotonic() - t_import
    if report.fallback_users:
        ctx.journal.add_event(ctx.run_id, EventKind.CRM_FALLBACK_USERS,
                              f"{len(report.fallback_users)} cloud user(s) missing in the box: their records "
                              f"were given to box user {section.fallback_user_id}",
                              data={"cloud_users": report.fallback_users}, step_id=ctx.step_id)
    twins = {e: r.duplicates_in_box[:50] for e, r in report.entities.items() if r.duplicates_in_box}
    if twins:
        ctx.journal.add_event(ctx.run_id, EventKind.CRM_DUPLICATES_IN_BOX,
                              f"{sum(len(v) for v in twins.values())} cloud record(s) have twins on the box (an "
                              "earlier run wrote them twice); the first twin is kept in the map, the customer "
                              "decides about the others", data={"cloud_ids": twins}, step_id=ctx.step_id)
    # the passes proved presence up to their marks: the freeze proves only what the cloud made after them
    rec = crm.reconcile(box, delta, idmap, user_map=user_map, fallback_user_id=section.fallback_user_id,
                        cloud=cloud, proven=presync["state"]["proven"] if presync else None)
    elapsed = time.monotonic() - t0
    evidence = {"cutoff": cutoff.isoformat(), "since": since.isoformat(), "presync": presync["state"] if presync else None,
                "backup_marks": marks, "export": delta.summary(),
                "import": report.summary(), **report.details(),
                "import_method": report.method, "reconciliation": rec.evidence(), "reconciliation_ok": rec.ok,
                "deleted_in_cloud": deleted, "fallback_users": report.fallback_users,
                "failures": report.failures[:50], "csv_dir": str(out_dir), "cloud": cloud.display_url,
                "box": box.display_url}
    ctx.journal.add_event(ctx.run_id, EventKind.CRM_RECONCILIATION,
                          f"reconciliation: {'OK' if rec.ok else f'{rec.mismatches} problem(s)'}",
                          data={**rec.evidence(), "ok": rec.ok, "per_entity": rec.per_entity()}, step_id=ctx.step_id)
    if not rec.ok or report.failures:
        raise IntegrityError(f"CRM delta: reconciliation found {rec.mismatches} problem(s) ({rec.without_twin} "
                             f"record(s) of the cloud without a box twin), {len(report.failures)} write failure(s); "
                             "see the journal event crm_reconciliation",
                             fix=f"fix the listed records' cause and run step {ctx.step_id} again: it only writes "
                                 "what is missing")
    records = delta.records
    counters = StepCounters(
        records=float(records), records_per_s=round(records / elapsed, 1) if elapsed > 0 else 0.0,
        import_records_per_s=round(report.written / import_s, 1) if import_s > 0 else 0.0,
        created=float(sum(e.created for e in report.entities.values())),
        updated=float(sum(e.updated for e in report.entities.values())),
        deleted_in_cloud=float(sum(len(v) for v in deleted.values())),
        requests=float(delta.requests + report.requests), seconds=round(elapsed, 2))
    what = (f"{records} CRM records changed since the last pre-sync pass moved ({presync['state']['moved']} moved "
            f"by {presync['state']['passes']} pre-sync passes before)") if presync else \
        f"{records} CRM records moved since the backup"
    proof = ("reconciliation OK: the fields of what it moved, and every cloud record created since the backup "
             "present on the box (the passes proved it up to their marks, this step above them)") if presync else \
        "reconciliation of the whole delta OK"
    return ActionResult(summary=f"{what}; {proof} ({counters.records_per_s:.0f} records/s, {elapsed:.1f} s)",
                        evidence=evidence, counters=counters)


def _presync_plan(ctx: ActionContext, section: Any, max_ids: dict[str, int]) -> dict | None:
    """What the pre-sync passes leave to this step: move only what changed since the last pass (less
    the overlap), creations above the IDs they handled, and the records their loop guard held back.
    None (the whole delta since the backup) when the pre-sync is off or no pass finished."""
    state = presync_state(ctx.journal, ctx.run_id)
    if not ctx.config.presync.enabled or not state.usable:
        if state.passes or state.failed_passes:
            ctx.journal.add_event(ctx.run_id, EventKind.PRESYNC_ALERT, "no finished pre-sync pass: step "
                                  f"{ctx.step_id} moves the whole delta since the backup", step_id=ctx.step_id)
        return None
    overlap = dt.timedelta(seconds=ctx.config.presync.overlap_seconds)
    after_ids = {e: max(int(max_ids.get(e, 0)), int(state.after_ids.get(e, 0))) for e in section.entities}
    held = quarantined(ctx.journal, ctx.run_id)  # the users have stopped: nothing bounces now
    data = state.as_data()
    data["deleted_in_cloud"] = state.deleted_in_cloud
    return {"since": state.resume_from - overlap, "after_ids": after_ids, "held_back": held, "state": data}

"""Action ``verify_migration``: the post-migration checks (checklists/verify.toml) with whatever
access the config gives — the portals' clients (``[crm_delta]``, built by the platform), the box's
database over SSH (``[box_host]``), the box's HTTPS address (``[verify]``), the platform's own
options. What is missing is reported "not run".

The flow runs it before the steps marked ``verify = true`` (2.8, 2.9, 3.2) and shows the result in
their prompts; it can also be a step's action of its own.
"""

from __future__ import annotations

import contextlib
from urllib.parse import urlsplit

from checklists.verify import VerifyAccess, load_checks, run_checks
from connectors.box_host.post_restore import domain_of
from connectors.errors import ConfigError, MigrationError
from journal.backup_marks import journaled_marks
from journal.counters import StepCounters
from journal.export import downtime_window
from journal.sweeps import quarantined
from journal.verification import record_verification

from . import ActionContext, ActionResult, register
from .crm_delta import crm_clients, cutoff_of


def _delta_moved(ctx: ActionContext) -> bool:
    """Step 2.11 has run (or the downtime is over, which comes after it)."""
    done = [e for e in ctx.journal.steps(ctx.run_id) if e.outcome == "done"]
    _, end = downtime_window(ctx.journal, ctx.run_id)
    return end is not None or any(e.action == "transfer_crm_delta" for e in done)


def build_access(ctx: ActionContext, stack: contextlib.ExitStack) -> VerifyAccess:
    """The checks' access from the config; connections are closed by ``stack``."""
    cfg = ctx.config
    section = cfg.verify
    post = cfg.post_restore
    box_portal = cfg.migration.box_portal
    checks = ctx.platform.checks
    access = VerifyAccess(options=checks.access_options(cfg) if checks else {},
                          cloud_apps=list(section.cloud_apps), timeout_s=section.timeout_s)
    if cfg.crm_delta is not None:
        try:
            access.cloud, access.box = crm_clients(ctx, cfg.crm_delta)
            access.cutoff = cutoff_of(ctx, cfg.crm_delta)
        except ConfigError as exc:
            access.unavailable.update(cloud=exc.message, box=exc.message)
    if cfg.box_host is not None:
        from .box_host import open_box_host

        try:
            host = open_box_host(ctx)
            stack.enter_context(host.remote)
            access.box_sql = host.sql
        except MigrationError as exc:
            access.unavailable["box_db"] = f"the box host is not reachable: {exc.message}"
    domain = post.domain or box_portal
    if domain:
        try:
            access.domain = domain_of(domain)
        except ConfigError:
            access.domain = ""
    access.https_url = section.https_url or (box_portal if urlsplit(box_portal).scheme == "https" else "")
    if not access.https_url and box_portal:
        access.unavailable["https"] = (f"the box portal {box_portal} is not https://: set [verify] https_url to the "
                                       f"address users open")
    access.ca_file = str(section.ca_file) if section.ca_file else None
    access.delta_moved = _delta_moved(ctx)
    if access.cutoff is not None:
        access.backup_marks = journaled_marks(ctx.journal, ctx.run_id, access.cutoff)
    access.quarantined = quarantined(ctx.journal, ctx.run_id)
    return access


def verify(ctx: ActionContext):
    """Run the checks, journal them (issues opened and resolved); returns the Verification."""
    checks = load_checks(ctx.config.verify.path)
    with contextlib.ExitStack() as stack:
        access = build_access(ctx, stack)
        result = run_checks(access, checks, platform=ctx.platform, skip=ctx.config.verify.skip,
                            progress=lambda n, total, name: ctx.progress(n, total, f"check {name}"))
    changes = record_verification(ctx.journal, ctx.run_id, result, step_id=ctx.step_id)
    for r in result.results:
        level = ctx.logger.warning if r.status == "failed" else ctx.logger.info
        level("check %s: %s — %s", r.id, r.status, r.summary)
    return result, changes


@register("verify_migration")
def verify_migration(ctx: ActionContext) -> ActionResult:
    """The checks as a step of their own: done when they ran; failures become issues (a fire
    blocks the gate), so the step itself does not fail on a finding."""
    result, changes = verify(ctx)
    return ActionResult(summary=f"verification: {result.summary()}",
                        evidence={"results": [r.as_dict() for r in result.results], **changes},
                        counters=StepCounters(passed=len(result.passed), failed=len(result.failed),
                                              not_run=len(result.not_run)))

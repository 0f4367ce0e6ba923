"""Pre-sync benchmark (issue 16): the automated part of the users' downtime — step 2.10 confirmed
→ step 2.11 done — with the pre-sync and without it, on the sandbox calibrated to the vendor's costs.

Run (each configuration is its own section of ``--out``; re-running one replaces only it)::

    .venv/bin/python bench/presync_bench.py --portals 100000 --gaps 14,60 --without 14
    .venv/bin/python bench/presync_bench.py --portals 1000000 --gaps 14,60

The case: a portal of ``--portals`` CRM records (leads, deals, contacts, companies in the seed
case's proportions, with their activities, comments, products and smart-process items), and a gap
of ``--gaps`` days between the backup and the stop, in which a sales team of the seed's size works
in the cloud: 107 leads, 32 deals, 54 contacts and 15 companies a day, and 139 changes a day to
records of the backup (bench/crm_bench.py's SEED_CASE, per day).

With pre-sync, as the flow runs it (flows/presync.py, flows/actions/crm_delta.py, one journal):

1. the catch-up pass moves the gap (the first pass after step 2.4). It runs with the cloud's costs
   switched off: it is hours before the freeze and off the users' clock, and the bench would take
   hours per configuration otherwise. It compares the whole portal's IDs (deletions) too;
2. then the cloud costs what the vendor published (``PortalLimits()``: 2 req/s, burst 50, operating
   time, 0.068 s per list page + 0.030 s per request, 1.19 s per batchImport item …); the team
   makes one interval's changes (``--interval`` minutes of a 10-hour working day) and a pass
   follows them (measured: the steady state);
3. the team makes one more interval's changes (the worst case: the stop comes just before the next
   pass); 2.10 is confirmed and step 2.11 runs (``transfer_crm_delta``): the freeze, measured.

Without pre-sync (``--without`` gap days, on the first portal size): a fresh pair, the cloud at the
vendor's costs from the start, step 2.11 moves the whole gap: the freeze, measured. Both halves of a
configuration run in one invocation, side by side in the results.

The box is free (``PortalLimits.free(rate=20)``: a self-hosted box has no operating limit; its speed is
the customer's server) and the config paces it at 20 req/s (``box_rate``), as the demo's does. Before
the freeze the bench waits 30 s: the stop comes minutes after the last pass, when the cloud's request
bucket (50 requests, 2 a second) is full again. The clients are the product's, with the
config's defaults (2 req/s, burst 50). The sandbox reads ``>DATE_MODIFY`` through an index of the
column (smart-process items too) and ``ID``/``@ID`` by key, as a real portal's database does
(sandbox/portal/store.py); the activities' ``>LAST_UPDATED`` scans in Python, which a bigger portal
pays in that listing: a freeze there is an upper bound.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pydantic import SecretStr  # noqa: E402

from connectors.secrets import register_secret  # noqa: E402
from flows.actions import ActionContext  # noqa: E402
from flows.actions.crm_delta import transfer_crm_delta  # noqa: E402
from flows.config import config_from_dict  # noqa: E402
from flows.presync import PreSyncer  # noqa: E402
from journal.store import Journal  # noqa: E402
from sandbox.portal import PortalLimits, start_pair  # noqa: E402

SHARE = {"leads": 0.515, "deals": 0.154, "contacts": 0.257, "companies": 0.074}  # bench/crm_bench.py SEED_CASE
PER_DAY = {"lead": 107, "deal": 32, "contact": 54, "company": 15}  # SEED_CASE's post records / 14 days
CHANGES_PER_DAY = 139  # SEED_CASE's changed backup records / 14 days
WORKDAY_H = 10.0
BOX_RATE = 20.0  # requests/s the self-hosted box takes ([crm_delta] box_rate, as in the demo's config)
REFILL_S = 30.0  # the stop comes minutes after the last pass: the cloud's bucket (50 at 2/s) is full again
NEW_FIELDS = {"lead": {"TITLE": "Lead made in the cloud", "STATUS_ID": "NEW", "NAME": "Client"},
              "deal": {"TITLE": "Deal made in the cloud", "STAGE_ID": "NEW", "CATEGORY_ID": "0"},
              "contact": {"NAME": "Client", "LAST_NAME": "Cloud"},
              "company": {"TITLE": "Company made in the cloud"}}


def case(portal: int, gap_days: float) -> dict:
    """The generator's arguments: ``portal`` records in the seed case's proportions, ``gap_days`` of the
    seed's team after the backup (post_fraction applies to each entity: leads set it)."""
    counts = {k: max(10, int(portal * v)) for k, v in SHARE.items()}
    post = PER_DAY["lead"] * gap_days / counts["leads"]
    modify = CHANGES_PER_DAY * gap_days / portal
    return {**counts, "users": 10, "post_days": gap_days, "post_fraction": min(0.9, post),
            "modify_fraction": min(0.9, modify)}


def _context(tmp: Path, pair, run_id: str | None, *, step_id: str, fast: bool) -> ActionContext:
    """The run's context as the flow builds it; ``fast``: the clients do not pace (the catch-up)."""
    # the box is the customer's own server: no plan limits, paced at 20 req/s as the demo's config does
    pace = {"rate": 1000, "burst": 1000, "box_rate": 1000, "box_burst": 1000} if fast else {"box_rate": BOX_RATE}
    raw = {"migration": {"name": "bench", "portal": pair.cloud.base_url, "box_portal": pair.box.base_url},
           "journal": {"url": f"sqlite:///{tmp / 'journal.db'}", "out_dir": str(tmp / "out")},
           "crm_delta": {"cutoff": pair.cutoff.isoformat(), "timeout_s": 120, **pace},
           "presync": {"requests_per_sweep": 1_000_000, "requests_per_day": 10_000_000},
           "notices": {"dry_run": True, "out_dir": str(tmp / "notices")},
           "secrets": {"cloud_webhook": {"env": "X_CLOUD"}, "box_webhook": {"env": "X_BOX"}}}
    config = config_from_dict(raw, source="bench.toml")
    secrets = {"cloud_webhook": SecretStr(pair.cloud_webhook), "box_webhook": SecretStr(pair.box_webhook)}
    for s in secrets.values():
        register_secret(s.get_secret_value())
    journal = Journal(config.journal.url)
    if run_id is None:
        run_id = journal.open_run(name="bench", portal=pair.cloud.base_url, mode="cutover", timezone="UTC",
                                  config_snapshot={})[0].id
    return ActionContext(config=config, secrets=secrets, journal=journal, run_id=run_id, step_id=step_id,
                         mode="cutover", work_dir=tmp / "work")


def team_works(pair, minutes: float, made: dict) -> int:
    """The sales team's work of ``minutes`` of a working day in the cloud: new records and changes to
    the backup's (at least one of each entity, as rounding would otherwise make none)."""
    seller = pair.dataset.users[1]
    who = {"ASSIGNED_BY_ID": seller["ID"], "CREATED_BY_ID": seller["ID"], "MODIFY_BY_ID": seller["ID"]}
    share = minutes / 60 / WORKDAY_H
    n = 0
    for entity, per_day in PER_DAY.items():
        for _ in range(max(1, round(per_day * share))):
            made.setdefault(entity, []).append(pair.cloud.store.add(entity, {**NEW_FIELDS[entity], **who}))
            n += 1
    leads = sorted(pair.cloud.store.tables["lead"])
    for i in range(max(1, round(CHANGES_PER_DAY * share))):
        rid = leads[(i * 7919 + len(made.get("lead", []))) % (len(leads) // 2)]  # records of the backup
        pair.cloud.store.update("lead", rid, {"COMMENTS": f"called back ({i})", **who})
        n += 1
    return n


def _measure(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def with_presync(portal: int, gap_days: float, interval_min: float) -> dict:
    t = time.perf_counter()
    unpaced = PortalLimits.free(rate=1000.0, burst=1000)  # the catch-up: no costs, no request limit
    pair = start_pair(limits=unpaced, box_limits=unpaced, **case(portal, gap_days))
    setup_s = time.perf_counter() - t
    print(f"  pair generated and seeded in {setup_s:.0f} s", flush=True)
    with pair, tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        fast = _context(tmp, pair, None, step_id="2.5", fast=True)
        fast_sync = PreSyncer(fast, fast.config.presync)
        catch_up, catch_up_s = _measure(fast_sync.sweep_once)
        assert catch_up and not catch_up.stopped and not catch_up.failures, catch_up and catch_up.summary()
        print(f"  catch-up pass (cloud free): {catch_up.records} records listed, {catch_up.moved} moved "
              f"in {catch_up_s:.0f} s", flush=True)

        pair.cloud.portal.limits = PortalLimits()  # from here on the vendor's costs
        pair.box.portal.limits = PortalLimits.free(rate=BOX_RATE)
        made: dict = {}
        ctx = _context(tmp, pair, fast.run_id, step_id="2.8", fast=False)
        syncer = PreSyncer(ctx, ctx.config.presync)
        steady_made = team_works(pair, interval_min, made)
        steady, steady_s = _measure(syncer.sweep_once)
        assert steady and not steady.stopped and not steady.failures, steady and steady.summary()
        print(f"  steady pass: {steady_made} changes made, {steady.moved} moved in {steady_s:.1f} s, "
              f"{steady.requests} requests", flush=True)
        last_made = team_works(pair, interval_min, made)  # the minutes between the last pass and the stop
        time.sleep(REFILL_S)  # far less than the interval that really passes: the bucket, not the clock

        freeze_ctx = _context(tmp, pair, fast.run_id, step_id="2.11", fast=False)
        result, freeze_s = _measure(lambda: transfer_crm_delta(freeze_ctx))
        ev = result.evidence
        assert ev["reconciliation_ok"] and ev["presync"], ev.get("reconciliation")
        print(f"  freeze with pre-sync: {result.counters.records:.0f} records in {freeze_s:.1f} s", flush=True)
        return {"portal": portal, "gap_days": gap_days, "setup_s": setup_s,
                "gap_records": catch_up.records, "catch_up_s": catch_up_s, "catch_up_moved": catch_up.moved,
                "deleted_found": sum(len(v) for v in (catch_up.deleted_in_cloud or {}).values()),
                "steady_made": steady_made, "steady_s": steady_s, "steady_requests": steady.requests,
                "last_made": last_made, "freeze_s": freeze_s, "freeze_records": result.counters.records,
                "freeze_requests": result.counters.requests}


def without_presync(portal: int, gap_days: float) -> dict:
    t = time.perf_counter()
    pair = start_pair(limits=PortalLimits(), box_limits=PortalLimits.free(rate=BOX_RATE), **case(portal, gap_days))
    setup_s = time.perf_counter() - t
    print(f"  pair generated and seeded in {setup_s:.0f} s", flush=True)
    with pair, tempfile.TemporaryDirectory() as tmpdir:
        ctx = _context(Path(tmpdir), pair, None, step_id="2.11", fast=False)
        ctx.config.presync.enabled = False
        result, freeze_s = _measure(lambda: transfer_crm_delta(ctx))
        assert result.evidence["reconciliation_ok"] and result.evidence["presync"] is None
        print(f"  freeze without pre-sync: {result.counters.records:.0f} records in {freeze_s:.1f} s", flush=True)
        return {"portal": portal, "gap_days": gap_days, "setup_s": setup_s, "freeze_s": freeze_s,
                "freeze_records": result.counters.records, "freeze_requests": result.counters.requests}


def _machine() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"{platform.platform()}")


def section(r: dict, command: str) -> list[str]:
    key = f"<!-- presync {r['portal']} {r['gap_days']:g} {'with' if 'catch_up_s' in r else 'without'} -->"
    if "catch_up_s" in r:
        lines = [key, f"### {r['portal']:,} records, {r['gap_days']:g}-day gap, with pre-sync", "",
                 f"- freeze (2.10 confirmed → 2.11 done): **{r['freeze_s']:.1f} s**, {r['freeze_records']:.0f} "
                 f"records moved, {r['freeze_requests']:.0f} requests; the team's last {r['last_made']} changes",
                 f"- steady pass (one interval of the team's work, {r['steady_made']} changes): {r['steady_s']:.1f} s, "
                 f"{r['steady_requests']} requests",
                 f"- catch-up pass (the gap, cloud free, off the users' clock): {r['gap_records']} records listed, "
                 f"{r['catch_up_moved']} written, {r['catch_up_s']:.0f} s, {r['deleted_found']} deletions found",
                 f"- pair generated in {r['setup_s']:.0f} s"]
    else:
        lines = [key, f"### {r['portal']:,} records, {r['gap_days']:g}-day gap, without pre-sync", "",
                 f"- freeze (2.10 confirmed → 2.11 done): **{r['freeze_s']:.0f} s**, {r['freeze_records']:.0f} records "
                 f"moved, {r['freeze_requests']:.0f} requests",
                 f"- pair generated in {r['setup_s']:.0f} s"]
    return [*lines, f"- `{command}` on {_machine()}, {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC", ""]


def merge(path: Path, sections: list[list[str]]) -> None:
    """Replace each configuration's block (by its key line) in ``path``, keep the others."""
    blocks: dict[str, list[str]] = {}
    order: list[str] = []
    if path.exists():
        current: list[str] | None = None
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("<!-- presync "):
                current = blocks.setdefault(line, [])
                order.append(line)
            if current is not None:
                current.append(line)
    for s in sections:
        if s[0] not in blocks:
            order.append(s[0])
        blocks[s[0]] = s
    text = ["# Pre-sync benchmark results (bench/presync_bench.py)", ""]
    for k in sorted(order, key=lambda k: (int(k.split()[2]), float(k.split()[3]), k.split()[4])):
        text += blocks[k]
    path.write_text("\n".join(text) + "\n", encoding="utf-8")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--portals", default="100000", help="comma-separated portal sizes (CRM records)")
    ap.add_argument("--gaps", default="14,60", help="comma-separated gaps in days (with pre-sync)")
    ap.add_argument("--without", default="", help="gap days to measure without pre-sync too (first portal size)")
    ap.add_argument("--interval", type=float, default=10.0, help="[presync] interval_minutes")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS-presync.md")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    command = "bench/presync_bench.py " + shlex.join(sys.argv[1:])
    portals = [int(x) for x in args.portals.split(",") if x]
    for portal in portals:
        for gap in [float(x) for x in args.gaps.split(",") if x]:
            print(f"{portal} records, {gap:g}-day gap, with pre-sync", flush=True)
            merge(args.out, [section(with_presync(portal, gap, args.interval), command)])
    for gap in [float(x) for x in args.without.split(",") if x]:
        print(f"{portals[0]} records, {gap:g}-day gap, without pre-sync", flush=True)
        merge(args.out, [section(without_presync(portals[0], gap), command)])
    print(args.out.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

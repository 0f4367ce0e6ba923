"""CRM delta benchmark: listing speed (ours vs fast_bitrix24 vs b24pysdk) and import speed, on the
sandbox portal calibrated to the vendor's published costs.

Run: ``.venv/bin/python bench/crm_bench.py --sizes 20000,200000 --import-records 100 --budget 120``

Listing: for each size, one sandbox portal over HTTPS with that many leads and ``PortalLimits()``
(the vendor's plan and costs: 2 req/s, burst 50, 480 s of operating time per method per 10 min,
0.068 s of processing per list page + 0.030 s per request, 20.9 µs per row counted for offset
paging). Each contender starts on a quiet portal (bucket empty, no operating time used). The
peers run unmodified in their own processes, as tests/sandbox/test_conformance.py drives them:
fast_bitrix24 ``get_all`` (SSL_CERT_FILE), b24pysdk ``list().as_list_fast()``
(REQUESTS_CA_BUNDLE). Records/s is measured by the portal (rows it returned / wall time), so every
client is measured the same way; a contender still running after ``--budget`` s is stopped and
measured on what it got.

Import: ``--import-records`` mixed records (companies, contacts with phones/e-mails, leads, deals
with relations to them) by import_delta into a sandbox box at the vendor's costs (1.19 s per
batchImport item), ``--import-free-records`` into a free box (``PortalLimits.free()``); the
reconciliation afterwards must be clean.

The seed's case (``--seed-case``; ``--seed-scale 0.3`` shrinks it): step 2.11 end to end as the flow runs
it — backup marks, export_delta with the timeline and smart processes, the review CSVs, the user map,
import_delta, reconcile with ``cloud=`` — on 14 days of a sales team's work after a year's backup
(:data:`SEED_CASE`), the cloud at the vendor's costs, the box free. Each mode rewrites only its own
section of ``--out``: ``.venv/bin/python bench/crm_bench.py --sizes "" --import-records 0 --seed-case``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import os
import platform
import random
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
import sqlalchemy  # noqa: E402

from connectors.bitrix24 import activities as timeline_activities  # noqa: E402
from connectors.bitrix24 import comments as timeline_comments  # noqa: E402
from connectors.bitrix24.delta import DeltaExport, EntityDelta  # noqa: E402
from connectors.bitrix24.importer import import_delta  # noqa: E402
from connectors.bitrix24.lists import CHAINS  # noqa: E402
from connectors.bitrix24.model import ENTITIES, SELECT  # noqa: E402
from connectors.bitrix24.platform import PLATFORM  # noqa: E402
from connectors.bitrix24.reconcile import reconcile  # noqa: E402
from connectors.bitrix24.rest import Bitrix24Client  # noqa: E402
from journal.idmap import IdMap  # noqa: E402
from sandbox.portal import Portal, PortalLimits, PortalServer  # noqa: E402
from sandbox.portal.server import make_tls  # noqa: E402
from sandbox.portal.generator import FIRST, LAST, SOURCES, STATUSES, generate, seed_backup, start_pair  # noqa: E402
from sandbox.portal.store import CrmStore  # noqa: E402

SELECT_LEAD = SELECT["lead"]  # every contender asks for the same fields

# Ours and the peers as a user would run them: unmodified, their own process, trusting the portal's CA the
# way tests/sandbox/test_conformance.py found each one does (aiohttp: SSL_CERT_FILE; requests:
# REQUESTS_CA_BUNDLE). Each prints the number of rows it got.
FB_SCRIPT = """
import asyncio, json, sys, warnings
warnings.simplefilter("ignore")
from fast_bitrix24 import BitrixAsync
b = BitrixAsync(sys.argv[1], verbose=False)
rows = asyncio.run(b.get_all("crm.lead.list", params={"select": json.loads(sys.argv[2])}))
print(len(rows))
"""
OURS_SCRIPT = """
import json, os, sys
sys.path.insert(0, os.getcwd())
import requests
from connectors.bitrix24.lists import iter_rows
from connectors.bitrix24.rest import Bitrix24Client
session = requests.Session()
session.verify = os.environ["REQUESTS_CA_BUNDLE"]
client = Bitrix24Client(sys.argv[1], session=session, rate=2.0, burst=50)
print(sum(1 for _ in iter_rows(client, "crm.lead.list", select=json.loads(sys.argv[2]))))
"""
SDK_SCRIPT = """
import json, sys
from b24pysdk import BitrixWebhook, Client
host, token = sys.argv[1].split("//", 1)[1].split("/rest/", 1)
c = Client(BitrixWebhook(domain=host, webhook_token=token.strip("/")), timeout=120)
print(sum(1 for _ in c.crm.lead.list(select=json.loads(sys.argv[2])).as_list_fast().result))
"""


def listing_ceiling(limits: PortalLimits, rows: int) -> dict[str, float]:
    """What the plan allows a listing of ``rows`` rows from a quiet portal, in rows/s.

    ``bucket``: 2 requests/s × 50 commands × 50 rows (sustained; the burst of 50 requests is left
    out). ``operating``: 480 s per 10 min / 0.068 s per page × 50 rows, sustained. A quiet portal
    lets the first 480 / 0.068 pages (352 941 rows) run before the operating budget binds, so for
    up to that many rows the bucket is the ceiling; beyond it, the operating budget."""
    per_window = limits.operating_limit_s / limits.page_cost_s * 50 if limits.page_cost_s else float("inf")
    bucket = limits.rate * 50 * 50
    operating = per_window / limits.operating_window_s
    return {"bucket": bucket, "operating": operating, "rows_per_window": per_window,
            "ceiling": bucket if rows <= per_window else min(bucket, operating)}


def import_ceiling(limits: PortalLimits) -> dict[str, float]:
    """Records/s the plan allows crm.item.batchImport: 2 requests/s × 50 commands × 20 items by the
    bucket; 480 s per 10 min / 1.19 s per item by the operating budget (sustained; one method); one
    batch in flight processes its items one after the other: 1 / 1.19 s."""
    c = limits.import_item_cost_s
    if not c:  # a free box (PortalLimits.free()): nothing but the bucket binds
        return {"bucket": limits.rate * 50 * 20, "operating": float("inf"), "serial": float("inf"),
                "budget_items": float("inf")}
    return {"bucket": limits.rate * 50 * 20, "operating": limits.operating_limit_s / limits.operating_window_s / c,
            "serial": 1 / c, "budget_items": limits.operating_limit_s / c}


def seed_leads(store: CrmStore, n: int, rng: random.Random) -> None:
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=365)
    step = dt.timedelta(days=360) / n
    for i in range(n):
        t = start + step * i
        store.add("lead", {"TITLE": f"Lead #{i}", "NAME": rng.choice(FIRST), "LAST_NAME": rng.choice(LAST),
                           "STATUS_ID": rng.choice(STATUSES), "SOURCE_ID": rng.choice(SOURCES),
                           "OPPORTUNITY": f"{rng.randint(1, 500) * 100}.00", "CURRENCY_ID": "EUR",
                           "ASSIGNED_BY_ID": str(rng.randint(1, 8)), "DATE_CREATE": t, "DATE_MODIFY": t,
                           "PHONE": [{"VALUE": f"+7 900 {i:07d}", "VALUE_TYPE": "WORK"}],
                           "EMAIL": [{"VALUE": f"lead{i}@example.com", "VALUE_TYPE": "WORK"}]}, keep_times=True)


def _peer(script: str, webhook: str, env: dict, budget: float) -> tuple[bool, str]:
    """Run a peer's script; (finished, why not)."""
    proc = subprocess.Popen([sys.executable, "-c", script, webhook, repr(SELECT_LEAD).replace("'", '"')],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        out, err = proc.communicate(timeout=budget)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return False, f"stopped at the {budget:.0f} s budget"
    if proc.returncode == 0:
        return True, ""
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else f"exit {proc.returncode}"
    for code in ("OPERATION_TIME_LIMIT", "QUERY_LIMIT_EXCEEDED"):
        if code in err:
            return False, f"failed with {code}: {last[:140]}"
    return False, f"failed: {last[:160]}"


class _Counted:
    """A portal for one contender, serving the shared store: counts the rows its answers carry, so
    that requests a stopped contender left running on an earlier portal neither add to this
    contender's rows nor spend its operating time."""

    def __init__(self, store: CrmStore) -> None:
        self.portal = Portal(store, limits=PortalLimits())
        self.rows = 0
        handle = self.portal.handle

        def counting(*args, **kw):
            status, body, fault = handle(*args, **kw)
            res = body.get("result")
            pages = res.get("result", {}).values() if isinstance(res, dict) and args[2] == "batch" else [res]
            self.rows += sum(len(p) for p in pages if isinstance(p, list))
            return status, body, fault

        self.portal.handle = counting


def bench_listing(n: int, budget: float, tls_dir: Path) -> dict[str, dict]:
    store = CrmStore()
    t = time.perf_counter()
    seed_leads(store, n, random.Random(1))
    print(f"seeded {n} leads in {time.perf_counter() - t:.1f} s", flush=True)
    context, ca_file = make_tls(tls_dir)
    env = dict(os.environ, SSL_CERT_FILE=str(ca_file), REQUESTS_CA_BUNDLE=str(ca_file))
    results: dict[str, dict] = {}
    contenders = {f"cloud2box fast_list ({CHAINS} parallel >ID chains, batch, start=-1)": OURS_SCRIPT,
                  "fast_bitrix24 1.8.14 get_all": FB_SCRIPT,
                  "b24pysdk 1.3.2 list().as_list_fast()": SDK_SCRIPT}
    for name, script in contenders.items():
        counted = _Counted(store)  # a quiet portal: bucket empty, no operating time used
        with PortalServer(counted.portal, tls=context, ca_file=ca_file) as srv:
            t0 = time.perf_counter()
            done, note = _peer(script, srv.webhook, env, budget)
            results[name] = {"rows": counted.rows, "seconds": time.perf_counter() - t0, "done": done and
                             counted.rows >= n, "note": note or ("" if counted.rows >= n else "exited early"),
                             "requests": counted.portal.requests, "rejected": counted.portal.rejected,
                             "operating": counted.portal._operating_used("crm.lead.list")[0]}
        print(name, results[name], flush=True)
    return results


def synthetic_delta(box: CrmStore, cutoff: dt.datetime, n: int, rng: random.Random) -> DeltaExport:
    """``n`` new cloud records (10 % companies, 25 % contacts, 40 % leads, 25 % deals) created
    after the cutoff, with relations among themselves and to backup records."""
    shares = {"company": 0.10, "contact": 0.25, "lead": 0.40, "deal": 0.25}
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)
    entities = {}
    created: dict[str, list[str]] = {}
    for entity, share in shares.items():
        k = int(n * share)
        base = max(box.ids[entity] or [0])
        d = EntityDelta(entity, backup_max_id=base)
        ids = [str(base + 1000 + i) for i in range(k)]
        step = (now - cutoff) / (k + 1)
        for i, rid in enumerate(ids):
            t = (cutoff + step * (i + 1)).isoformat(timespec="seconds")
            row = {"ID": rid, "DATE_CREATE": t, "DATE_MODIFY": t, "ASSIGNED_BY_ID": str(rng.randint(1, 8)),
                   "COMMENTS": "", "TITLE": f"{entity} {rid}", "NAME": rng.choice(FIRST), "LAST_NAME": rng.choice(LAST)}
            if entity != "deal":
                row["PHONE"] = [{"ID": "1", "VALUE": f"+7 901 {int(rid):07d}", "VALUE_TYPE": "WORK"}]
                row["EMAIL"] = [{"ID": "2", "VALUE": f"{entity}{rid}@example.com", "VALUE_TYPE": "WORK"}]
            if entity in ("contact", "lead", "deal") and created.get("company"):
                row["COMPANY_ID"] = rng.choice(created["company"])
            if entity in ("lead", "deal") and created.get("contact"):
                row["CONTACT_ID"] = rng.choice(created["contact"])
            if entity == "deal":
                row.update({"STAGE_ID": "NEW", "CATEGORY_ID": "0", "OPPORTUNITY": "100.00", "CURRENCY_ID": "EUR",
                            "LEAD_ID": rng.choice(created["lead"])})
            if entity == "lead":
                row.update({"STATUS_ID": "NEW", "SOURCE_ID": "WEB", "OPPORTUNITY": "50.00", "CURRENCY_ID": "EUR"})
            d.rows[rid] = row
            d.kind[rid] = "created"
        created[entity] = ids
        entities[entity] = d
    return DeltaExport(cutoff, entities)


def bench_import(n: int, limits: PortalLimits) -> dict:
    data = generate(companies=40, contacts=100, leads=300, deals=150)
    box_store = CrmStore()
    seed_backup(box_store, data)
    delta = synthetic_delta(box_store, data.cutoff, n, random.Random(2))
    portal = Portal(box_store, limits=limits)
    with PortalServer(portal) as srv, tempfile.TemporaryDirectory() as tmp:
        box = Bitrix24Client(srv.webhook, rate=2.0, burst=50, name="box")
        idmap = IdMap(sqlalchemy.create_engine(f"sqlite:///{tmp}/j.db"), "bench")
        users = {str(i): str(i) for i in range(1, 9)}
        t0 = time.perf_counter()
        report = import_delta(box, delta, idmap, user_map=users)
        el = time.perf_counter() - t0
        rec = reconcile(box, delta, idmap, user_map=users)
        return {"records": delta.records, "seconds": el, "requests": report.requests, "method": report.method,
                "reconciliation_ok": rec.ok, "failures": len(report.failures), "limits": limits,
                "problems": {e: r for e, r in rec.evidence().items() if not r.get("ok", True)}}


# The seed's case (DESIGN.md, "The runbook", seed 003): a sales team of ~10 making 100+ leads a day works
# 14 days in the cloud after the backup, which holds a year of that team's work. generate() puts
# post_fraction of each entity's records after the cutoff: 7 % of 21 500 leads = 1 505 (107 a day), with
# 451 deals, 752 contacts and 214 companies; 5 % of the backup's records are changed after it. The
# timeline scales with these counts (timeline_data.py: calls/e-mails/meetings on the backup's records,
# 1–2 on every new record and on a tenth of the old ones, comments, product rows on half the new deals).
SEED_CASE = {"leads": 21_500, "deals": 6_450, "contacts": 10_750, "companies": 3_070, "users": 10,
             "post_days": 14.0, "post_fraction": 0.07, "modify_fraction": 0.05}


class _Phases:
    """Wall seconds and requests (cloud, box: as the clients sent them) of each phase of step 2.11, and
    the cloud's busiest method's operating seconds in its window at the phase's end."""

    def __init__(self, cloud: Bitrix24Client, box: Bitrix24Client, cloud_portal: Portal) -> None:
        self.cloud, self.box, self.cloud_portal = cloud, box, cloud_portal
        self.rows: list[dict] = []

    @contextlib.contextmanager
    def phase(self, name: str):
        c0, b0, t0 = self.cloud.requests, self.box.requests, time.perf_counter()
        yield
        seconds = time.perf_counter() - t0
        portal = self.cloud_portal
        busiest = max((portal._operating_used(m)[0] for m in list(portal._operating)), default=0.0)
        self.rows.append({"phase": name, "seconds": seconds, "cloud": self.cloud.requests - c0,
                          "box": self.box.requests - b0, "operating": busiest})
        print(f"{name}: {seconds:.1f} s, {self.rows[-1]['cloud']} cloud + {self.rows[-1]['box']} box requests",
              flush=True)


class _CommentProbe:
    """The export's listing of the cloud's comments (seconds, requests, owners) and every wait of the
    client for ``OPERATION_TIME_LIMIT`` (from its retry warnings: count, longest), during a ``with``."""

    def __init__(self, cloud: Bitrix24Client) -> None:
        self.cloud = cloud
        self.listing = {"seconds": 0.0, "requests": 0, "owners": 0}
        self.limit_waits: list[float] = []

    def __enter__(self) -> "_CommentProbe":
        real = self._real = timeline_comments.list_comments

        def timed(client, owners, **kw):
            if client is not self.cloud:
                return real(client, owners, **kw)
            t, r = time.perf_counter(), client.requests
            try:
                return real(client, owners, **kw)
            finally:
                self.listing["seconds"] += time.perf_counter() - t
                self.listing["requests"] += client.requests - r
                self.listing["owners"] += sum(len(v) for v in owners.values())

        timeline_comments.list_comments = timed
        probe = self

        class Waits(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                text = record.getMessage()
                if "operation time limit" in text.lower() or "OPERATION_TIME_LIMIT" in text:
                    probe.limit_waits.append(float(record.args[2]) if len(record.args or ()) > 2 else 0.0)

        self._handler = Waits(logging.WARNING)
        logging.getLogger("cloud2box.bitrix24").addHandler(self._handler)
        return self

    def __exit__(self, *exc) -> None:
        timeline_comments.list_comments = self._real
        logging.getLogger("cloud2box.bitrix24").removeHandler(self._handler)


def _comment_owners(delta: DeltaExport) -> dict[str, int]:
    """Whose comments the export listed: the delta's records, the records only a moved activity
    touches, and the comments found on the latter (missed were those owners left out)."""
    records = {e: set(d.rows) for e, d in delta.entities.items()}
    via_activity = {e: ids - records.get(e, set())
                    for e, ids in timeline_activities.owners_of(delta.timeline.activities).items()}
    return {"records": sum(map(len, records.values())), "via_activity": sum(map(len, via_activity.values())),
            "comments_via_activity": sum(1 for r in delta.timeline.comments.values()
                                         if str(r["ENTITY_ID"]) in via_activity.get(r["ENTITY_TYPE"], ()))}


def _https_client(url: str, ca_file: Path, name: str) -> Bitrix24Client:
    """A client as step 2.11 makes it ([crm_delta] defaults: 2 req/s, burst 50, 60 s timeout)."""
    session = requests.Session()
    session.verify = str(ca_file)
    session.trust_env = False  # else REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE, when set, override ``verify``
    return Bitrix24Client(url, session=session, rate=2.0, burst=50, timeout=60.0, name=name)


def _kinds(delta: DeltaExport, report, rec) -> list[dict]:
    """Per kind of record: what the delta held, what the import did, what the reconciliation matched."""
    written: dict[str, dict] = {e: {"created": r.created, "updated": r.updated, "unchanged": r.unchanged}
                                for e, r in report.entities.items()}
    if report.timeline is not None:
        written.update({e: {"created": r.created, "updated": r.updated, "unchanged": r.unchanged}
                        for e, r in report.timeline.entities.items()})
    written.update({k: {"created": t.created, "updated": t.updated, "unchanged": t.unchanged}
                    for k, t in report.dynamic.items()})
    exported = delta.summary()
    out = []
    for kind, r in rec.per_entity().items():
        e = exported.get(kind, {})
        w = written.get(kind, {})
        out.append({"kind": kind, "delta": r["delta"], "created": e.get("created", e.get("deals", "")),
                    "modified": e.get("modified", ""), "written": f"{w.get('created', 0)} / {w.get('updated', 0)} / "
                    f"{w.get('unchanged', 0)}", "matched": r["matched"], "problems": r["problems"]})
    return out


def bench_seed_case(scale: float = 1.0) -> dict:
    """Step 2.11 as flows/actions/crm_delta.py runs it, on the seed's case: backup marks from the box,
    export_delta (extras on) with the review CSVs, the user map, import_delta, reconcile with
    ``cloud=``. The cloud costs what the vendor published (``PortalLimits()``); the box is free
    (``PortalLimits.free()``, as the demo's: a self-hosted box has no operating limit by default and
    its speed is the customer's server). Both over HTTPS. ``scale`` shrinks the case (a quick try)."""
    case = {k: (max(1, int(v * scale)) if k in ("leads", "deals", "contacts", "companies") else v)
            for k, v in SEED_CASE.items()}
    t = time.perf_counter()
    pair = start_pair(box_limits=PortalLimits.free(), tls=True, **case)
    setup_s = time.perf_counter() - t
    print(f"generated and seeded the pair in {setup_s:.1f} s", flush=True)
    with pair, tempfile.TemporaryDirectory() as tmp:
        cloud = _https_client(pair.cloud_webhook, pair.ca_file, "the cloud portal")
        box = _https_client(pair.box_webhook, pair.ca_file, "the box portal")
        idmap = IdMap(sqlalchemy.create_engine(f"sqlite:///{tmp}/journal.db"), "seed-case")
        crm = PLATFORM.crm
        phases = _Phases(cloud, box, pair.cloud.portal)
        t0 = time.perf_counter()
        with phases.phase("backup marks (box, before the import)"):
            marks = crm.backup_marks(box, pair.cutoff, entities=ENTITIES)
        with phases.phase("export_delta (extras on) + review CSVs"), _CommentProbe(cloud) as probe:
            delta = crm.export(cloud, box, pair.cutoff, max_ids={e: m["max_id"] for e, m in marks.items()})
            crm.write_review_files(delta, Path(tmp) / "crm-delta")
        with phases.phase("user map"):
            users = crm.map_users(cloud, box)
        with phases.phase("import_delta"):
            report = crm.import_delta(box, delta, idmap, user_map=users, review_dir=Path(tmp) / "crm-delta")
        with phases.phase("reconcile (cloud=)"):
            rec = crm.reconcile(box, delta, idmap, user_map=users, cloud=cloud)
        total = time.perf_counter() - t0
    return {"case": case, "setup_s": setup_s, "phases": phases.rows, "total_s": total, "records": delta.records,
            "entity_records": delta.entity_records, "kinds": _kinds(delta, report, rec), "ok": rec.ok,
            "failures": report.failures[:10], "problems": {k: v for k, v in rec.evidence().items()
                                                           if isinstance(v, dict) and not v.get("ok", True)},
            "cutoff": pair.cutoff, "import_method": report.method, "comment_listing": probe.listing,
            "limit_waits": probe.limit_waits, "comment_owners": _comment_owners(delta),
            "cloud_post_comments": len(pair.dataset.timeline.post_comments)}


NOTES = """## Reading the numbers

- Ceilings: see BENCHMARKS.md ("CRM delta"). A listing of up to 352 941 rows from a quiet portal is
  bound by the bucket (5 000 rows/s sustained; the burst of 50 requests lets a short run exceed it);
  a longer one by the operating budget (588 rows/s sustained).
- fast_bitrix24 get_all pages by offset: every page counts the table (20.9 µs a row), so at 200 000
  leads it spends the 480 s budget in seconds and fails on 429 OPERATION_TIME_LIMIT, which it does
  not retry. b24pysdk as_list_fast runs one chain of start=-1 pages at a time (~2 500 rows per
  3.5 s of processing).
- Each contender has its own portal on the same store, so requests a stopped peer left running do
  not spend the next one's operating time; rows are counted from each portal's answers.
"""


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.2f}"


def listing_table(n: int, results: dict[str, dict], limits: PortalLimits) -> list[str]:
    ceil = listing_ceiling(limits, n)
    ours = next(iter(results.values()))
    ours_rate = ours["rows"] / ours["seconds"]
    lines = [f"### {n:,} leads", "",
             f"Plan ceiling: **{ceil['ceiling']:,.0f} rows/s** (bucket {ceil['bucket']:,.0f} rows/s; operating "
             f"budget {ceil['rows_per_window']:,.0f} rows per window, {ceil['operating']:,.0f} rows/s sustained)", "",
             "| client | rows | seconds | rows/s | × ceiling | × ours | finished | requests | 503 | operating s |",
             "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    for name, r in results.items():
        rate = r["rows"] / r["seconds"] if r["seconds"] else 0.0
        lines.append(f"| {name} | {r['rows']:,} | {r['seconds']:.1f} | {_fmt(rate)} | {rate / ceil['ceiling']:.3f} | "
                     f"{rate / ours_rate:.3f} | {'yes' if r['done'] else 'no: ' + r['note']} | {r['requests']} | "
                     f"{r['rejected']} | {r['operating']:.0f} |")
    return lines + [""]


def _run_line(cmd: str, started: float) -> str:
    return (f"Run: `{cmd}` on {platform.node()} ({os.cpu_count()} CPUs, Python {platform.python_version()}), "
            f"{dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}, {time.perf_counter() - started:.0f} s")


def listing_section(listings: dict[int, dict], budget: float, run: str) -> list[str]:
    limits = PortalLimits()
    lines = ["## Listing crm.lead.list over HTTPS, sandbox portal at the vendor's plan and costs", "", run, "",
             f"`PortalLimits()`: {limits.rate:g} req/s, burst {limits.burst}, {limits.operating_limit_s:g} s operating "
             f"per method per {limits.operating_window_s:g} s; {limits.page_cost_s} s per list page + "
             f"{limits.request_cost_s} s per request; {limits.count_cost_s * 1e6:.1f} µs per counted row (start ≥ 0). "
             f"Every contender starts on a quiet portal; peers are stopped after {budget:.0f} s and measured on "
             "the rows the portal returned to them.", ""]
    for n, results in listings.items():
        lines += listing_table(n, results, limits)
    return lines


def import_section(runs: list[dict], run: str) -> list[str]:
    lines = ["## Import (crm.item.batchImport) of mixed records into the sandbox box", "", run, "",
             "Records: 10 % companies, 25 % contacts with phones/e-mails, 40 % leads, 25 % deals, related to each "
             "other (`synthetic_delta`); the reconciliation afterwards must be clean. Ceilings: bucket 2 req/s × 50 "
             "commands × 20 items; at the vendor's costs the operating budget (480 s / 600 s / 1.19 s per item, "
             "sustained; 403 items per window from a quiet portal) and one batch in flight (its items one after the "
             "other: 1 / 1.19 s); a free box has no cost, so only the bucket binds.", "",
             "| box | method | records | seconds | records/s | ceiling (records/s) | × ceiling | requests "
             "| reconciliation |", "|---|---|---:|---:|---:|---|---:|---:|---|"]
    for imp in runs:
        ic = import_ceiling(imp["limits"])
        rate = imp["records"] / imp["seconds"]
        if imp["limits"].import_item_cost_s:
            # up to a quiet window's budget of items, one batch in flight binds; beyond it, the budget
            box = "vendor's costs (`PortalLimits()`)"
            ceiling = ic["serial"] if imp["records"] <= ic["budget_items"] else ic["operating"]
            named = f"one batch in flight {ic['serial']:.3f} (sustained budget {ic['operating']:.3f})"
        else:
            box, ceiling = "free (`PortalLimits.free()`)", ic["bucket"]
            named = f"bucket {ic['bucket']:,.0f}"
        ok = "OK" if imp["reconciliation_ok"] else f"FAILED: {imp['problems']}"
        lines.append(f"| {box} | {imp['method']} | {imp['records']} | {imp['seconds']:.1f} | {_fmt(rate)} | {named} | "
                     f"{rate / ceiling:.3f} | {imp['requests']} | {ok} |")
    return lines + [""]


def seed_case_section(r: dict, run: str) -> list[str]:
    case = r["case"]
    post = {e: max(1, int(case[e + "s" if e != "company" else "companies"] * case["post_fraction"]))
            for e in ("lead", "deal", "contact", "company")}
    lines = ["## The seed's case: step 2.11 end to end", "", run, "",
             f"`generate({', '.join(f'{k}={v:g}' if isinstance(v, float) else f'{k}={v:_}' for k, v in case.items())})`: "
             f"a backup of {case['leads'] - post['lead']:,} leads, {case['deals'] - post['deal']:,} deals, "
             f"{case['contacts'] - post['contact']:,} contacts, {case['companies'] - post['company']:,} companies "
             f"(a year) and their timeline, then {case['post_days']:g} days of a team of {case['users']} in the cloud: "
             f"{post['lead']:,} new leads ({post['lead'] / case['post_days']:.0f} a day), {post['deal']} deals, "
             f"{post['contact']} contacts, {post['company']} companies, {case['modify_fraction']:.0%} of the backup's "
             "records changed, calls/e-mails/meetings, comments, product rows, smart-process items. The cloud at "
             "the vendor's costs (`PortalLimits()`), the box free (`PortalLimits.free()`, as in the demo: a "
             "self-hosted box has no operating limit by default), both over HTTPS on loopback; clients as step "
             f"2.11 makes them (2 req/s, burst 50, 60 s timeout). Generating and seeding the pair: {r['setup_s']:.0f} s "
             "(not counted).", "",
             "| phase | seconds | cloud requests | box requests | cloud operating s (busiest method, in its window) |",
             "|---|---:|---:|---:|---:|"]
    for ph in r["phases"]:
        lines.append(f"| {ph['phase']} | {ph['seconds']:.1f} | {ph['cloud']} | {ph['box']} | {ph['operating']:.0f} |")
    cloud_req = sum(ph["cloud"] for ph in r["phases"])
    box_req = sum(ph["box"] for ph in r["phases"])
    lines += [f"| **total** | **{r['total_s']:.1f}** | {cloud_req} | {box_req} | |", "",
              _comment_note(r), "",
              f"{r['records']:,} records moved ({r['entity_records']:,} of the four entities); "
              f"{r['records'] / r['total_s']:.1f} records/s over the whole step; import method {r['import_method']}; "
              f"reconciliation {'OK' if r['ok'] else 'FAILED: ' + str(r['problems'])[:400]}"
              + (f"; failures: {r['failures']}" if r["failures"] else "") + ".", "",
              "| kind | in the delta | created after the backup | changed | box: created / updated / unchanged "
              "| matched | problems |", "|---|---:|---:|---:|---|---:|---:|"]
    for k in r["kinds"]:
        lines.append(f"| {k['kind']} | {k['delta']} | {k['created']} | {k['modified']} | {k['written']} | "
                     f"{k['matched']} | {k['problems']} |")
    return lines + [""]


def _comment_note(r: dict) -> str:
    """The export's comment listing, split out of its phase, and what the operating limit did."""
    listing, owners, waits = r["comment_listing"], r["comment_owners"], r["limit_waits"]
    comments = next((k["delta"] for k in r["kinds"] if k["kind"] == "comment"), 0)
    missed = r["cloud_post_comments"] - comments
    limit = (f"`OPERATION_TIME_LIMIT` was hit and waited out: {len(waits)} waits of the client's threads, "
             f"the longest {max(waits):.0f} s" if waits else "`OPERATION_TIME_LIMIT` was not hit")
    return (f"Of the export, listing the comments of {listing['owners']:,} cloud records ({owners['records']:,} in the "
            f"delta, {owners['via_activity']:,} only through a moved activity) took **{listing['seconds']:.1f} s** and "
            f"{listing['requests']} cloud requests (up to {CHAINS} batches of 50 in flight); {limit}. "
            f"Comments found: {comments:,} of the {r['cloud_post_comments']:,} the cloud got after the backup, "
            f"{owners['comments_via_activity']:,} of them on records only a moved activity touches"
            + (f"; {missed:,} are on records nothing else changed, which the list cannot reach without naming "
               "its owner." if missed else "."))


def merge_sections(path: Path, sections: list[list[str]], preamble: list[str]) -> str:
    """The results file with each of ``sections`` (a list of lines starting with its ``## `` heading)
    put in place of the section of the same heading, or before the notes when it is new: a run of
    one mode keeps the others' last results."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    parts: list[list[str]] = [[]]
    for line in old.splitlines():
        if line.startswith("## "):
            parts.append([])
        parts[-1].append(line)
    body = {p[0]: p for p in parts[1:] if p and p[0] != NOTES.splitlines()[0]}
    for sec in sections:
        body[sec[0]] = sec
    text = [*preamble]
    for sec in body.values():
        text += sec if sec[-1] == "" else [*sec, ""]
    return "\n".join(text) + "\n" + NOTES


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="20000,200000", help="comma-separated lead counts; empty: no listing")
    ap.add_argument("--import-records", type=int, default=100, help="records into a box at the vendor's costs")
    ap.add_argument("--import-free-records", type=int, default=0, help="records into a free box (0: none)")
    ap.add_argument("--seed-case", action="store_true", help="step 2.11 end to end on the seed's case")
    ap.add_argument("--seed-scale", type=float, default=1.0, help="shrink the seed's case (a quick try)")
    ap.add_argument("--budget", type=float, default=120.0, help="seconds each peer may run per size")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS-crm.md")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    cmd = ".venv/bin/python bench/crm_bench.py " + shlex.join(sys.argv[1:])
    sections = []
    if sizes:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="crm-bench-tls-") as tls_dir:
            listings = {n: bench_listing(n, args.budget, Path(tls_dir) / str(n)) for n in sizes}
        sections.append(listing_section(listings, args.budget, _run_line(cmd, started)))
    started = time.perf_counter()
    imports = [bench_import(n, limits) for n, limits in ((args.import_records, PortalLimits()),
                                                        (args.import_free_records, PortalLimits.free())) if n]
    for imp in imports:
        print("import", imp, flush=True)
    if imports:
        sections.append(import_section(imports, _run_line(cmd, started)))
    if args.seed_case:
        started = time.perf_counter()
        seed = bench_seed_case(args.seed_scale)
        sections.append(seed_case_section(seed, _run_line(cmd, started)))
    preamble = ["# CRM delta benchmark", "",
                f"Machine: {platform.node()}, {platform.platform()}, {os.cpu_count()} CPUs, Python "
                f"{platform.python_version()}. Each section names the command and the date of its last run.", ""]
    args.out.write_text(merge_sections(args.out, sections, preamble), encoding="utf-8")
    for sec in sections:
        print("\n".join(sec))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

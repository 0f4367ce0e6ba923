"""CRM delta benchmark: export speed (ours vs offset paging vs fast_bitrix24) and import speed.

Run: ``/work/venv/bin/python bench/crm_bench.py --leads 200000 --import-records 20000 --budget 60``

Export: one sandbox portal with ``--leads`` leads at the vendor's standard limits (2 req/s drain,
burst 50; the portal's bucket is emptied before each contender). Records/s is measured by the
portal itself (rows it returned in list results / wall time), so every client is measured the
same way; a contender that has not finished after ``--budget`` seconds is stopped and measured
on what it got so far.

Import: ``--import-records`` mixed records (companies, contacts with phones/e-mails, leads, deals
with relations to them) into a sandbox box at 2 req/s, burst 50; the reconciliation afterwards
must be clean.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sqlalchemy  # noqa: E402

from connectors.bitrix24.delta import DeltaExport, EntityDelta  # noqa: E402
from connectors.bitrix24.importer import import_delta  # noqa: E402
from connectors.bitrix24.lists import iter_rows, offset_list  # noqa: E402
from connectors.bitrix24.model import SELECT  # noqa: E402
from connectors.bitrix24.reconcile import reconcile  # noqa: E402
from connectors.bitrix24.rest import Bitrix24Client  # noqa: E402
from journal.idmap import IdMap  # noqa: E402
from sandbox.portal import Portal, PortalLimits, PortalServer  # noqa: E402
from sandbox.portal.generator import FIRST, LAST, SOURCES, STATUSES, generate, seed_backup  # noqa: E402
from sandbox.portal.store import CrmStore  # noqa: E402

FB_SCRIPT = """
import sys, warnings
warnings.simplefilter("ignore")
from fast_bitrix24 import Bitrix
b = Bitrix(sys.argv[1], verbose=False)
rows = b.get_all("crm.lead.list", params={"select": ["*", "PHONE", "EMAIL"]})
print(len(rows))
"""


NOTES = """## Reading the numbers

- The 200 000-lead export needs 81 requests (80 batches of 50 pages of 50 rows + one empty page);
  the first 50 ride the portal's burst, the other 31 go at 2 req/s. Sustained (burst used up), the
  ceiling is 2 x 50 x 50 = 5 000 records/s; the measured average includes the burst, as a real
  export after a quiet period does.
- Offset paging makes the portal count the whole table on every page (here 200 000 rows x 2 us =
  0.4 s per page, ten times cheaper than the vendor's measurement of 49.9 s per page on 2.39 M
  leads) and spends one request per 50 rows.
- fast_bitrix24's get_all pages by offset in parallel batches. With the count cost, its batches
  spend the method's operating-time budget (480 s per 10 min) in about 10 s and the portal answers
  OPERATION_TIME_LIMIT, which get_all raises. With counting made free, it sends faster than the
  portal's leaky bucket drains (its throttler appears to count a request when the answer arrives),
  gets 503 QUERY_LIMIT_EXCEEDED and gives up after 10 failures in a row. Its records/s is what it
  had received when it failed; it did not finish either run.
- Import: crm.item.batchImport takes 20 records per command and 50 commands per request, so 20 000
  records take 20 write requests plus 4 map rebuild scans; the reconciliation afterwards is clean.
"""


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


def reset_bucket(portal: Portal) -> None:
    with portal._bucket_lock:
        portal._level = 0.0
        portal._at = time.monotonic()
        portal._operating.clear()


def bench_export(n: int, budget: float, count_cost_us: float) -> dict[str, dict]:
    store = CrmStore()
    t = time.perf_counter()
    seed_leads(store, n, random.Random(1))
    print(f"seeded {n} leads in {time.perf_counter() - t:.1f} s", flush=True)
    portal = Portal(store, limits=PortalLimits(rate=2.0, burst=50, count_cost_s=count_cost_us / 1e6))
    results = {}
    with PortalServer(portal) as srv:
        # ours: batch + >ID chaining + start=-1
        reset_bucket(portal)
        client = Bitrix24Client(srv.webhook, rate=2.0, burst=50)
        before, t0, rejected0 = store.rows_listed, time.perf_counter(), portal.rejected
        got = sum(1 for _ in iter_rows(client, "crm.lead.list", select=SELECT["lead"]))
        el = time.perf_counter() - t0
        results["cloud2box fast_list (batch, >ID, start=-1)"] = {"rows": got, "seconds": el, "done": got == n,
                                                               "requests": client.requests, "note": "",
                                                               "rejected": portal.rejected - rejected0}
        print("ours", results, flush=True)
        # offset paging, one page per request (the classic way)
        reset_bucket(portal)
        client = Bitrix24Client(srv.webhook, rate=2.0, burst=50)
        before, t0 = store.rows_listed, time.perf_counter()
        got = sum(len(p) for p in offset_list(client, "crm.lead.list", select=SELECT["lead"],
                                              deadline=time.monotonic() + budget))
        el = time.perf_counter() - t0
        results["offset paging (start=N, one page per request)"] = {
            "rows": got, "seconds": el, "done": got == n, "requests": client.requests,
            "note": "" if got == n else "stopped at the budget"}
        print("offset", results, flush=True)
        # fast_bitrix24 get_all, unmodified, in a subprocess (stopped after the budget): once with the
        # portal's count cost, once with counting made free (the best case for offset paging)
        for label, cost in ((f"fast_bitrix24 get_all (PyPI 1.8.14), count cost {count_cost_us} µs/row",
                             count_cost_us / 1e6),
                            ("fast_bitrix24 get_all (PyPI 1.8.14), count cost 0 (best case)", 0.0)):
            portal.limits.count_cost_s = cost
            reset_bucket(portal)
            before, t0, rejected0 = store.rows_listed, time.perf_counter(), portal.rejected
            proc = subprocess.Popen([sys.executable, "-c", FB_SCRIPT, srv.webhook], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            note = ""
            try:
                out, err = proc.communicate(timeout=budget)
                done = proc.returncode == 0
                if not done:
                    note = "failed: OPERATION_TIME_LIMIT" if "OPERATION_TIME_LIMIT" in err else \
                        "failed: " + (err.strip().splitlines() or ["?"])[-1][:80]
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                done, note = False, "stopped at the budget"
            el = time.perf_counter() - t0
            got = store.rows_listed - before
            results[label] = {"rows": got, "seconds": el, "done": done, "requests": None, "note": note,
                              "rejected": portal.rejected - rejected0}
            print(label, results[label], flush=True)
        portal.limits.count_cost_s = count_cost_us / 1e6
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


def bench_import(n: int) -> dict:
    data = generate(companies=40, contacts=100, leads=300, deals=150)
    box_store = CrmStore()
    seed_backup(box_store, data)
    delta = synthetic_delta(box_store, data.cutoff, n, random.Random(2))
    portal = Portal(box_store, limits=PortalLimits(rate=2.0, burst=50))
    with PortalServer(portal) as srv, tempfile.TemporaryDirectory() as tmp:
        box = Bitrix24Client(srv.webhook, rate=2.0, burst=50, name="box")
        idmap = IdMap(sqlalchemy.create_engine(f"sqlite:///{tmp}/j.db"), "bench")
        users = {str(i): str(i) for i in range(1, 9)}
        t0 = time.perf_counter()
        report = import_delta(box, delta, idmap, user_map=users)
        el = time.perf_counter() - t0
        rec = reconcile(box, delta, idmap, user_map=users)
        return {"records": delta.records, "seconds": el, "requests": report.requests, "method": report.method,
                "reconciliation_ok": rec.ok, "failures": len(report.failures)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--leads", type=int, default=200_000)
    ap.add_argument("--import-records", type=int, default=20_000)
    ap.add_argument("--budget", type=float, default=60.0, help="seconds each slow contender may run")
    ap.add_argument("--count-cost-us", type=float, default=2.0, help="simulated count cost per row (µs)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS-crm.md")
    args = ap.parse_args()
    export = bench_export(args.leads, args.budget, args.count_cost_us)
    imp = bench_import(args.import_records)
    print("import", imp, flush=True)
    cmd = "/work/venv/bin/python bench/crm_bench.py " + " ".join(sys.argv[1:])
    lines = [
        "# CRM delta benchmark", "",
        f"Command: `{cmd}`  ",
        f"Machine: {platform.node()}, {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}  ",
        f"Date: {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}", "",
        f"## Export of {args.leads} leads (select *, PHONE, EMAIL) from the sandbox portal at 2 req/s, burst 50",
        f"(simulated count cost {args.count_cost_us} µs per row for `start >= 0`; contenders stopped after "
        f"{args.budget:.0f} s or failing are measured on what they got: rows the portal returned / wall time)", "",
        "| client | rows | seconds | records/s | finished | requests | refused by the portal (503) |",
        "|---|---:|---:|---:|---|---:|---:|"]
    for name, r in export.items():
        rate = r["rows"] / r["seconds"] if r["seconds"] else 0
        lines.append(f"| {name} | {r['rows']} | {r['seconds']:.1f} | {rate:,.0f} | {'yes' if r['done'] else 'no: ' + r['note']}"
                     f" | {r['requests'] if r['requests'] is not None else '–'} | {r.get('rejected', 0)} |")
    lines += ["", f"## Import of {imp['records']} mixed records into the sandbox box at 2 req/s, burst 50", "",
              "| method | records | seconds | records/s | requests | reconciliation |", "|---|---:|---:|---:|---:|---|",
              f"| {imp['method']} | {imp['records']} | {imp['seconds']:.1f} | {imp['records'] / imp['seconds']:,.0f} | "
              f"{imp['requests']} | {'OK' if imp['reconciliation_ok'] else 'FAILED'} |", "", NOTES]
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

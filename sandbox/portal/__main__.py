"""``python -m sandbox.portal``: run a seeded cloud + box portal pair until Ctrl-C.

Example: ``python -m sandbox.portal --leads 2000 --rate 2 --burst 50 --fault QUERY_LIMIT_EXCEEDED:3``
prints the two webhook URLs (with their codes: this is a sandbox) and the cutoff; with ``--tls`` the
portals answer over HTTPS and a line ``ca: PATH`` names the certificate clients must trust.
The portals cost what the vendor measured (``PortalLimits``' defaults; each cost has its option);
``--free`` drops every simulated cost and keeps the limits.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from .faults import Faults
from .generator import start_pair
from .server import PortalLimits


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m sandbox.portal", description=__doc__.splitlines()[0])
    ap.add_argument("--companies", type=int, default=60)
    ap.add_argument("--contacts", type=int, default=150)
    ap.add_argument("--leads", type=int, default=400)
    ap.add_argument("--deals", type=int, default=200)
    ap.add_argument("--rate", type=float, default=2.0, help="leaky bucket drain, requests/s")
    ap.add_argument("--burst", type=int, default=50, help="leaky bucket size")
    vendor = PortalLimits()
    ap.add_argument("--operating-limit", type=float, default=vendor.operating_limit_s, metavar="SECONDS",
                    help="operating time each method may spend per window (default %(default)s)")
    ap.add_argument("--operating-window", type=float, default=vendor.operating_window_s, metavar="SECONDS",
                    help="the operating-time window, ten buckets (default %(default)s)")
    ap.add_argument("--count-cost-us", type=float, default=vendor.count_cost_s * 1e6,
                    help="offset paging: cost per counted row, µs (default %(default)s)")
    ap.add_argument("--page-cost", type=float, default=vendor.page_cost_s, metavar="SECONDS",
                    help="processing of one list page (default %(default)s)")
    ap.add_argument("--request-cost", type=float, default=vendor.request_cost_s, metavar="SECONDS",
                    help="each HTTP request's time outside the method (default %(default)s)")
    ap.add_argument("--add-cost", type=float, default=vendor.add_cost_s, metavar="SECONDS",
                    help="one crm.*.add (default %(default)s)")
    ap.add_argument("--update-cost", type=float, default=vendor.update_cost_s, metavar="SECONDS",
                    help="one crm.*.update (default %(default)s)")
    ap.add_argument("--import-item-cost", type=float, default=vendor.import_item_cost_s, metavar="SECONDS",
                    help="one crm.item.batchImport item (default %(default)s)")
    ap.add_argument("--free", action="store_true",
                    help="no simulated costs at all (the cost options are ignored); limits stay")
    ap.add_argument("--box-write-latency", type=float, default=0.0, metavar="SECONDS",
                    help="a slow box: each record written on the box takes this long (e.g. 0.1)")
    ap.add_argument("--no-batch-import", action="store_true", help="box without crm.item.batchImport")
    ap.add_argument("--fault", action="append", default=[], metavar="KIND[:TIMES[:METHOD]]",
                    help="inject a fault on the cloud portal (repeatable)")
    ap.add_argument("--box-missing-comments", type=int, default=0, metavar="N",
                    help="the box shows N fewer task comments than the backup had (one per task)")
    ap.add_argument("--tls", action="store_true",
                    help="serve HTTPS with a generated certificate (printed as 'ca: PATH'), as real portals do")
    ap.add_argument("--tls-dir", default=None, metavar="DIR",
                    help="where --tls writes the certificate and its key (default: a temporary directory)")
    return ap.parse_args(argv)


def limits_from(args: argparse.Namespace) -> tuple[PortalLimits, PortalLimits]:
    """(the cloud's limits, the box's): the same plan and costs, the box slower by its write latency."""
    plan = dict(rate=args.rate, burst=args.burst, operating_limit_s=args.operating_limit,
                operating_window_s=args.operating_window)
    limits = PortalLimits.free(**plan) if args.free else PortalLimits(
        **plan, count_cost_s=args.count_cost_us / 1e6, page_cost_s=args.page_cost, request_cost_s=args.request_cost,
        add_cost_s=args.add_cost, update_cost_s=args.update_cost, import_item_cost_s=args.import_item_cost)
    return limits, dataclasses.replace(limits, write_latency_s=args.box_write_latency)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    limits, box_limits = limits_from(args)
    pair = start_pair(limits=limits, box_limits=box_limits, companies=args.companies, contacts=args.contacts, leads=args.leads,
                      deals=args.deals, batch_import=not args.no_batch_import, tls=args.tls, tls_dir=args.tls_dir)
    with_comments = [t for t in pair.dataset.tasks if t["comments"]]
    for task in with_comments[:args.box_missing_comments]:
        pair.box.store.delete_comment(task["ID"], task["comments"][0][0])
    for spec in args.fault:
        kind, times, method = Faults.parse(spec)
        pair.cloud.faults.inject(kind, times=times, method=method)
    print(f"cloud webhook: {pair.cloud_webhook}\nbox webhook:   {pair.box_webhook}\ncutoff: {pair.cutoff.isoformat()}",
          flush=True)
    if pair.ca_file is not None:
        print(f"ca: {pair.ca_file}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        pair.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

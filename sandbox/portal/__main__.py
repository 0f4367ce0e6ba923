"""``python -m sandbox.portal``: run a seeded cloud + box portal pair until Ctrl-C.

Example: ``python -m sandbox.portal --leads 2000 --rate 2 --burst 50 --fault QUERY_LIMIT_EXCEEDED:3``
prints the two webhook URLs (with their codes: this is a sandbox) and the cutoff; with ``--tls`` the
portals answer over HTTPS and a line ``ca: PATH`` names the certificate clients must trust.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from .faults import Faults
from .generator import start_pair
from .server import PortalLimits


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sandbox.portal", description=__doc__.splitlines()[0])
    ap.add_argument("--companies", type=int, default=60)
    ap.add_argument("--contacts", type=int, default=150)
    ap.add_argument("--leads", type=int, default=400)
    ap.add_argument("--deals", type=int, default=200)
    ap.add_argument("--rate", type=float, default=2.0, help="leaky bucket drain, requests/s")
    ap.add_argument("--burst", type=int, default=50, help="leaky bucket size")
    ap.add_argument("--count-cost-us", type=float, default=2.0, help="simulated count cost per row, µs")
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
    args = ap.parse_args(argv)
    limits = PortalLimits(rate=args.rate, burst=args.burst, count_cost_s=args.count_cost_us / 1e6)
    box_limits = dataclasses.replace(limits, write_latency_s=args.box_write_latency)
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

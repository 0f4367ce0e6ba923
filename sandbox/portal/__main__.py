"""``python -m sandbox.portal``: run a seeded cloud + box portal pair until Ctrl-C.

Example: ``python -m sandbox.portal --leads 2000 --rate 2 --burst 50 --fault QUERY_LIMIT_EXCEEDED:3``
prints the two webhook URLs (with their codes: this is a sandbox) and the cutoff.
"""

from __future__ import annotations

import argparse
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
    ap.add_argument("--no-batch-import", action="store_true", help="box without crm.item.batchImport")
    ap.add_argument("--fault", action="append", default=[], metavar="KIND[:TIMES[:METHOD]]",
                    help="inject a fault on the cloud portal (repeatable)")
    ap.add_argument("--box-missing-comments", type=int, default=0, metavar="N",
                    help="the box shows N fewer task comments than the backup had (one per task)")
    args = ap.parse_args(argv)
    limits = PortalLimits(rate=args.rate, burst=args.burst, count_cost_s=args.count_cost_us / 1e6)
    pair = start_pair(limits=limits, companies=args.companies, contacts=args.contacts, leads=args.leads,
                      deals=args.deals, batch_import=not args.no_batch_import)
    with_comments = [t for t in pair.dataset.tasks if t["comments"]]
    for task in with_comments[:args.box_missing_comments]:
        pair.box.store.delete_comment(task["ID"], task["comments"][0][0])
    for spec in args.fault:
        kind, times, method = Faults.parse(spec)
        pair.cloud.faults.inject(kind, times=times, method=method)
    print(f"cloud webhook: {pair.cloud_webhook}\nbox webhook:   {pair.box_webhook}\ncutoff: {pair.cutoff.isoformat()}",
          flush=True)
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

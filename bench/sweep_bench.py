"""Loop-guard benchmark: a two-way sync storm (seed 000) with and without the quarantine.

Run: ``/work/venv/bin/python bench/sweep_bench.py --sweeps 30``

One sandbox cloud/box pair with a naive website sync (the box's outgoing webhook → the website →
writes back into the cloud: a copy of every new lead, a stamp on every update). Straggler sweeps
move cloud → box, ``--sweeps`` times back to back, once with the loop guard as shipped
(quarantine after ``--k`` changes) and once with the quarantine out of reach (the peer: a sync
with no loop guard but the same request budgets). Reported per contender: requests to both
portals and by the website, website writes, sweeps that still bounced, the last sweep's requests.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pydantic import SecretStr  # noqa: E402

from flows.actions import ActionContext  # noqa: E402
from flows.config import config_from_dict  # noqa: E402
from flows.sweeps import StragglerSweeper  # noqa: E402
from journal.store import Journal  # noqa: E402
from journal.sweeps import quarantined  # noqa: E402
from sandbox.portal import PortalLimits, start_pair  # noqa: E402
from sandbox.website import start_website  # noqa: E402


def _quiet(pair, website, timeout: float = 10.0) -> None:
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        now = (pair.box.portal.events_sent, pair.box.portal.events_failed, website.acted, website.requests)
        if now == last:
            return
        last = now
        time.sleep(0.3)


def run(k: int, sweeps: int, leads: int, work: Path) -> dict:
    # limits high enough that the website's own writes are never refused (a refused write would end a
    # bounce by luck, not by design; the real integration platform retried, seed 000)
    limits = PortalLimits(rate=100.0, burst=1000)
    with start_pair(companies=10, contacts=20, leads=leads, deals=20, users=6, tasks=1, limits=limits) as pair:
        website = start_website(pair.cloud_webhook, pair.box_webhook, "")
        website.application_token = pair.box.portal.add_outbound_webhook(website.handler_url,
                                                                         ["ONCRMLEADADD", "ONCRMLEADUPDATE"])
        with website:
            config = config_from_dict({
                "migration": {"name": "bench", "portal": pair.cloud.base_url, "box_portal": pair.box.base_url},
                "journal": {"url": f"sqlite:///{work / f'journal-{k}.db'}", "out_dir": str(work / f"out-{k}")},
                "crm_delta": {"cutoff": pair.cutoff.isoformat()},
                "sweeps": {"quarantine_changes": k, "quarantine_window_minutes": max(120, k * 15),
                           "requests_per_sweep": 500, "requests_per_day": 100_000},
                "notices": {"dry_run": True, "out_dir": str(work / f"notices-{k}")},
                "secrets": {"cloud_webhook": {"env": "X"}, "box_webhook": {"env": "Y"}}}, source="bench")
            journal = Journal(config.journal.url)
            run_, _ = journal.open_run(name="bench", portal=pair.cloud.base_url, mode="cutover", timezone="UTC",
                                       config_snapshot={})
            ctx = ActionContext(config=config, journal=journal, run_id=run_.id, step_id="3.1", mode="cutover",
                                work_dir=work, secrets={"cloud_webhook": SecretStr(pair.cloud_webhook),
                                                        "box_webhook": SecretStr(pair.box_webhook)})
            sweeper = StragglerSweeper(ctx, config.sweeps)
            r0 = pair.cloud.portal.requests + pair.box.portal.requests
            bounced, last = 0, None
            t0 = time.monotonic()
            for _ in range(sweeps):
                before = website.acted
                last = sweeper.sweep_once()
                _quiet(pair, website)
                bounced += website.acted > before
            seconds = time.monotonic() - t0
            return {"portal_requests": pair.cloud.portal.requests + pair.box.portal.requests - r0,
                    "website_requests": website.requests, "website_writes": website.acted,
                    "bouncing_sweeps": bounced, "last_sweep_requests": last.requests if last else None,
                    "quarantined": sum(len(v) for v in quarantined(journal, run_.id).values()),
                    "seconds": round(seconds, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweeps", type=int, default=20)
    ap.add_argument("--leads", type=int, default=100)
    ap.add_argument("--k", type=int, default=4, help="quarantine after more than K changes (the shipped default)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        guarded = run(args.k, args.sweeps, args.leads, Path(tmp))
        unguarded = run(10**6, args.sweeps, args.leads, Path(tmp))
    cols = list(guarded)
    print(f"# Loop guard: {args.sweeps} sweeps, two-way website sync, {args.leads} leads\n")
    print(f"Command: `python bench/sweep_bench.py --sweeps {args.sweeps} --leads {args.leads} --k {args.k}`  ")
    print(f"Machine: {platform.platform()}, {os.cpu_count()} CPU, Python {platform.python_version()}\n")
    print("| contender | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name, r in (("loop guard (K=%d)" % args.k, guarded), ("no quarantine (peer)", unguarded)):
        print(f"| {name} | " + " | ".join(str(r[c]) for c in cols) + " |")
    total = lambda r: r["portal_requests"] + r["website_requests"]  # noqa: E731
    print(f"\nrequests, guarded / unguarded: {total(guarded) / max(1, total(unguarded)):.2f}; website writes "
          f"{guarded['website_writes']} vs {unguarded['website_writes']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``cloud2box demo``: the whole runbook on embedded defaults.

Ephemeral Prefect, a SQLite journal in ./cloud2box-demo/, the sandbox portal and servers on
loopback, and a scripted customer who confirms the manual steps and signs the gates through
Prefect's resume API, as a person would in the UI.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from flows.sandbox_services import start_sandbox

DEMO_POLL_S = 1  # short pause polling keeps the demo to a few minutes


def write_demo_config(out: Path, sections: dict) -> Path:
    """Write the config the demo runs with; it is an ordinary config file a person can read."""
    import tomllib

    lines = [
        "# Written by `cloud2box demo`: the sandbox on loopback, a SQLite journal, short pause polling.",
        "[migration]",
        'name = "demo"',
        f'portal = "{sections.get("portal", "http://127.0.0.1")}"',
        f'box_portal = "{sections.get("box_portal", "")}"',
        'timezone = "Europe/Moscow"',
        'contact = "Alex Engineer <alex@example.invalid>"',
        "",
        "[journal]",
        f'url = "sqlite:///{out / "journal.db"}"',
        f'out_dir = "{out}"',
        "",
        "[prefect]",
        f"poll_interval_s = {DEMO_POLL_S}",
        "pause_timeout_s = 900",
        "",
    ]
    lines += sections.get("toml", [])
    path = out / "config.toml"
    text = "\n".join(lines) + "\n"
    tomllib.loads(text)  # the demo must never write a config it cannot read back
    path.write_text(text, encoding="utf-8")
    return path


def _start_prefect() -> None:
    """Start the ephemeral Prefect server once, before the flow and the customer both need it
    (two threads asking at once would start two servers on one database)."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return
    from prefect.server.api.server import SubprocessASGIServer

    SubprocessASGIServer().start(timeout=90)


def run_demo(out: Path) -> int:
    from flows.customer import ScriptedCustomer
    from flows.migration import SERVICES, migration
    from journal.export import downtime_window
    from journal.store import Journal

    started = time.monotonic()
    _start_prefect()
    with contextlib.ExitStack() as stack:
        sandbox = stack.enter_context(start_sandbox(out))
        config_path = write_demo_config(out, sandbox.config)
        for name, value in sandbox.env.items():
            import os

            os.environ[name] = value
        SERVICES["*"] = sandbox.services
        print(f"cloud2box demo: config {config_path}; sandbox: {', '.join(sandbox.describe()) or 'manual steps only'}")
        customer = stack.enter_context(ScriptedCustomer(config=str(config_path)))
        state = migration(str(config_path), "rehearsal", True, return_state=True)
    journal = Journal(f"sqlite:///{out / 'journal.db'}")
    run = journal.runs()[-1]
    steps = journal.steps(run.id)
    start, end = downtime_window(journal, run.id)
    print(f"\nrun {run.id}: {run.status}; {len([s for s in steps if s.outcome == 'done'])} steps done, "
          f"{len(journal.signoffs(run.id))} gates signed, {len(customer.answered)} prompts answered by the scripted customer")
    if start and end:
        print(f"user downtime (2.10 → 2.12): {(end - start).total_seconds():.1f} s")
    for name in ("journal.csv", "journal.md"):
        print(f"  {out / name}")
    print(f"demo took {time.monotonic() - started:.0f} s")
    if not state.is_completed():
        print(f"demo failed: {state.message}")
        return 1
    return 0

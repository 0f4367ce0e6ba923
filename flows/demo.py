"""``cloud2box demo``: the whole runbook on embedded defaults.

Ephemeral Prefect, a SQLite journal in ./cloud2box-demo/, the sandbox portal and servers on
loopback, and a scripted customer who confirms the manual steps and signs the gates through
Prefect's resume API, as a person would in the UI.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from flows.sandbox_services import start_sandbox

DEMO_POLL_S = 1  # short pause polling keeps the demo to a few minutes


def write_demo_config(out: Path, sandbox) -> Path:
    """Write the config the demo runs with; it is an ordinary config file a person can read."""
    import tomllib

    lines = [
        "# Written by `cloud2box demo`: the sandbox on loopback, a SQLite journal, short pause polling.",
        "[migration]",
        'name = "demo"',
        f'portal = "{sandbox.config.get("portal", "http://127.0.0.1")}"',
        f'box_portal = "{sandbox.config.get("box_portal", "")}"',
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
        "[notices]",
        "dry_run = true  # the demo has no real users: notices are written to files",
        "",
    ]
    lines += sandbox.toml
    if sandbox.secrets:
        lines += ["[secrets]", *sandbox.secrets, ""]
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
    """The rehearsal, then the cutover planned from it; prints what happened and forecast vs actual."""
    from flows.customer import ScriptedCustomer
    from flows.migration import SERVICES, migration
    from journal.store import Journal

    started = time.monotonic()
    _start_prefect()
    states = {}
    with contextlib.ExitStack() as stack:
        sandbox = stack.enter_context(start_sandbox(out))
        config_path = write_demo_config(out, sandbox)
        os.environ.update(sandbox.env)  # the sandbox's secrets, referenced by name from the config
        SERVICES["*"] = sandbox.services
        print(f"cloud2box demo: config {config_path}")
        for line in sandbox.describe():
            print(f"  sandbox: {line}")
        customer = stack.enter_context(ScriptedCustomer(config=str(config_path)))
        for mode in ("rehearsal", "cutover"):
            print(f"\n=== {mode} ===")
            states[mode] = migration(str(config_path), mode, True, return_state=True)
            if not states[mode].is_completed():
                break
    journal = Journal(f"sqlite:///{out / 'journal.db'}")
    runs = {r.mode: r for r in journal.runs()}
    for mode, run in runs.items():
        _print_run(journal, run, out)
    if "cutover" in runs:
        _print_forecast_vs_actual(journal, runs["cutover"].id, out)
        summaries = sorted((out / "notices" / runs["cutover"].id).glob("*-summary.md"))
        if summaries:
            print(f"final summary for the users: {summaries[-1]}")
        print(f"auditor's report of the cutover: {out / 'report.html'}")
    print(f"\n{len(customer.answered)} prompts answered by the scripted customer; demo took "
          f"{time.monotonic() - started:.0f} s; files in {out}")
    failed = [m for m, st in states.items() if not st.is_completed()]
    if failed:
        print(f"demo failed in the {failed[0]}: {states[failed[0]].message}")
        return 1
    return 0


def _print_run(journal, run, out: Path) -> None:
    from journal.chain import verify_run
    from journal.export import downtime_window

    steps = journal.steps(run.id)
    start, end = downtime_window(journal, run.id)
    auto = [s for s in steps if s.action != "manual" and s.outcome == "done"]
    print(f"\n{run.mode} run {run.id}: {run.status}; {len([s for s in steps if s.outcome == 'done'])} steps done "
          f"({len(auto)} automated), {len(journal.signoffs(run.id))} gates signed")
    for s in auto:
        print(f"  {s.step_id} {s.title}: {s.notes}")
    if start and end:
        print(f"  user downtime (2.10 → 2.12): {(end - start).total_seconds():.1f} s")
    print(f"  journal: {verify_run(journal, run.id).summary()}")


def _print_forecast_vs_actual(journal, cutover_run_id: str, out: Path) -> None:
    from journal.forecast import compare, human_duration, recorded_forecast

    forecast = recorded_forecast(journal, cutover_run_id)
    if forecast is None:
        return
    rows = compare(forecast, journal, cutover_run_id)
    lines = ["| step | kind | forecast P50 | forecast P90 | actual | error |", "|---|---|---|---|---|---|"]
    for r in rows:
        err = f"{r['error_pct']:+.0f} %" if r["error_pct"] is not None else ""
        lines.append(f"| {r['step']} | {r['kind']} | {human_duration(r['p50_s'])} | {human_duration(r['p90_s'])} | "
                     f"{human_duration(r['actual_s'])} | {err} |")
    text = f"# Cutover: forecast (from rehearsal {forecast.rehearsal_run_id}) vs actual\n\n" + "\n".join(lines) + "\n"
    (out / "forecast-vs-actual.md").write_text(text, encoding="utf-8")
    print("\ncutover forecast vs actual (automated steps; all steps in forecast-vs-actual.md):")
    for r in rows:
        if r["kind"] == "automated":
            print(f"  {r['step']}: forecast {human_duration(r['p50_s'])} (P90 {human_duration(r['p90_s'])}), "
                  f"actual {human_duration(r['actual_s'])}")

"""The ``cloud2box`` command line: parses arguments and calls a flow or a journal function.

Prefect is imported only by the commands that run flows, after the environment is set, so the
demo can choose an ephemeral server and ``journal`` commands work without Prefect at all.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import traceback
from pathlib import Path

from connectors.errors import MigrationError

DEMO_DIR = Path("cloud2box-demo")


def _journal_from(args):
    from journal.store import Journal

    if args.journal_url:
        return Journal(args.journal_url)
    if args.config:
        from flows.config import journal_chain_key, load_config

        config = load_config(args.config)
        # the chain key, when the config names one: writes stay keyed, verify checks the keys
        return Journal(config.journal.url, chain_key=journal_chain_key(config))
    demo_db = DEMO_DIR / "journal.db"
    if demo_db.exists():
        return Journal(f"sqlite:///{demo_db.resolve()}")
    raise MigrationError("no journal given", fix="pass --config FILE or --journal-url URL")


def _latest_run_id(journal) -> str:
    runs = journal.runs()
    if not runs:
        raise MigrationError("the journal has no runs yet", fix="run a migration or the demo first")
    return runs[-1].id


def cmd_journal(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from journal.export import SUMMARY_COLUMNS, export_run, journal_frame

    journal = _journal_from(args)
    if args.journal_cmd == "verify":
        return _verify_journal(journal, args)
    if args.journal_cmd == "list":
        table = Table(title="migration runs")
        for col in ("run", "name", "mode", "status", "created (UTC)", "attempts"):
            table.add_column(col)
        for r in journal.runs():
            table.add_row(r.id, r.name, r.mode, r.status, f"{r.created_at:%Y-%m-%d %H:%M:%S}", str(r.attempts))
        Console().print(table)
        return 0
    run_id = args.run or _latest_run_id(journal)
    if args.journal_cmd == "show":
        run = journal.get_run(run_id)
        df = journal_frame(journal, run_id)
        table = Table(title=f"{run.name} — {run.mode} — run {run.id} — {run.status}")
        for col in ["phase"] + SUMMARY_COLUMNS:
            table.add_column(col, overflow="fold")
        for _, row in df.iterrows():
            table.add_row(*("" if row[c] is None or row[c] != row[c] else str(row[c]) for c in ["phase"] + SUMMARY_COLUMNS))
        console = Console()
        console.print(table)
        for s in journal.signoffs(run_id):
            console.print(f"gate {s.phase}: {s.decision} by {s.signer} ({s.role}) at {s.signed_at:%Y-%m-%d %H:%M:%S} UTC"
                          + (f" — {s.comment}" if s.comment else ""))
        if run.status_detail:
            console.print(f"[bold]{run.status}[/bold]: {run.status_detail}")
        return 0
    paths = export_run(journal, run_id, args.out)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def _verify_journal(journal, args) -> int:
    """``journal verify``: every run (or ``--run``), then the anchors. Exit 0 intact, 1 tampered or an
    anchor differs, 3 nothing wrong found but not everything proven (unchained, keys not checked)."""
    from journal.anchor import check_anchor, current_anchor, parse_anchors
    from journal.chain import verify_all, verify_run

    results = [verify_run(journal, args.run)] if args.run else verify_all(journal)
    for result in results:
        print(result.summary())
    print(f"journal: {current_anchor(journal).short} ({len(results)} run(s) verified)")
    differs = False
    if args.anchor:
        try:
            anchors = parse_anchors(args.anchor)
        except (OSError, ValueError) as exc:
            raise MigrationError(f"--anchor: {exc}", fix="give the file [journal] anchor wrote, one of its JSON "
                                                       "lines, or the 'runs=N head=HEX' of a notice") from None
        for check in (check_anchor(journal, a) for a in anchors):
            print(check.summary())
            differs |= not check.ok
    else:
        print("no --anchor given: a cut tail or a deleted last run leaves no trace inside the journal; check it "
              "against an anchor kept elsewhere (--anchor FILE_OR_VALUE)")
    if differs or not all(r.ok for r in results):
        return 1
    return 0 if all(r.proven for r in results) else 3


class _KnownFailureFilter(logging.Filter):
    """Drops the traceback from log records of a known failure (a :class:`MigrationError`): its
    message and fix say what to do, and Prefect would print the same traceback once per task,
    subflow and flow, with the useful sentence last. ``--debug`` keeps them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], MigrationError):
            record.exc_info, record.exc_text = None, None
        return True


def _quiet_known_failures() -> None:
    flt = _KnownFailureFilter()
    for name in ["", *logging.Logger.manager.loggerDict]:
        if name == "" or name.split(".")[0] == "prefect":
            for handler in logging.getLogger(name).handlers:
                handler.addFilter(flt)


def _print_outcome(state) -> int:
    """The run's outcome; a known failure ends with its message and, on the last line, its fix."""
    from connectors.secrets import redact

    if state.is_completed():
        print(f"migration completed: {state.result()}")
        return 0
    exc = state.result(raise_on_failure=False) if state.is_failed() else None
    if isinstance(exc, MigrationError):
        print(f"migration stopped: {redact(exc.message)}", file=sys.stderr)
        if exc.fix:
            print(f"fix: {redact(exc.fix)}", file=sys.stderr)
    else:
        print(f"migration stopped: {state.type.value}: {redact(state.message or '')}", file=sys.stderr)
    return 1


def cmd_run(args) -> int:
    from flows.migration import check_setup, migration

    check_setup(args.config)  # one pass: schema, secrets, runbook, what its automated steps need
    if not os.environ.get("PREFECT_API_URL"):
        # a temporary server of our own: its telemetry heartbeat only adds SQLite lock errors to the output
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if not args.debug:
        _quiet_known_failures()
    state = migration(str(Path(args.config).resolve()), args.mode, args.new_run, return_state=True)
    return _print_outcome(state)


def cmd_serve(args) -> int:
    if not os.environ.get("PREFECT_API_URL"):
        print("note: PREFECT_API_URL is not set, so deployments go to a temporary server the UI cannot see.\n"
              "      Start `prefect server start` and export PREFECT_API_URL=http://127.0.0.1:4200/api first.",
              file=sys.stderr)
    from prefect import serve

    from flows.deployments import build_deployments
    from flows.migration import check_setup

    check_setup(args.config)

    serve(*build_deployments(str(Path(args.config).resolve())))
    return 0


def cmd_demo(args) -> int:
    out = Path(args.out).resolve()
    if out.exists() and not args.keep:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.prefect_api:
        # The demo runs on an ephemeral Prefect server of its own, whatever the shell points at.
        os.environ.pop("PREFECT_API_URL", None)
        os.environ.setdefault("PREFECT_HOME", str(out / "prefect-home"))
        os.environ.setdefault("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "true")
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no calls home from a closed network
        os.environ.setdefault("PREFECT_SERVER_DATABASE_TIMEOUT", "30")  # the ephemeral server's SQLite on a busy box
    else:
        os.environ["PREFECT_API_URL"] = args.prefect_api
    from flows.demo import run_demo

    return run_demo(out)


def cmd_report(args) -> int:
    from journal.report import write_report

    journal = _journal_from(args)
    paths = write_report(journal, args.run or _latest_run_id(journal), args.out)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def cmd_forecast(args) -> int:
    from journal.forecast import forecast_from

    journal = _journal_from(args)
    runbook = section = presync = None
    if args.config:
        from checklists.runbook import load_runbook
        from flows.config import load_config

        config = load_config(args.config)
        runbook, section = load_runbook(config.runbook.path), config.forecast
        if config.presync.enabled:  # the cutover's pre-sync: 2.11 from the rehearsal's passes
            presync = (config.presync.interval_minutes * 60, config.presync.overlap_seconds)
    start = None
    if args.start:
        import datetime as dt

        start = dt.datetime.fromisoformat(args.start)
        if start.tzinfo is None:
            raise MigrationError(f"--start {args.start} has no UTC offset", fix="write it as 2026-12-04T18:00+03:00")
    forecast = forecast_from(journal, args.from_run, backup_size=args.backup_size, delta_records=args.delta_records,
                             start=start, runbook=runbook, section=section, presync=presync)
    print(forecast.to_markdown())
    return 0


def cmd_issues(args) -> int:
    from journal import triage

    journal = _journal_from(args)
    run_id = args.run or _latest_run_id(journal)
    if args.issues_cmd == "add":
        if not args.title:
            raise MigrationError("issues add needs --title", fix='cloud2box issues add --title "users cannot log in" --by NAME')
        issue = triage.report_issue(journal, run_id, title=args.title, reported_by=args.by or "engineer",
                                    detail=args.detail or "", severity=args.severity, step_id=args.step, source="cli")
        print(f"issue #{issue.id} [{issue.severity}] {issue.title}")
        return 0
    if args.issues_cmd == "resolve":
        if args.id and triage.get_issue(journal, args.id).severity == "fire":
            return _override_fire(args, journal)
        if not (args.id and args.resolution and args.by):
            raise MigrationError("issues resolve needs --id, --by and --resolution",
                                 fix='cloud2box issues resolve --id 3 --by NAME --resolution "what fixed it"')
        issue = triage.resolve_issue(journal, args.id, resolved_by=args.by, resolution=args.resolution,
                                     root_cause=args.root_cause)
        print(f"issue #{issue.id} resolved by {issue.resolved_by}")
        return 0
    for issue in triage.issues(journal, run_id):
        print(f"#{issue.id} [{issue.severity}] {issue.status:8} step {issue.step_id or '-':5} {issue.title}"
              + (f" — resolved: {issue.resolution}" if issue.resolution else ""))
    return 0


def _override_fire(args, journal) -> int:
    """``issues resolve`` on a fire: a reason, and the consent of a customer of the roster as the
    one-time code sent to them (flows.signing.override_fire), typed here."""
    from flows.config import load_config_and_secrets
    from flows.signing import override_fire

    usage = (f'cloud2box issues resolve --config config.toml --id {args.id} --by YOUR_NAME --signer CUSTOMER '
             '--reason "why it may be closed"')
    if not args.config:
        raise MigrationError(f"issue #{args.id} is a fire: closing it by hand needs a reason and a customer's consent, "
                             "asked through the roster of the config", fix=usage)
    if not (args.reason and args.by and args.signer):
        raise MigrationError(f"closing fire #{args.id} by hand needs --reason, --by (you, as the roster names you) and "
                             "--signer (the customer who consents; a one-time code is sent to them)", fix=usage)
    reader = None
    config, secrets, problems = load_config_and_secrets(args.config, prefect_reader=reader)
    if config is None:
        from connectors.errors import ConfigError

        raise ConfigError(args.config, problems)
    if any(p.contact in config.secrets and config.secrets[p.contact].prefect_secret for p in config.roster):
        from flows.run_context import _read_prefect_secret as reader

        config, secrets, _ = load_config_and_secrets(args.config, prefect_reader=reader)
    issue = override_fire(config, secrets, journal, issue_id=args.id, by=args.by, reason=args.reason,
                          signer=args.signer, read_code=_read_code)
    print(f"fire #{issue.id} closed by hand (override) by {issue.resolved_by}: {issue.resolution}")
    return 0


def _read_code(prompt: str) -> str:
    """The one-time code the customer gave: not echoed at a terminal, a line of stdin otherwise."""
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass(prompt, stream=sys.stderr)
    print(prompt, end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip()


def cmd_sweep(args) -> int:
    from journal import sweeps

    journal = _journal_from(args)
    run_id = args.run or _latest_run_id(journal)
    if args.sweep_cmd == "release":
        if not (args.entity and args.cloud_id and args.by):
            raise MigrationError("sweep release needs ENTITY CLOUD_ID and --by",
                                 fix="cloud2box sweep release lead 42 --by NAME")
        try:
            sweeps.release(journal, run_id, args.entity, args.cloud_id, by=args.by)
        except KeyError as exc:
            raise MigrationError(str(exc.args[0]), fix="cloud2box sweep list shows what is in quarantine") from None
        print(f"{args.entity} {args.cloud_id} released: the next sweep syncs it again")
        return 0
    text = sweeps.sweeps_markdown(journal, run_id)
    print(text or f"run {run_id} has no sweeps yet")
    return 0


def cmd_verify(args) -> int:
    """The post-migration checks now, outside a run's steps (journaled into the latest run). Exit 1
    when a fire-severity check failed or could not run."""
    from connectors.errors import ConfigError
    from flows.actions import ActionContext
    from flows.actions.verify import verify
    from flows.config import load_config_and_secrets
    from journal.store import Journal
    from journal.verification import verification_markdown

    config, secrets, problems = load_config_and_secrets(args.config)  # schema and secrets: one list
    if config is None or problems:
        raise ConfigError(args.config, problems)
    journal = Journal(config.journal.url)
    run_id = args.run or _latest_run_id(journal)
    ctx = ActionContext(config=config, secrets=secrets, journal=journal, run_id=run_id,
                        step_id=args.step, mode=journal.get_run(run_id).mode,
                        work_dir=Path(config.journal.out_dir) / "runs" / run_id)
    result, changes = verify(ctx)
    print(verification_markdown(result))
    print(f"\nissues opened: {changes['opened'] or 'none'}; resolved: {changes['resolved'] or 'none'}")
    unproven = [r.id for r in result.not_run if r.severity == "fire"]
    if unproven:  # a fire that could not be looked for is not known to be out
        print(f"not run, and a fire if it fails: {', '.join(unproven)}; give the access they need "
              "(see each reason above) and run cloud2box verify again")
    return 1 if result.fires or unproven else 0


def cmd_check(args) -> int:
    """Prove every credential and dependency of the config without changing anything: a table of
    ok / failed (with the fix) / skipped; exit 0 only when nothing failed."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from connectors.errors import ConfigError
    from flows.access_check import run_checks
    from flows.config import load_config_and_secrets

    config, _, problems = load_config_and_secrets(args.config)
    if config is None:  # schema and secret problems together; a valid file gets a row per secret instead
        raise ConfigError(args.config, problems)
    reader = None
    if any(ref.prefect_secret for ref in config.secrets.values()):
        from flows.run_context import _read_prefect_secret as reader
    report = run_checks(config, prefect_reader=reader, timeout_s=args.timeout)
    table = Table(title=f"cloud2box check — {args.config}")
    for col in ("check", "result", "finding", "fix"):
        table.add_column(col, overflow="fold")
    style = {"ok": "green", "failed": "bold red", "skipped": "yellow"}
    for r in report.rows:  # findings quote config keys like [box_host]: not rich markup
        table.add_row(escape(r.name), f"[{style[r.status]}]{r.status}[/]", escape(r.finding), escape(r.fix))
    Console(width=max(120, shutil.get_terminal_size().columns)).print(table)
    print(f"{report.summary()}" + ("" if report.ok else "; fix the failed checks and run cloud2box check again"))
    return 0 if report.ok else 1


def _journal_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="config file naming the journal")
    p.add_argument("--journal-url", help="SQLAlchemy URL of the journal")


def cmd_sandbox(args) -> int:
    """Start the sandbox on loopback, write a matching config, and keep it up until Ctrl-C."""
    import time

    from flows.demo import write_demo_config
    from flows.sandbox_services import start_sandbox

    import signal

    def _stop(*_):  # `kill` (SIGTERM) stops the sandbox as Ctrl-C does: its databases are dropped on the way out
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with start_sandbox(out) as sandbox:
        config_path = write_demo_config(out, sandbox)
        env_file = out / "sandbox.env"
        env_file.write_text("".join(f"export {k}={v}\n" for k, v in sandbox.env.items()), encoding="utf-8")
        env_file.chmod(0o600)
        print("cloud2box sandbox is up:")
        for line in sandbox.describe():
            print(f"  {line}")
        print(f"config: {config_path}\nsecrets (sandbox values): source {env_file}\n"
              f"then: cloud2box run --config {config_path} --mode rehearsal   (Ctrl-C here stops the sandbox)")
        try:
            deadline = time.monotonic() + args.hours * 3600
            while time.monotonic() < deadline:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cloud2box", description=__doc__.splitlines()[0])
    p.add_argument("--debug", action="store_true", help="show tracebacks of known failures too")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="run the whole runbook on the sandbox with a scripted customer")
    d.add_argument("--out", default=str(DEMO_DIR), help="where the journal and files go (default ./cloud2box-demo)")
    d.add_argument("--keep", action="store_true", help="keep what an earlier demo left in --out")
    d.add_argument("--prefect-api", help="use this Prefect server instead of an ephemeral one (watch it in the UI)")
    d.set_defaults(fn=cmd_demo)

    sb = sub.add_parser("sandbox", help="start the sandbox (cloud portal, box portal, backup delivery, SSH mirror)")
    sb.add_argument("action", choices=["up"])
    sb.add_argument("--out", default="cloud2box-sandbox", help="where the sandbox's files and config go")
    sb.add_argument("--hours", type=float, default=8, help="stop by itself after this long")
    sb.set_defaults(fn=cmd_sandbox)

    r = sub.add_parser("run", help="run a migration with a config file")
    r.add_argument("--config", required=True)
    r.add_argument("--mode", choices=["rehearsal", "cutover"], default="rehearsal")
    r.add_argument("--new-run", action="store_true", help="start a fresh journal run instead of resuming")
    r.set_defaults(fn=cmd_run)

    c = sub.add_parser("check", help="prove every credential and dependency of a config, changing nothing "
                                     "(exit 1 when a check failed)")
    c.add_argument("--config", required=True)
    c.add_argument("--timeout", type=float, default=20.0, help="seconds per remote call (default 20)")
    c.set_defaults(fn=cmd_check)

    s = sub.add_parser("serve", help="register this customer's deployments (migration/<customer>-rehearsal and "
                                     "-cutover, from [migration] name) and run what the UI starts; a run waiting "
                                     "for a person is suspended, no process held (README, team section)")
    s.add_argument("--config", required=True)
    s.set_defaults(fn=cmd_serve)

    j = sub.add_parser("journal", help="read the journal (no Prefect needed)")
    j.add_argument("journal_cmd", choices=["list", "show", "export", "verify"],
                   help="verify: prove no journal entry was edited, removed or reordered (exit 1 if one was or an "
                        "anchor differs, 3 if something could not be proven)")
    j.add_argument("--run", help="run id (default: the latest; verify: every run)")
    j.add_argument("--anchor", help="verify: an anchor kept away from the journal (the [journal] anchor file, its "
                                    "JSON line, or 'runs=N head=HEX' from a notice)")
    _journal_args(j)
    j.add_argument("--out", default=".", help="export: directory for journal.csv and journal.md")
    j.set_defaults(fn=cmd_journal)

    rp = sub.add_parser("report", help="the auditor's report of a run: HTML (printable) + CSV + Markdown")
    rp.add_argument("--run", help="run id (default: the latest)")
    _journal_args(rp)
    rp.add_argument("--out", default=".", help="directory for report.html, report.md and the CSV files")
    rp.set_defaults(fn=cmd_report)

    fc = sub.add_parser("forecast", help="forecast the cutover from a rehearsal's journal (P50/P90 per step)")
    fc.add_argument("--from", dest="from_run", required=True, help="the rehearsal's run id")
    fc.add_argument("--backup-size", type=float, help="bytes of the cutover backup (default: as in the rehearsal)")
    fc.add_argument("--delta-records", type=float, help="records to transfer after the cutoff (default: as rehearsed)")
    fc.add_argument("--start", help="when the cutover starts, ISO 8601 with offset (default: now)")
    _journal_args(fc)
    fc.set_defaults(fn=cmd_forecast)

    iss = sub.add_parser("issues", help="triage: list, add or resolve the issues of a run (a fire blocks gates)")
    iss.add_argument("issues_cmd", choices=["list", "add", "resolve"])
    iss.add_argument("--run", help="run id (default: the latest)")
    _journal_args(iss)
    iss.add_argument("--id", type=int, help="resolve: the issue number")
    iss.add_argument("--title", help="add: what is wrong, in the user's words")
    iss.add_argument("--detail")
    iss.add_argument("--severity", choices=["fire", "emergency", "sla"], help="add: override the triage rules")
    iss.add_argument("--step", help="add: the runbook step it was found at")
    iss.add_argument("--by", help="who reports / resolves it")
    iss.add_argument("--resolution", help="resolve: what fixed it")
    iss.add_argument("--reason", help="resolve a fire: why it may be closed by hand (an override)")
    iss.add_argument("--signer", help="resolve a fire: the customer of the roster who consents; a one-time code is "
                                      "sent to them, and you type it when they give it to you")
    iss.add_argument("--root-cause", help="resolve: why it happened")
    iss.set_defaults(fn=cmd_issues)

    v = sub.add_parser("verify", help="run the post-migration checks now (journaled into a run; exit 1 on a fire, "
                                      "or when a fire-severity check could not run)")
    v.add_argument("--config", required=True, help="the migration's config file")
    v.add_argument("--run", help="run id (default: the latest)")
    v.add_argument("--step", default="verify", help="the step to journal the checks under")
    v.set_defaults(fn=cmd_verify)

    sw = sub.add_parser("sweep", help="straggler sweeps: what they moved, who still works in the cloud, quarantine")
    sw.add_argument("sweep_cmd", choices=["list", "release"])
    sw.add_argument("entity", nargs="?", choices=["lead", "deal", "contact", "company"], help="release: the entity")
    sw.add_argument("cloud_id", nargs="?", help="release: the record's ID in the cloud")
    sw.add_argument("--run", help="run id (default: the latest)")
    sw.add_argument("--by", help="release: who releases it (journaled)")
    _journal_args(sw)
    sw.set_defaults(fn=cmd_sweep)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except MigrationError as exc:
        from connectors.secrets import redact

        if args.debug:
            traceback.print_exc()
        print(f"cloud2box: {redact(exc.message)}", file=sys.stderr)
        if exc.fix:
            print(f"fix: {redact(exc.fix)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cloud2box: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

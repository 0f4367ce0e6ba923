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

from connectors.outputs import write_private_text
from flows.sandbox_services import start_sandbox
from journal.events import EventKind

DEMO_POLL_S = 1  # short pause polling keeps the demo to a few minutes
DEMO_SWEEP_MIN = 0.05  # a straggler sweep every 3 s
DEMO_SWEEPS_SEEN = 2  # the scripted customer tests the box until this many sweeps moved the stragglers
DEMO_PRESYNC_MIN = 0.05  # a pre-sync pass every 3 s while phase 2 waits for people
# the demo's people (flows.customer.demo_answer chooses these names): name, role, party, told on failure
DEMO_ROSTER = [("Dana Demo", "Head of Sales", "customer", False),
               ("Alex Engineer", "Migration engineer", "contractor", True)]
DEMO_MIN_GAP_S = 3  # and no closer: the demo's minutes stand for days (the default 30 s guards a real portal)


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
        "[sweeps]",
        f"interval_minutes = {DEMO_SWEEP_MIN}  # the demo's 'days of testing' last seconds",
        f"min_gap_seconds = {DEMO_MIN_GAP_S}",
        "",
        "[presync]",
        f"interval_minutes = {DEMO_PRESYNC_MIN}  # the box follows the cloud every few seconds in the demo",
        f"min_gap_seconds = {DEMO_MIN_GAP_S}",
        "overlap_seconds = 5",
        "deleted_scan_minutes = 0.5",
        "",
    ]
    inbox = sandbox.services.get("inbox")
    if inbox is not None:  # who signs: the demo's people, told through their inboxes on loopback
        for name, role, party, engineer in DEMO_ROSTER:
            lines += ["[[roster]]", f'name = "{name}"', f'role = "{role}"', f'party = "{party}"',
                      f'contact = "{inbox.contact(name)}"  # read it at {inbox.page(name)}']
            lines += ["engineer = true  # told when a run fails", ""] if engineer else [""]
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
    from flows.migration import migration
    from journal.store import Journal

    started = time.monotonic()
    _start_prefect()
    states = {}
    with contextlib.ExitStack() as stack:
        sandbox = stack.enter_context(start_sandbox(out, cloud_costs=False))  # the runbook twice in minutes
        config_path = write_demo_config(out, sandbox)
        os.environ.update(sandbox.env)  # the sandbox's secrets, referenced by name from the config
        print(f"cloud2box demo: config {config_path}")
        for line in sandbox.describe():
            print(f"  sandbox: {line}")
        customer = stack.enter_context(ScriptedCustomer(answer=DemoPeople(sandbox, out).answer,
                                                        config=str(config_path)))
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
    prompts = _write_prompts(out, customer.answered)
    print(f"\n{len(customer.answered)} prompts answered by the scripted customer (as the UI showed them: {prompts}); "
          f"demo took {time.monotonic() - started:.0f} s; files in {out}")
    failed = [m for m, st in states.items() if not st.is_completed()]
    if failed:
        print(f"demo failed in the {failed[0]}: {states[failed[0]].message}")
        return 1
    return 0


class DemoPeople:
    """The demo's people: they answer like :func:`flows.customer.demo_answer`, and before confirming
    some manual steps they do on the sandbox what the step asks of them — what a real contractor
    and customer do on the real portals. The verification before 2.8 finds what is still undone
    (a user hired after the backup, the empty search index); they fix it, 2.9's checks pass again.
    During 3.1 some sales people keep working in the cloud; the sweeps move their records."""

    def __init__(self, sandbox, out: Path) -> None:
        self.pair = sandbox.services["crm"]
        self.box_host = sandbox.services["box_host"]
        self.box = self.pair.box.store  # people work in the box's admin UI: on the sandbox, its store
        self.journal_url = f"sqlite:///{out / 'journal.db'}"
        self.notes: dict[str, str] = {}

    def answer(self, prompt) -> dict:
        from flows.customer import demo_answer

        reply = demo_answer(prompt)
        if prompt.kind == "step":
            done = getattr(self, f"_step_{prompt.target.replace('.', '_')}", None)
            if done is not None:
                reply["notes"] = done(prompt)
        return reply

    def _step_2_6(self, prompt) -> str:
        if not self.box.sip_lines:  # connecting the office PBX is done in the box's admin UI (Telephony → Connect)
            self.box.add_sip_line("Office PBX (Asterisk)")
        return "telephony module: the office PBX (Asterisk) connected over SIP"

    def _step_2_8(self, prompt) -> str:
        fixed = []
        box_mails = {str(u.get("EMAIL", "")).lower() for u in self.box.users.values()}
        for u in self.pair.dataset.new_users:
            if u["EMAIL"].lower() not in box_mails:
                self.box.add_user({"EMAIL": u["EMAIL"], "NAME": u["NAME"], "LAST_NAME": u["LAST_NAME"],
                                  "UF_DEPARTMENT": [1]})
                fixed.append(f"invited {u['EMAIL']} (hired after the backup)")
        indexed = self.box_host.reindex_search()
        fixed.append(f"search reindexed ({indexed} items)")
        return "sales tested leads, deals and calls; the contractor fixed what the checks found: " + "; ".join(fixed)

    def _sales_in_cloud(self, what: str, n: int, *, name: str = "Client") -> None:
        import datetime as dt

        seller = self.pair.dataset.users[1]
        now = dt.datetime.now(dt.timezone.utc)
        for i in range(n):
            self.pair.cloud.store.add("lead", {"TITLE": f"{what} {i + 1}", "NAME": name, "STATUS_ID": "NEW",
                                               "ASSIGNED_BY_ID": seller["ID"], "CREATED_BY_ID": seller["ID"],
                                               "MODIFY_BY_ID": seller["ID"]}, now=now)

    def _passes_since(self, since, timeout_s: float = 120) -> int:
        """Wait (bounded) until a pre-sync pass of the running run that started after ``since`` is
        journaled (one that started before may have listed the cloud before the new records)."""
        import datetime as dt

        from journal.presync import passes
        from journal.store import Journal

        journal = Journal(self.journal_url)
        runs = [r for r in journal.runs() if r.status == "running"]  # the demo runs one migration at a time
        if not runs:
            return 0

        def after() -> list:
            return [e for e in passes(journal, runs[-1].id) if dt.datetime.fromisoformat(e.data["started_at"]) >= since]

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not after():
            time.sleep(0.5)
        return len(after())

    def _step_2_9(self, prompt) -> str:
        # the sales team still sells in the cloud while the box is tested; the pre-sync follows them
        import datetime as dt

        made_at = dt.datetime.now(dt.timezone.utc)
        self._sales_in_cloud("Lead made in the cloud during the box tests", 4)
        seen = self._passes_since(made_at)
        lag = "; the prompt showed the pre-sync's lag" if "**Pre-sync:**" in prompt.description else ""
        return f"the box is healthy; test data deleted; meanwhile {seen} pre-sync pass(es) followed the cloud{lag}"

    def _step_2_10(self, prompt) -> str:
        self._sales_in_cloud("Lead made in the cloud in the last minutes before the stop", 2)
        return "sales managers told to stop in the cloud"

    def _step_3_1(self, prompt) -> str:
        from journal.store import Journal
        from journal.sweeps import sweeps

        journal = Journal(self.journal_url)
        runs = [r for r in journal.runs() if r.status == "running"]  # the demo runs one migration at a time
        run = runs[-1].id if runs else None
        before = len(sweeps(journal, run)) if run else 0
        # a sales manager of another branch still works in the cloud
        self._sales_in_cloud("Lead from the cloud after the move", 3, name="Straggler")
        deadline = time.monotonic() + 90
        while run and time.monotonic() < deadline and len(sweeps(journal, run)) < before + DEMO_SWEEPS_SEEN:
            time.sleep(0.5)
        seen = len(sweeps(journal, run)) - before if run else 0
        return f"tested the box; meanwhile {seen} straggler sweep(s) ran and moved the cloud's new leads"


def _write_prompts(out: Path, answered: list) -> Path:
    """Every prompt the demo's people answered, as the resume form showed it, to prompts.md: what the
    customer is asked, and how it fits the form (each links its phase's full review)."""
    parts = ["# The prompts of the demo, in the order they were answered", ""]
    for prompt, _ in answered:
        parts += [f"## {prompt.flow_run_name} · {prompt.key}", "", prompt.description, "", "---", ""]
    return write_private_text(out / "prompts.md", "\n".join(parts))


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
    moved = [e for e in journal.events(run.id, EventKind.CRM_RECONCILIATION) if (e.data or {}).get("per_entity")]
    if moved:
        rows = moved[-1].data["per_entity"]
        print(f"  CRM delta at {moved[-1].step_id}, per kind (in the delta / on the box as in the cloud): "
              + ", ".join(f"{k} {v['delta']}/{v['matched']}" for k, v in rows.items()))
    for e in journal.events(run.id, EventKind.VERIFICATION):
        failed = [r["id"] for r in e.data["results"] if r["status"] == "failed"]
        print(f"  verification before {e.step_id}: {e.data['summary']}" + (f" — {', '.join(failed)}" if failed else ""))
    passes = journal.events(run.id, EventKind.PRESYNC)
    freeze = next((s for s in reversed(steps) if s.action == "transfer_crm_delta" and s.outcome == "done"), None)
    stop = next((s for s in reversed(steps) if s.downtime == "start" and s.outcome == "done"), None)
    if passes:
        moved = sum(x.data["created"] + x.data["updated"] for x in passes)
        print(f"  pre-sync during 2.5–2.10: {len(passes)} pass(es), {moved} record(s) moved before the users stopped")
    if freeze and stop and freeze.actual_end and stop.actual_end:
        print(f"  automated part of the downtime (2.10 confirmed → 2.11 done): "
              f"{(freeze.actual_end - stop.actual_end).total_seconds():.1f} s, "
              f"{int((freeze.counters or {}).get('records', 0))} record(s) moved in the freeze")
    done = journal.events(run.id, EventKind.SWEEP)
    if done:
        moved = sum(x.data["created"] + x.data["updated"] for x in done)
        people = {p["user_id"] for x in done for p in x.data["stragglers"]}
        print(f"  straggler sweeps during 3.1: {len(done)}, {moved} record(s) moved, {len(people)} person(s) still in "
              f"the cloud told to use the box, {sum(x.data['requests'] for x in done)} request(s)")
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
    legend = ("*kind*: automated — an action of cloud2box runs the step; manual — a person does it and confirms it. "
              "*P50*, *P90*: durations the step should not exceed with 50 % and 90 % likelihood. *error*: "
              "(P50 − actual) ÷ actual — +162 % means the forecast P50 was 2.62 × the actual duration (faster than "
              "forecast), −40 % that the step took longer than forecast (1.67 × the P50). The same table with the "
              "forecast's method per step is in report.html.")
    text = (f"# Cutover: forecast (from rehearsal {forecast.rehearsal_run_id}) vs actual\n\n" + "\n".join(lines)
            + "\n\n" + legend + "\n")
    write_private_text(out / "forecast-vs-actual.md", text)
    print("\ncutover forecast vs actual (automated steps; all steps in forecast-vs-actual.md):")
    for r in rows:
        if r["kind"] == "automated":
            print(f"  {r['step']}: forecast {human_duration(r['p50_s'])} (P90 {human_duration(r['p90_s'])}), "
                  f"actual {human_duration(r['actual_s'])}")

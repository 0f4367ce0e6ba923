"""The cloud2box command line, as a user runs it: subprocesses, real files, real exit codes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from journal.store import Journal

CLI = [sys.executable, "-m", "flows.cli"]


def _cli(*args, cwd=None, env=None, timeout=120):
    return subprocess.run([*CLI, *args], cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)


def test_run_with_bad_config_exits_2_listing_every_problem(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[migration]\nportal = "nope"\n[journal]\nurl = "oracle://x"\n')
    res = _cli("run", "--config", str(bad))
    assert res.returncode == 2
    assert "3 problem(s)" in res.stderr and "[migration.name]" in res.stderr and "[journal.url]" in res.stderr
    assert "Traceback" not in res.stderr


def test_journal_show_and_export(tmp_path):
    url = f"sqlite:///{tmp_path / 'j.db'}"
    journal = Journal(url)
    import datetime as dt

    run, _ = journal.open_run(name="acme", portal="https://p", mode="rehearsal", timezone="Europe/Berlin",
                              config_snapshot={})
    ex = journal.start_step(run.id, step_id="1.1", phase=1, seq=0, title="Deploy the production environment",
                            owner="contractor", urgency="medium", action="manual", planned_duration_s=60,
                            planned_start=dt.datetime.now(dt.timezone.utc))
    journal.finish_step(ex, outcome="done", actor="Alex")
    journal.record_signoff(run.id, phase=1, signer="Dana", role="CEO", decision="approve", comment="ok")

    res = _cli("journal", "show", "--journal-url", url, "--run", run.id, env={"COLUMNS": "220"})
    assert res.returncode == 0, res.stderr
    assert "Deploy the production" in res.stdout and "Alex" in res.stdout and "approve by Dana (CEO)" in res.stdout
    res = _cli("journal", "export", "--journal-url", url, "--out", str(tmp_path / "exp"))
    assert res.returncode == 0, res.stderr
    df = pd.read_csv(tmp_path / "exp" / "journal.csv")
    assert list(df["step"].astype(str)) == ["1.1"] and df.loc[0, "actor"] == "Alex"
    assert "| 1 | Dana | CEO | approve |" in (tmp_path / "exp" / "journal.md").read_text()
    res = _cli("journal", "show", "--journal-url", url, "--run", "nope")
    assert res.returncode == 2 and "no migration run 'nope'" in res.stderr


def test_verify_fails_when_a_fire_check_could_not_run(tmp_path):
    """No access to the portals or the box: nothing failed, but the fire checks could not look."""
    url = f"sqlite:///{tmp_path / 'j.db'}"
    Journal(url).open_run(name="acme", portal="https://p", mode="rehearsal", timezone="UTC", config_snapshot={})
    config = tmp_path / "c.toml"
    config.write_text(f'[migration]\nname = "acme"\nportal = "https://p.example"\n[journal]\nurl = "{url}"\n'
                      f'out_dir = "{tmp_path / "out"}"\n')
    res = _cli("verify", "--config", str(config))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "not run, and a fire if it fails: crm-counts, users" in res.stdout and "Traceback" not in res.stderr


@pytest.mark.slow
@pytest.mark.prefect
def test_a_known_failure_ends_with_its_fix_and_no_traceback(tmp_path):
    """Step 1.1 cannot reach the box host: one short message, the fix on the last line of ours."""
    (tmp_path / "known_hosts").touch()
    config = tmp_path / "c.toml"
    config.write_text(f"""[migration]
name = "unreachable"
portal = "https://p.example"
[journal]
url = "sqlite:///{tmp_path / 'j.db'}"
out_dir = "{tmp_path / 'out'}"
[box_host]
host = "127.0.0.1"
port = 1
username = "nobody"
known_hosts = "{tmp_path / 'known_hosts'}"
[box_host.db]
password_secret = ""
[runbook]
manual_steps = ["1.2", "1.5", "2.3", "2.4", "2.11"]
""")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # a temporary server, as a newcomer has
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="90")

    def _cli(*args, **kw):
        return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=300)

    res = _cli("run", "--config", str(config))
    assert res.returncode == 1, res.stderr[-2000:]
    assert "Traceback" not in res.stderr + res.stdout
    ours = [line for line in res.stderr.splitlines() if line.startswith(("migration stopped:", "fix:"))]
    # the run's access check at its start finds it, before any step
    assert ours[0].startswith("migration stopped: 1 access check(s) failed before the run's start: box host SSH: "
                              "nobody@127.0.0.1:1: nothing answers on port 1")
    assert ours[-1].startswith("fix: box host SSH: check that 127.0.0.1 is up, that sshd listens on port 1")
    debug = _cli("--debug", "run", "--config", str(config))
    assert debug.returncode == 1 and "Traceback" in debug.stderr


@pytest.mark.slow
@pytest.mark.prefect
def test_demo_runs_the_whole_runbook_end_to_end(tmp_path):
    """README's first command: the whole runbook on an ephemeral Prefect server of its own."""
    out = tmp_path / "demo"
    res = _cli("demo", "--out", str(out), env={"PREFECT_API_URL": ""}, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    # issue 15: every prompt the people answered fits the resume modal (no table over three columns),
    # links its phase's full review, and carries the short sections (checks, pre-sync, sweeps)
    from flows.forms import MAX_PROMPT_COLUMNS
    from tests.flows.prompt_tables import table_widths

    prompts = (out / "prompts.md").read_text()
    assert table_widths(prompts) and max(table_widths(prompts)) <= MAX_PROMPT_COLUMNS
    answered = int(re.search(r"(\d+) prompts answered", res.stdout).group(1))
    assert prompts.count("\n## ") == answered and prompts.count("/artifacts/artifact/") == answered
    assert all(s in prompts for s in ("**Verification:**", "**Pre-sync:**", "**Straggler sweeps:**", "*fix:*"))
    df = pd.read_csv(out / "journal.csv", dtype={"step": str})
    assert len(df) == 21 and set(df["outcome"]) == {"done"}
    assert list(df["step"]) == [f"{p}.{i}" for p, n in ((1, 6), (2, 12), (3, 3)) for i in range(1, n + 1)]
    md = (out / "journal.md").read_text()
    assert md.count("| approve |") == 3 and "User downtime:" in md
    for mode in ("rehearsal", "cutover"):
        assert re.search(rf"{mode} run \w+: completed; 21 steps done \(\d+ automated\), 3 gates signed", res.stdout)
    assert "journal intact" in res.stdout and "repaired: " in res.stdout
    assert (out / "report.html").exists() and (out / "forecast-vs-actual.md").exists()
    # issue 7: verification before 2.8 finds the undone (a fire blocks gate 2 until fixed), 2.9 passes;
    # sweeps during 3.1 move the straggler's leads; all in the journal and the report
    journal = Journal(f"sqlite:///{out / 'journal.db'}")
    for run in journal.runs():
        checks = {e.step_id: e.data for e in journal.events(run.id, "verification")}
        assert set(checks) == {"2.8", "2.9", "gate-2", "3.2", "gate-3"}
        assert all(r["status"] == "passed" for key in ("2.9", "gate-2", "3.2", "gate-3")
                   for r in checks[key]["results"])
        assert any(r["status"] == "failed" for r in checks["2.8"]["results"])
        sweeps = journal.events(run.id, "sweep")
        assert len(sweeps) >= 2 and sum(e.data["created"] for e in sweeps) >= 3
        assert any(e.data["stragglers"] for e in sweeps)
        # issue 16: the pre-sync ran from 2.5 until 2.10 and followed the cloud; 2.11 moved only the rest
        passes = journal.events(run.id, "presync")
        assert passes and {e.step_id for e in passes} <= {"2.5", "2.6", "2.7", "2.8", "2.9", "2.10"}
        freeze = next(s for s in journal.steps(run.id) if s.step_id == "2.11")
        assert freeze.evidence["presync"] and freeze.evidence["reconciliation_ok"]
        assert freeze.counters["records"] < sum(e.data["records"] for e in passes)
        assert all(not e.data["failures"] for e in passes)
        assert "the prompt showed the pre-sync's lag" in next(s for s in journal.steps(run.id) if s.step_id == "2.9").notes
    report = (out / "report.md").read_text()
    assert "## Verification before step 2.9" in report and "## Verification before the gate of phase 2" in report
    assert "## Straggler sweeps" in report
    assert re.search(r"straggler sweeps during 3.1: \d+, \d+ record\(s\) moved", res.stdout)
    assert re.search(r"pre-sync during 2.5–2.10: \d+ pass\(es\)", res.stdout)
    assert re.search(r"automated part of the downtime \(2.10 confirmed → 2.11 done\): [\d.]+ s", res.stdout)


def test_run_refuses_an_automated_step_without_its_config_and_names_the_way_out(tmp_path):
    from flows.actions import register

    from checklists.runbook import load_runbook

    RUNBOOK = Path(__file__).resolve().parents[2] / "checklists" / "runbook.toml"
    rb = RUNBOOK.read_text()
    (tmp_path / "rb.toml").write_text(rb.replace('action = "manual"', 'action = "needs_vault"', 1))
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[migration]\nname = "x"\nportal = "https://p.example"\n[runbook]\npath = "{tmp_path / "rb.toml"}"\n')
    from flows.migration import check_setup
    from connectors.errors import ConfigError

    register("needs_vault", requires=("vault",))(lambda ctx: None)
    with pytest.raises(ConfigError) as err:
        check_setup(str(cfg))
    first_manual = next(s.id for s in load_runbook(RUNBOOK).steps if s.is_manual)
    assert f"[vault] is missing, but step {first_manual} runs the automated action 'needs_vault'" in str(err.value)
    assert f'manual_steps = ["{first_manual}"]' in str(err.value)
    automated = [p.split("step ")[1].split(" ")[0] for p in err.value.problems]  # it and the shipped automated steps
    cfg.write_text(cfg.read_text() + f"manual_steps = {automated!r}\n".replace("'", '"'))
    check_setup(str(cfg))  # done by hand: accepted


def test_sandbox_up_serves_the_vendor_formats_and_writes_a_config_that_loads(tmp_path):
    import time

    import requests

    from flows.config import load_config

    proc = subprocess.Popen([*CLI, "sandbox", "up", "--out", str(tmp_path), "--hours", "0.02"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(line.startswith("then:") for line in lines):
            lines.append(proc.stdout.readline())
        config = load_config(tmp_path / "config.toml")
        env = dict(line.removeprefix("export ").strip().split("=", 1)
                   for line in (tmp_path / "sandbox.env").read_text().splitlines())
        code = env["C2B_SANDBOX_CLOUD_WEBHOOK_CODE"]
        assert code not in "".join(lines)  # printed addresses mask the webhook code
        answer = requests.get(f"{config.migration.portal}/rest/1/{code}/crm.lead.list.json",
                              params={"start": -1, "order[ID]": "ASC"}, timeout=10).json()
        # start=-1: no count query (the vendor answers total 0 and no next)
        assert len(answer["result"]) == 50 and answer.get("total", 0) == 0 and "next" not in answer
        wrong = requests.get(f"{config.migration.portal}/rest/1/wrong/crm.lead.list.json", timeout=10)
        assert wrong.status_code == 401 and wrong.json()["error"] == "NO_AUTH_FOUND"
        assert config.backup.info_url.startswith("http://127.0.0.1:")
        box_db = config.box_host.db.database
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0  # stopped cleanly: the sandbox box host's database is dropped
    import pymysql

    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW DATABASES LIKE %s", (box_db,))
            assert cur.fetchall() == ()
    finally:
        conn.close()


def test_sweep_list_and_release(tmp_path):
    url = f"sqlite:///{tmp_path / 'j.db'}"
    journal = Journal(url)
    run, _ = journal.open_run(name="acme", portal="https://p", mode="cutover", timezone="UTC", config_snapshot={})
    journal.add_event(run.id, "sweep", "sweep 1", data={"created": 2, "updated": 1, "echoes_skipped": 4, "requests": 30,
                                                         "stragglers": [{"user_id": "5", "name": "Ivan Petrov",
                                                                         "email": "ivan@corp.example", "records": 2,
                                                                         "last_at": "2026-11-23T10:00:00+00:00"}]})
    journal.add_event(run.id, "quarantine", "q", data={"entity": "lead", "cloud_id": "42", "changes": 6})
    listed = _cli("sweep", "list", "--journal-url", url)
    assert listed.returncode == 0, listed.stderr
    assert "1 sweep(s), 2 record(s) created" in listed.stdout and "Ivan Petrov" in listed.stdout
    assert "lead 42" in listed.stdout
    no_by = _cli("sweep", "release", "lead", "42", "--journal-url", url)
    assert no_by.returncode == 2 and "--by" in no_by.stderr
    released = _cli("sweep", "release", "lead", "42", "--by", "Alex", "--journal-url", url)
    assert released.returncode == 0 and "released" in released.stdout
    again = _cli("sweep", "release", "lead", "42", "--by", "Alex", "--journal-url", url)
    assert again.returncode == 2 and "not in quarantine" in again.stderr
    assert "lead 42" not in _cli("sweep", "list", "--journal-url", url).stdout

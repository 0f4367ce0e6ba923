"""`cloud2box serve`: the rehearsal and cutover deployments, started as the UI starts them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from flows.customer import ScriptedCustomer

pytestmark = [pytest.mark.prefect, pytest.mark.slow]


def test_served_deployment_runs_the_runbook_when_started_like_the_ui_does(prefect_server, make_config, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    from flows.config import load_config
    from journal.store import Journal

    config = make_config()
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--config", str(config)],
                            env={**os.environ, "PREFECT_API_URL": prefect_server}, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 90
        with get_client(sync_client=True) as client:
            while True:
                try:
                    deployments = {m: client.read_deployment_by_name(f"migration/{m}") for m in ("rehearsal", "cutover")}
                    break
                except ObjectNotFound:
                    assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
                    time.sleep(0.5)
        assert deployments["cutover"].parameters == {"config": str(config), "mode": "cutover"}
        assert deployments["rehearsal"].parameters["mode"] == "rehearsal"
        with ScriptedCustomer(config=str(config), poll_s=0.5) as customer:
            # what the UI's "Run" button does: create a flow run of the deployment; the served process runs it
            flow_run = run_deployment("migration/cutover", timeout=240, poll_interval=1)
        assert flow_run.state.is_completed(), (flow_run.state.message, (tmp_path / "serve.log").read_text()[-3000:])
        assert len(customer.answered) == 6
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    journal = Journal(load_config(config).journal.url)
    run = journal.runs()[-1]
    assert run.mode == "cutover" and run.status == "completed" and len(journal.steps(run.id)) == 4

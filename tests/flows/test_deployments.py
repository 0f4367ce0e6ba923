"""Deployments: one pair per customer, fixed parameters, tagged and named runs, one live run per
customer, retiring by Cancelling, and a process worker running a deployment from prefect.yaml."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from flows.customer import ScriptedCustomer, demo_answer
from flows.run_context import customer_slug

REPO = Path(__file__).resolve().parents[2]
NAME_RE = r"^{name} · {mode} · \d{{4}}-\d\d-\d\d \d\d:\d\d$"


@given(st.text(max_size=40))
def test_customer_slug_is_lower_case_letters_digits_and_dashes(name):
    slug = customer_slug(name)
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", slug), slug
    assert customer_slug(slug) == slug


def _wait(predicate, timeout_s: float, what: str, log: Path | None = None, proc=None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"process exited while waiting for {what}: {log.read_text()[-3000:] if log else ''}")
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}: {log.read_text()[-3000:] if log else ''}")


def _customer_runs(client, slug: str, **filters):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    return client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"customer:{slug}"]),
                                                                **filters))


def _stop(proc):
    """End a process group we started (the worker's or serve's flow run subprocesses included)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.mark.prefect
@pytest.mark.slow
def test_served_deployments_are_per_customer_fixed_tagged_and_named(prefect_server, make_config, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

    from flows.config import load_config
    from flows.deployments import build_deployments
    from journal.store import Journal

    config, other = make_config(name="Acme GmbH " + uuid.uuid4().hex[:6]), make_config()
    customer, other_customer = load_config(config).migration.name, load_config(other).migration.name
    slug, other_slug = customer_slug(customer), customer_slug(other_customer)
    for deployment in build_deployments(str(other)):  # another customer's pair, registered first
        deployment.apply()
    log_path = tmp_path / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--config", str(config)],
                            env={**os.environ, "PREFECT_API_URL": prefect_server}, stdout=open(log_path, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with get_client(sync_client=True) as client:
            def read_all():
                try:
                    return {(s, m): client.read_deployment_by_name(f"migration/{s}-{m}")
                            for s in (slug, other_slug) for m in ("rehearsal", "cutover")}
                except ObjectNotFound:
                    return None

            deployments = _wait(read_all, 90, "the deployments", log_path, proc)
            assert len({d.id for d in deployments.values()}) == 4  # the second customer overwrote nothing
            for (s, mode), d in deployments.items():
                path = str(config if s == slug else other)
                assert d.parameters == {"config": path}
                assert f"customer:{s}" in d.tags and d.enforce_parameter_schema
                props = d.parameter_openapi_schema["properties"]
                assert set(props) == {"config"}  # no mode to change: the deployment fixes it
                assert props["config"]["readOnly"] is True and props["config"]["enum"] == [path]
                assert d.global_concurrency_limit.limit == 1
                assert d.concurrency_options.collision_strategy.value == "CANCEL_NEW"

            # the Run dialog's custom parameters: another config is refused by the server ...
            cutover = deployments[(slug, "cutover")]
            with pytest.raises(PrefectHTTPStatusError) as refused:
                client.create_flow_run_from_deployment(cutover.id, parameters={"config": str(other)})
            assert refused.value.response.status_code == 409
            # ... and with the schema check switched off for the run, by the flow at its start
            response = client._client.post(f"/deployments/{deployments[(slug, 'rehearsal')].id}/create_flow_run",
                                           json={"parameters": {"config": str(other)},
                                                 "enforce_parameter_schema": False})
            response.raise_for_status()
            sneaky = response.json()["id"]
            state = _wait(lambda: (fr := client.read_flow_run(sneaky)).state.is_final() and fr.state, 120,
                          "the overridden run to end", log_path, proc)
            assert state.is_failed() and "was refused" in state.message, state.message
            assert Journal(load_config(other).journal.url).runs() == []  # nothing of the other customer ran

        with ScriptedCustomer(config=str(config), poll_s=0.5) as answering:
            flow_run = run_deployment(f"migration/{slug}-cutover", timeout=240, poll_interval=1)
        assert flow_run.state.is_completed(), (flow_run.state.message, log_path.read_text()[-3000:])
        assert len(answering.answered) == 6
        assert re.match(NAME_RE.format(name=re.escape(customer), mode="cutover"), flow_run.name), flow_run.name
        tag = f"customer:{slug}"
        with get_client(sync_client=True) as client:
            subflows = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run.id])))
            task_runs = client.read_task_runs(task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(
                any_=[flow_run.id])))
        assert tag in flow_run.tags
        assert subflows == []  # the phases are parts of the one run: Prefect suspends only a top-level run
        assert len(task_runs) > 4 and all(tag in t.tags for t in task_runs), [(t.name, t.tags) for t in task_runs]
    finally:
        _stop(proc)
    journal = Journal(load_config(config).journal.url)
    run = journal.runs()[-1]
    assert run.mode == "cutover" and run.status == "completed" and len(journal.steps(run.id)) == 4


@pytest.mark.prefect
@pytest.mark.slow
def test_a_second_start_of_the_same_customer_is_refused_and_the_first_stays_paused(prefect_server, make_config,
                                                                                    monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilterState, FlowRunFilterStateType

    from connectors.errors import FatalError
    from flows.config import load_config
    from flows.migration import migration
    from journal.store import Journal

    monkeypatch.setenv("CLOUD2BOX_CHROMIUM", "off")
    config = make_config()
    customer = load_config(config).migration.name
    slug = customer_slug(customer)
    first: dict = {}
    thread = threading.Thread(target=lambda: first.update(state=migration(str(config), "rehearsal",
                                                                          return_state=True)), daemon=True)
    thread.start()
    with get_client(sync_client=True) as client:
        paused = _wait(lambda: _customer_runs(client, slug, state=FlowRunFilterState(
            type=FlowRunFilterStateType(any_=["PAUSED"]))), 120, "the first run's pause")
        (parent,) = paused  # started without a deployment: it waits in its process

        second = migration(str(config), "cutover", return_state=True)  # any mode: one run per customer

        assert second.is_failed()
        exc = second.result(raise_on_failure=False)
        assert isinstance(exc, FatalError), exc
        assert str(parent.id) in exc.message and "already has a live run" in exc.message
        assert f"prefect flow-run cancel {parent.id}" in exc.fix
        assert re.match(NAME_RE.format(name=re.escape(customer), mode="rehearsal"), parent.name), parent.name
        assert client.read_flow_run(parent.id).state.is_paused()  # never cancelled, still waiting for its answer
    runs = Journal(load_config(config).journal.url).runs()
    assert [r.mode for r in runs] == ["rehearsal"]  # the refused start opened no journal run

    with ScriptedCustomer(answer=demo_answer, config=str(config), poll_s=0.3):
        thread.join(timeout=180)
    assert not thread.is_alive() and first["state"].is_completed(), first


@pytest.mark.prefect
def test_retiring_sends_a_live_run_to_cancelling_and_a_dead_one_to_cancelled(prefect_server):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    from flows.run_context import _retire_flow_run

    @flow(name="stale")
    def stale():
        pass

    @flow(name="retire")
    def retire(old: str, new: str):
        _retire_flow_run(old, superseded_by=new)

    gone = subprocess.Popen(["true"])
    gone.wait()
    with get_client(sync_client=True) as client:
        unknown = client.create_flow_run(stale, state=Running())  # no pid: its process may be alive
        dead = client.create_flow_run(stale, state=Running())
        client.update_flow_run(dead.id, infrastructure_pid=f"{socket.gethostname()}:{gone.pid}")
        retire(str(unknown.id), "new-run")
        retire(str(dead.id), "new-run")
        assert client.read_flow_run(unknown.id).state.type.value == "CANCELLING"
        assert client.read_flow_run(dead.id).state.type.value == "CANCELLED"


def _processes_of(flow_run_id) -> list[int]:
    """The pids of processes working on ``flow_run_id`` (the runner and the worker start each with
    PREFECT__FLOW_RUN_ID in its environment)."""
    marker = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker in (proc / "environ").read_bytes().split(b"\0"):
                    pids.append(int(proc.name))
            except OSError:  # gone meanwhile, or not ours to read
                continue
    return pids


@pytest.mark.prefect
@pytest.mark.slow
def test_a_process_worker_runs_the_prefect_yaml_deployment_holding_no_process_while_it_waits(
        prefect_server, make_config, tmp_path):
    """The worker starts the deployment's run; at each pause that nothing else needs the process for,
    the run is suspended and 0 processes of it are left; each answer starts it again, and the run
    goes on from the journal — each step once, with its one row — to the end."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilterState, FlowRunFilterStateType

    from flows.config import load_config
    from journal.events import EventKind
    from journal.store import Journal

    sign_key = uuid.uuid4().hex + uuid.uuid4().hex  # the codes' key outlives the process (journal/signers.py)
    config = make_config(extra='[signoff]\ncode_key_secret = "sign_code_key"\n'
                               '[secrets]\nsign_code_key = { env = "C2B_TEST_SIGN_CODE_KEY" }\n')
    slug = customer_slug(load_config(config).migration.name)
    pool = f"c2b-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "CLOUD2BOX_CONFIG": str(config),
           "CLOUD2BOX_CUSTOMER": slug, "CLOUD2BOX_HOME": str(REPO), "CLOUD2BOX_POOL": pool,
           "C2B_TEST_SIGN_CODE_KEY": sign_key}
    prefect_cli = [sys.executable, "-m", "prefect"]
    yaml_before = (REPO / "prefect.yaml").read_text()
    for args in (["work-pool", "create", "--type", "process", pool], ["--no-prompt", "deploy", "--all"]):
        done = subprocess.run([*prefect_cli, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (REPO / "prefect.yaml").read_text() == yaml_before  # deploying does not rewrite the operator's file

    log_path = tmp_path / "worker.log"
    worker = subprocess.Popen([*prefect_cli, "worker", "start", "--pool", pool, "--prefetch-seconds", "5"],
                              env={**env, "PREFECT_WORKER_QUERY_SECONDS": "1"}, cwd=tmp_path,
                              stdout=open(log_path, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(f"migration/{slug}-rehearsal")
            assert deployment.work_pool_name == pool and deployment.parameters == {"config": str(config)}
            flow_run = client.create_flow_run_from_deployment(deployment.id)
            paused = _wait(lambda: _customer_runs(client, slug, state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=["PAUSED"]))), 180, "the manual step's pause", log_path, worker)
            assert [p.id for p in paused] == [flow_run.id] and f"customer:{slug}" in paused[0].tags
            assert paused[0].state.name == "Suspended", paused[0].state
            waits: list[tuple[str, str, int]] = []  # (pause key, state, processes of the run) when answered

            def answer_when_no_process_is_left(prompt):
                """Answer like the demo's customer, but a suspended run only once its process has ended."""
                with get_client(sync_client=True) as own:
                    state = own.read_flow_run(prompt.flow_run_id).state
                alive = len(_processes_of(prompt.flow_run_id))
                if state.name == "Suspended" and alive:
                    return None  # asked again at the next poll
                waits.append((prompt.key, state.name, alive))
                return demo_answer(prompt)

            with ScriptedCustomer(answer=answer_when_no_process_is_left, config=str(config), poll_s=0.5) as answering:
                deadline = time.monotonic() + 400
                while not (state := client.read_flow_run(flow_run.id).state).is_final():
                    assert time.monotonic() < deadline, ("the run did not end", waits, log_path.read_text()[-3000:])
                    time.sleep(0.5)
            assert state.is_completed(), (state.message, answering.errors, log_path.read_text()[-3000:])
    finally:
        _stop(worker)
    journal = Journal(load_config(config).journal.url)
    (run,) = journal.runs()
    steps = journal.steps(run.id)
    assert sorted((s.step_id, s.attempt, s.outcome) for s in steps) == [
        ("1.1", 1, "done"), ("1.2", 1, "done"), ("2.1", 1, "done"), ("2.2", 1, "done")]
    # every wait but 2.2's is without a process (0 processes of the run when answered); 2.2 comes while
    # the users' downtime notices go on (2.1 started the downtime), so that process stays
    assert waits == [("step-1-1-attempt-1", "Suspended", 0), ("step-1-2-attempt-1", "Suspended", 0),
                     ("gate-1-attempt-1", "Suspended", 0), ("step-2-1-attempt-1", "Suspended", 0),
                     ("step-2-2-attempt-1", "Paused", 1), ("gate-2-attempt-1", "Suspended", 0)], waits
    suspended = [e.data["pause"] for e in journal.events(run.id, EventKind.WAIT) if e.data.get("suspended")]
    assert suspended == [key for key, state, _ in waits if state == "Suspended"]
    woken = [e for e in journal.events(run.id, EventKind.RESUME) if "woken" in e.message]
    assert len(woken) == len(suspended)
    verified = journal.events(run.id, EventKind.SIGN_VERIFIED)
    assert len(verified) == len(answering.answered) == len(waits)  # each answer taken once

"""The run's context: built once per run, shared by the phases and their tasks, never sent to Prefect's API."""

from __future__ import annotations

import pytest

from flows.customer import ScriptedCustomer, demo_answer
from flows.downtime import notifier_for
from flows.run_context import RunContext, build_setup
from journal.models import utcnow

SECRET = "wh-run-context-9q8w7e"


def _context(config_path) -> RunContext:
    setup = build_setup(str(config_path))
    return RunContext(journal=setup.journal, config=setup.config, secrets=setup.secrets, runbook=setup.runbook,
                      run_id="r-1", mode="rehearsal", started_at=utcnow(),
                      notifier=notifier_for(setup.config, setup.secrets, setup.journal, "r-1", "rehearsal"))


def test_a_logged_context_shows_no_config_and_no_secret(make_config, monkeypatch):
    monkeypatch.setenv("C2B_TEST_WEBHOOK", SECRET)
    config = make_config(extra='[secrets]\ncloud_webhook = { env = "C2B_TEST_WEBHOOK" }\n')
    run = _context(config)
    assert run.secrets["cloud_webhook"].get_secret_value() == SECRET
    assert repr(run) == "RunContext(run_id='r-1', mode='rehearsal')"


@pytest.mark.prefect
def test_a_run_loads_its_config_once_and_its_phases_share_the_context(prefect_server, make_config, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    import flows.run_context
    from flows.migration import migration

    loads: list[str] = []
    real_load = flows.run_context.load_config_and_secrets
    monkeypatch.setattr(flows.run_context, "load_config_and_secrets",
                        lambda path, **kw: loads.append(path) or real_load(path, **kw))
    config = make_config()
    with ScriptedCustomer(answer=demo_answer, config=str(config), poll_s=0.3) as customer:
        state = migration(str(config), "rehearsal", return_state=True)
    assert state.is_completed(), state.message
    assert not customer.errors, customer.errors
    assert loads == [str(config)]  # once per run, not once per step and task as before
    with get_client(sync_client=True) as client:
        subflows = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[state.state_details.flow_run_id])))
    assert subflows == []  # the phases share the flow run (and its context) instead of being subflows

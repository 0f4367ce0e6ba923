"""The run proves its access at its start and again right before the users' downtime: a failure
stops it there, before the downtime step is even journaled, with the fix in the state message."""

from __future__ import annotations

import socket

import pytest

from flows.customer import ScriptedCustomer, demo_answer
from journal.events import EventKind
from journal.store import Journal

pytestmark = pytest.mark.prefect


def _listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock


def _notice_target(port: int) -> str:
    return f'\n[notices]\nurls = ["json://127.0.0.1:{port}/hook"]\n'


def _journal(config) -> Journal:
    from flows.config import load_config

    return Journal(load_config(config).journal.url)


def _run(config, answer=demo_answer):
    from flows.migration import migration

    with ScriptedCustomer(answer=answer, config=str(config), poll_s=0.3) as customer:
        state = migration(str(config), "rehearsal", return_state=True)
    assert not customer.errors, customer.errors
    return state


def test_a_failed_check_at_the_start_stops_the_run_before_any_step(prefect_server, make_config):
    closed = _listener()
    port = closed.getsockname()[1]
    closed.close()  # nothing answers there now
    config = make_config(extra=_notice_target(port))
    state = _run(config)
    assert state.is_failed()
    assert "access check(s) failed before the run's start" in state.message
    assert f"127.0.0.1:{port}" in state.message and "accepts connections" in state.message  # the fix
    journal = _journal(config)
    run = journal.runs()[-1]
    assert run.status == "failed" and journal.steps(run.id) == []


def test_a_check_failing_before_the_downtime_stops_the_run_before_users_are_stopped(prefect_server, make_config):
    target = _listener()
    config = make_config(extra=_notice_target(target.getsockname()[1]))

    def answer(prompt):
        if prompt.key.startswith("gate-1"):  # the notice server goes away while phase 1 is signed off
            target.close()
        return demo_answer(prompt)

    state = _run(config, answer)
    assert state.is_failed() and "before the users' downtime" in state.message
    journal = _journal(config)
    run = journal.runs()[-1]
    assert run.status == "failed"
    assert [s.step_id for s in journal.steps(run.id)] == ["1.1", "1.2"]  # 2.1 (downtime start) never began
    checks = [e.message for e in journal.events(run.id) if e.kind == EventKind.PREFLIGHT]
    assert checks[0].startswith("access check (start):") and "0 failed" in checks[0]
    assert checks[-1].startswith("access check (before-downtime) failed")

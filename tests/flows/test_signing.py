"""Who signs (issue 15, items 4 and 5), against a real Prefect server and a real journal: the roster's
people answer the pauses, the customer with the one-time code sent to her inbox; wrong, reused and
expired codes are refused and asked again; a fire is closed by hand only with a reason and the
customer's code; the engineer is told when a run fails; a cutover without a roster does not start."""

from __future__ import annotations

import asyncio
import io
import re
import secrets
import time

import pytest

from connectors.errors import FatalError
from flows.actions import register
from flows.customer import ScriptedCustomer, demo_answer
from journal.events import EventKind
from journal.signers import codes_of
from journal.store import Journal
from journal.triage import issues

pytestmark = pytest.mark.prefect

PEOPLE = [{"name": "Dana Demo", "role": "Head of Sales", "party": "customer"},
          {"name": "Olga Owner", "role": "CFO", "party": "customer"},
          {"name": "Alex Engineer", "role": "Migration engineer", "party": "contractor", "engineer": True}]
CODE_RE = re.compile(r"one-time code:\*\* ([0-9]{8})")


@pytest.fixture(autouse=True)
def _no_pdf(monkeypatch):
    monkeypatch.setenv("CLOUD2BOX_CHROMIUM", "off")


def _run(config, answer, mode="rehearsal"):
    from flows.migration import migration

    with ScriptedCustomer(answer=answer, config=str(config), poll_s=0.3) as customer:
        state = migration(str(config), mode, return_state=True)
    return state, customer


def _journal(config) -> Journal:
    from flows.config import load_config

    return Journal(load_config(config).journal.url)


def _codes(inbox, name: str) -> list[str]:
    return [m.group(1) for msg in inbox.messages(name) if (m := CODE_RE.search(msg["message"]))]


def _code_for(inbox, name: str, key: str) -> str:
    for msg in reversed(inbox.messages(name)):
        if re.search(rf"^Reference: {re.escape(key)}$", msg["message"], re.MULTILINE):
            return CODE_RE.search(msg["message"]).group(1)
    raise AssertionError(f"no notice to {name} for {key}")


def _other_code(code: str) -> str:
    while (guess := f"{secrets.randbelow(10 ** 8):08d}") == code:
        pass
    return guess


def _everything_written(journal, run_id: str, out_dir) -> str:
    """The journal's rows, the run's files and Prefect's logs and artifacts, as one text."""
    from prefect import get_client

    texts = [f"{s.actor} {s.notes} {s.evidence} {s.error}" for s in journal.steps(run_id)]
    texts += [f"{s.signer} {s.role} {s.comment}" for s in journal.signoffs(run_id)]
    texts += [f"{e.message} {e.data}" for e in journal.events(run_id)]
    texts += [str({c.name: getattr(r, c.name) for c in r.__table__.columns}) for r in codes_of(journal, run_id)]
    texts += [p.read_text(errors="replace") for p in out_dir.rglob("*") if p.is_file() and p.suffix in
              (".md", ".csv", ".html", ".json", ".txt")]

    async def prefect_side():
        async with get_client() as client:
            logs = [log.message for log in await client.read_logs()]
            return logs + [f"{a.description} {a.data}" for a in await client.read_artifacts()]

    return "\n".join(texts + asyncio.run(prefect_side()))


def test_the_customer_confirms_with_her_code_and_the_journal_names_the_roster_person(prefect_server, make_config,
                                                                                       signer_inbox):
    config = make_config(roster=PEOPLE)
    seen = []

    def answer(prompt):
        seen.append(prompt)
        return demo_answer(prompt)

    before = {p["name"]: len(signer_inbox.messages(p["name"])) for p in PEOPLE}
    state, customer = _run(config, answer)
    assert state.is_completed(), state.message
    assert not customer.errors, customer.errors
    by_key = {p.key: p for p in seen}
    # the forms offer the roster's names: customers for a customer's step and a gate, contractors for theirs
    assert by_key["step-1-1-attempt-1"].choices["done_by"] == ("Alex Engineer",)
    assert "code" not in by_key["step-1-1-attempt-1"].fields  # a contractor's step needs no code
    assert by_key["step-1-2-attempt-1"].choices["done_by"] == ("Dana Demo", "Olga Owner")
    assert by_key["gate-1-attempt-1"].choices["signer"] == ("Dana Demo", "Olga Owner")
    assert {"code", "signer"} <= set(by_key["gate-1-attempt-1"].fields) and "role" not in by_key["gate-1-attempt-1"].fields
    assert "**Who signs:** Dana Demo (Head of Sales) or Olga Owner (CFO)" in by_key["gate-1-attempt-1"].description

    journal = _journal(config)
    run = journal.runs()[-1]
    steps = {s.step_id: s for s in journal.steps(run.id)}
    assert (steps["1.1"].actor, steps["1.2"].actor, steps["2.2"].actor) == ("Alex Engineer", "Dana Demo", "Dana Demo")
    assert [(s.signer, s.role) for s in journal.signoffs(run.id)] == [("Dana Demo", "Head of Sales")] * 2
    verified = [e.data for e in journal.events(run.id, EventKind.SIGN_VERIFIED)]
    assert [(v["signer"], v["how"]) for v in verified if v["pause"] == "gate-1-attempt-1"] == [
        ("Dana Demo", "one-time code checked")]
    assert len(verified) == 6 and not journal.events(run.id, EventKind.SIGN_REFUSED)

    # the person who must act is told: each eligible customer her own code, with the flow run's link
    new = {name: signer_inbox.messages(name)[n:] for name, n in before.items()}
    assert len(new["Dana Demo"]) == len(new["Olga Owner"]) == 5  # 1.2, 2.1, 2.2 and both gates
    assert len(new["Alex Engineer"]) == 1 and "one-time code" not in new["Alex Engineer"][0]["message"]
    dana = new["Dana Demo"][0]["message"]
    assert "Check the host" in dana and "/runs/flow-run/" in dana and "Reference: step-1-2-attempt-1" in dana
    dana_codes, olga_codes = _codes(signer_inbox, "Dana Demo")[-5:], _codes(signer_inbox, "Olga Owner")[-5:]
    assert len(set(dana_codes + olga_codes)) == 10  # one per person and prompt
    notices = journal.events(run.id, EventKind.PERSON_NOTICE)
    assert len(notices) == 11 and all(e.data["delivered"] for e in notices)
    codes = codes_of(journal, run.id)
    assert sorted((c.signer, c.status) for c in codes) == sorted(
        [("Dana Demo", "used")] * 5 + [("Olga Owner", "open")] * 5)

    # the codes never reach the journal, the run's files, Prefect's logs or artifacts: only their hashes
    from flows.config import load_config

    written = _everything_written(journal, run.id, load_config(config).journal.out_dir)
    leaks = [c for c in dana_codes + olga_codes if c in written]
    assert not leaks and "********" in written


def test_wrong_reused_and_expired_codes_and_a_contractor_are_refused_and_asked_again(prefect_server, make_config,
                                                                                     signer_inbox):
    from prefect.flow_runs import resume_flow_run

    ttl_s = 8
    config = make_config(roster=PEOPLE, extra=f"[signoff]\ncode_ttl_minutes = {ttl_s / 60}\n")
    contractor_refused: list[Exception] = []
    used: dict[str, str] = {}

    def answer(prompt):
        reply = demo_answer(prompt)
        if prompt.key == "step-1-2-attempt-1":  # a contractor picks a customer's step: the server refuses
            try:
                resume_flow_run(prompt.flow_run_id, run_input={**reply, "done_by": "Alex Engineer",
                                                               "code": _code_for(signer_inbox, "Dana Demo", prompt.key)})
            except Exception as exc:  # noqa: BLE001 — prefect's validation error
                contractor_refused.append(exc)
            reply["code"] = _other_code(_code_for(signer_inbox, "Dana Demo", prompt.key))  # then a wrong code
        elif prompt.key == "step-1-2-attempt-1-ask-2":
            reply["code"] = _code_for(signer_inbox, "Olga Owner", prompt.key)  # Olga's code, Dana's name
        elif prompt.key == "step-1-2-attempt-1-ask-3":
            reply["code"] = ""  # "my code is lost": a new one comes
        elif prompt.key == "step-1-2-attempt-1-ask-4":
            used["1.2"] = reply["code"] = _code_for(signer_inbox, "Dana Demo", prompt.key)
        elif prompt.key == "gate-1-attempt-1":
            reply["code"] = used["1.2"]  # a code already used
        elif prompt.key == "gate-2-attempt-1":
            time.sleep(ttl_s + 1)  # she answers after her code expired
            reply["code"] = _code_for(signer_inbox, "Dana Demo", prompt.key)
        return reply

    state, customer = _run(config, answer)
    assert state.is_completed(), state.message
    assert contractor_refused and "Alex Engineer" in str(contractor_refused[0])
    keys = [p.key for p, _ in customer.answered]
    assert keys[:6] == ["step-1-1-attempt-1", "step-1-2-attempt-1", "step-1-2-attempt-1-ask-2",
                        "step-1-2-attempt-1-ask-3", "step-1-2-attempt-1-ask-4", "gate-1-attempt-1"]
    assert "gate-1-attempt-2" in keys and keys[-2:] == ["gate-2-attempt-1", "gate-2-attempt-2"]
    ask_2 = next(p for p, _ in customer.answered if p.key == "step-1-2-attempt-1-ask-2")
    assert "Your last answer was not taken:" in ask_2.description and "not the one sent to Dana Demo" in ask_2.description

    journal = _journal(config)
    run = journal.runs()[-1]
    refused = [(e.data["pause"], e.data["reason"]) for e in journal.events(run.id, EventKind.SIGN_REFUSED)]
    assert [k for k, _ in refused] == ["step-1-2-attempt-1", "step-1-2-attempt-1-ask-2", "step-1-2-attempt-1-ask-3",
                                       "gate-1-attempt-1", "gate-2-attempt-1"]
    reasons = [r for _, r in refused]
    assert "not the one sent to Dana Demo" in reasons[0] and "not the one sent to Dana Demo" in reasons[1]
    assert "no code was given; a new code was sent" in reasons[2]
    assert "used already" in reasons[3] and "expired" in reasons[4]
    # the re-asks were told to the signers with the reason; nothing refused became a sign-off
    last = signer_inbox.messages("Dana Demo")[-1]["message"]
    assert "Your last answer was not taken:" in last and "expired" in last
    assert [(s.phase, s.signer) for s in journal.signoffs(run.id)] == [(1, "Dana Demo"), (2, "Dana Demo")]
    assert next(s for s in journal.steps(run.id) if s.step_id == "1.2").actor == "Dana Demo"


def test_a_fire_is_closed_by_hand_only_with_a_reason_and_the_customers_code(prefect_server, make_config,
                                                                          signer_inbox, monkeypatch, capsys):
    from flows.cli import main

    config = make_config(roster=PEOPLE)
    gate_prompts, outcomes = [], {}

    class CodeFromInbox(io.StringIO):
        """The engineer's terminal: the customer reads out the code she was sent (or a wrong one)."""

        def __init__(self, wrong: bool = False) -> None:
            super().__init__()
            self.wrong = wrong

        def isatty(self) -> bool:
            return False

        def readline(self, *args) -> str:
            code = _code_for(signer_inbox, "Dana Demo", "override-issue-1")
            return (_other_code(code) if self.wrong else code) + "\n"

    def resolve(*extra: str, stdin=None) -> int:
        if stdin is not None:
            monkeypatch.setattr("sys.stdin", stdin)
        return main(["issues", "resolve", "--config", str(config), "--id", "1", "--by", "Alex Engineer", *extra])

    def answer(prompt):
        reply = demo_answer(prompt)
        if prompt.target == "1.1":
            reply["issues"] = "Users cannot log in with their old password"
        if prompt.key == "gate-1-attempt-1":
            gate_prompts.append(prompt)
            outcomes["no reason"] = resolve()
            outcomes["not a customer"] = resolve("--reason", "r", "--signer", "Alex Engineer")
            outcomes["wrong code"] = resolve("--reason", "passwords reset by hand, checked with 3 users",
                                             "--signer", "Dana Demo", stdin=CodeFromInbox(wrong=True))
            outcomes["right code"] = resolve("--reason", "passwords reset by hand, checked with 3 users",
                                             "--signer", "Dana Demo", stdin=CodeFromInbox())
            reply["code"] = _other_code(_code_for(signer_inbox, "Dana Demo", prompt.key))  # so the gate asks again
        elif prompt.kind == "gate" and prompt.target == "1":
            gate_prompts.append(prompt)
        return reply

    state, customer = _run(config, answer)
    assert state.is_completed(), state.message
    assert outcomes == {"no reason": 2, "not a customer": 2, "wrong code": 2, "right code": 0}
    err = capsys.readouterr().err
    assert "needs --reason" in err and "no customer of the roster" in err and "fire #1 stays open" in err
    assert "A fire is open" in gate_prompts[0].description
    shown = gate_prompts[1].description
    assert "closed by hand" in shown and "agreed by Dana Demo (Head of Sales)" in shown
    assert "passwords reset by hand" in shown

    journal = _journal(config)
    run = journal.runs()[-1]
    (fire,) = [i for i in issues(journal, run.id) if i.severity == "fire"]
    assert fire.status == "overridden" and fire.resolved_by == "Alex Engineer"
    (override,) = journal.events(run.id, EventKind.ISSUE_OVERRIDE)
    assert (override.data["agreed_by"], override.data["reason"]) == ("Dana Demo",
                                                                     "passwords reset by hand, checked with 3 users")
    consent = [e for e in journal.events(run.id) if e.data.get("pause") == "override-issue-1"]
    assert [e.kind for e in consent] == ["sign-refused", "sign-verified"]
    assert [s.phase for s in journal.signoffs(run.id)] == [1, 2]


@register("test_broken_host")
def _broken_host(ctx):
    raise FatalError("the host check failed: disk too small", fix="grow the disk to 200 GB")


def test_the_engineer_is_told_when_the_run_fails(prefect_server, make_config, signer_inbox):
    config = make_config(roster=PEOPLE, action_1_2="test_broken_host")
    before = len(signer_inbox.messages("Alex Engineer"))
    state, _ = _run(config, demo_answer)
    assert state.is_failed()
    told = signer_inbox.messages("Alex Engineer")[before:]
    failed = [m for m in told if "stopped" in m["title"]]
    assert len(failed) == 1, told
    body = failed[0]["message"]
    assert "disk too small" in body and "grow the disk to 200 GB" in body and "/runs/flow-run/" in body
    assert not any("stopped" in m["title"] for m in signer_inbox.messages("Dana Demo"))  # not an engineer
    journal = _journal(config)
    run = journal.runs()[-1]
    (event,) = [e for e in journal.events(run.id, EventKind.PERSON_NOTICE) if e.data["notice"] == "run-failed"]
    assert event.data["to"] == "Alex Engineer" and event.data["delivered"]


def test_a_cutover_without_a_roster_does_not_start_and_a_rehearsal_takes_typed_names(prefect_server, make_config):
    config = make_config(roster=[])
    state, customer = _run(config, demo_answer, mode="cutover")
    assert state.is_failed() and "[roster] is empty" in state.message and not customer.answered
    state, customer = _run(config, demo_answer)
    assert state.is_completed(), state.message
    journal = _journal(config)
    run = journal.runs()[-1]
    assert journal.steps(run.id)[0].actor == "Alex Engineer (Contractor)"  # as typed
    unbound = journal.events(run.id, EventKind.SIGN_UNBOUND)
    assert len(unbound) == 6 and "not verified" in unbound[0].message


@pytest.mark.parametrize("case, reason", [
    ("suspendable", None),
    ("no deployment", "started without a deployment"),
    ("subflow", "does not suspend a subflow"),
    ("pre-sync", "the pre-sync goes on"),
    ("sweeps", "the straggler sweeps go on"),
    ("downtime", "downtime notices go on"),
    ("code of this process", "[signoff] code_key_secret is not set"),
    ("switched off", "suspend_while_waiting is off"),
])
def test_a_wait_keeps_its_process_only_when_something_needs_it(make_config, monkeypatch, case, reason):
    """Suspend (no process while a person thinks) unless Prefect cannot start the run again or work
    must go on meanwhile; the reason is what the log says."""
    import types
    import uuid

    import prefect.context

    from flows.config import load_config_and_secrets
    from flows.signing import process_hold, signers_for

    key = secrets.token_urlsafe(32)
    monkeypatch.setenv("C2B_TEST_SIGN_CODE_KEY", key)
    extra = '[secrets]\nsign_code_key = { env = "C2B_TEST_SIGN_CODE_KEY" }\n'
    if case != "code of this process":
        extra = '[signoff]\ncode_key_secret = "sign_code_key"\n' + extra
    config, resolved, problems = load_config_and_secrets(str(make_config(extra=extra)))
    assert not problems, problems
    if case == "switched off":
        config = config.model_copy(update={"prefect": config.prefect.model_copy(
            update={"suspend_while_waiting": False})})
    flow_run = types.SimpleNamespace(deployment_id=None if case == "no deployment" else uuid.uuid4(),
                                     parent_task_run_id=uuid.uuid4() if case == "subflow" else None)
    monkeypatch.setattr(prefect.context.FlowRunContext, "get", classmethod(
        lambda cls: types.SimpleNamespace(flow_run=flow_run)))
    busy = object()
    run = types.SimpleNamespace(config=config, secrets=resolved, presyncer=busy if case == "pre-sync" else None,
                                sweeper=busy if case == "sweeps" else None,
                                watcher=busy if case == "downtime" else None)
    hold = process_hold(run, signers_for(config, "customer"))
    assert (hold is None) if reason is None else (reason in hold), hold
    # a contractor's step needs no code: the process's own key does not hold it
    if case == "code of this process":
        assert process_hold(run, signers_for(config, "contractor")) is None

"""The forms' limits: the Prefect server (its JSON schema) and the flow (pydantic) refuse the same
answers, and whatever they accept the journal stores unchanged on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prefect.input.run_input import create_v2_schema
from prefect.utilities.schema_tools import validate
from pydantic import ValidationError

from connectors.secrets import redact
from flows.forms import GateSignOff, ManualStepInput, RollbackDecision
from journal.store import Journal
from journal.triage import issues, report_issue

FORMS = (ManualStepInput, GateSignOff, RollbackDecision)
# what people type, plus what must be refused: controls, NUL, bidi overrides, blanks, long runs
HOSTILE = st.text(alphabet=st.one_of(st.sampled_from("\x00\x07\t\n\r\x1b\x7f\x85\u202e\u2066 \u3000aZ=<#"),
                                     st.characters(codec="utf-8")), max_size=30)
LONG = st.integers(min_value=110, max_value=520).map(lambda n: "x" * n)
VALUE = st.one_of(HOSTILE, LONG, HOSTILE.map(lambda t: t + "\n" + "y" * 501), st.just("https://tickets.example/42"))


def _server_accepts(form, data: dict) -> bool:
    """What the Prefect server does with a resume: validate the input against the stored schema."""
    try:
        validate(data, create_v2_schema(form.__name__, model_base=form), raise_on_error=True)
        return True
    except Exception:  # noqa: BLE001 - prefect raises its own ValidationError wrapper
        return False


def _flow_accepts(form, data: dict) -> bool:
    try:
        form.model_validate(data)
        return True
    except ValidationError:
        return False


def _answer(form, value: str, field: str) -> dict:
    base = {ManualStepInput: {"outcome": "done", "done_by": "Anna Test"},
            GateSignOff: {"signer": "Anna Test", "role": "CEO", "decision": "approve"},
            RollbackDecision: {"decided_by": "Anna Test", "role": "CEO", "decision": "continue"}}[form]
    return {**base, field: value}


TEXT_FIELDS = [(f, name) for f in FORMS for name, info in f.model_fields.items() if info.annotation is str]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(TEXT_FIELDS), VALUE)
def test_the_server_and_the_flow_refuse_the_same_answers(form_field, value):
    form, field = form_field
    data = _answer(form, value, field)
    assert _server_accepts(form, data) == _flow_accepts(form, data), (form.__name__, field, value)


@pytest.mark.parametrize("field,value", [("done_by", "   "), ("done_by", "Anna\x00"), ("done_by", "x" * 121),
                                         ("done_by", "Anna\u202eatsiM"), ("done_by", "Anna\nBoss"),
                                         ("notes", "a\x1b[31m"), ("issues", "y" * 501),
                                         ("evidence_link", "javascript:alert(1)")])
def test_bad_answers_are_refused_before_the_person_leaves(field, value):
    data = _answer(ManualStepInput, value, field)
    assert not _server_accepts(ManualStepInput, data) and not _flow_accepts(ManualStepInput, data)


@pytest.mark.parametrize("outcome", [None, True, False, "", "Done", "maybe"])
def test_done_is_an_explicit_choice_without_a_default(outcome):
    """A forgotten tick once stopped a run: now the person picks done or not done, nothing else passes."""
    data = {k: v for k, v in _answer(ManualStepInput, outcome, "outcome").items() if v is not None}
    assert not _server_accepts(ManualStepInput, data) and not _flow_accepts(ManualStepInput, data)
    schema = create_v2_schema(ManualStepInput.__name__, model_base=ManualStepInput)
    assert "outcome" in schema["required"] and "default" not in schema["properties"]["outcome"]
    for choice in ("done", "not done"):
        assert _server_accepts(ManualStepInput, {**data, "outcome": choice})


def test_good_answers_pass():
    data = {"outcome": "done", "done_by": "Ольга Иванова-Петрова", "notes": "line 1\n\tline 2",
            "evidence_link": "https://tickets.example/42?x=1", "issues": "a\n" + "b" * 500}
    assert _server_accepts(ManualStepInput, data) and _flow_accepts(ManualStepInput, data)


ACCEPTED_NAME = st.text(st.characters(codec="utf-8"), min_size=1, max_size=120).filter(
    lambda t: _flow_accepts(GateSignOff, _answer(GateSignOff, t, "signer")))
ACCEPTED_TEXT = st.text(st.characters(codec="utf-8"), max_size=600).filter(
    lambda t: _flow_accepts(ManualStepInput, _answer(ManualStepInput, t, "issues")))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def journal(request, tmp_path):
    if request.param == "sqlite":
        return Journal(f"sqlite:///{tmp_path / 'j.db'}")
    return Journal(request.getfixturevalue("pg_url"))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(name=ACCEPTED_NAME, text=ACCEPTED_TEXT)
def test_what_a_form_accepts_the_journal_stores(journal, name, text):
    run, _ = journal.open_run(name="acme", portal="https://p", mode="rehearsal", timezone="UTC", config_snapshot={},
                              new=True)  # one run per example
    step = journal.start_step(run.id, step_id="2.1", phase=2, seq=0, title="t", owner="customer", urgency="high",
                              action="manual", planned_duration_s=60,
                              planned_start=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    row = journal.finish_step(step, outcome="done", actor=name, notes=text)
    journal.record_signoff(run.id, phase=2, signer=name, role=name, decision="approve", comment=text)
    for line in filter(None, (ln.strip() for ln in text.splitlines())):  # as flows.steps files them
        report_issue(journal, run.id, title=line, reported_by=name, step_id="2.1", source="form", severity="sla")
    assert (row.actor, row.notes or "") == (redact(name), redact(text))
    signoff = journal.signoffs(run.id)[-1]
    assert (signoff.signer, signoff.role, signoff.comment or "") == (redact(name), redact(name), redact(text))
    filed = [i.title for i in issues(journal, run.id)]
    assert filed == [redact(ln.strip()) for ln in text.splitlines() if ln.strip()]


# -- the forms of a run with a roster (flows/signing.py) ------------------------------------------

ROSTER_NAME = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1, max_size=40).filter(
    lambda t: t.strip() == t and t.strip() and not any(c in t for c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"))


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(names=st.lists(ROSTER_NAME, min_size=1, max_size=3, unique=True), stranger=ROSTER_NAME,
       code=st.one_of(st.text("0123456789", min_size=8, max_size=8), st.just(""), VALUE))
def test_a_signed_form_offers_only_the_roster_and_takes_only_a_code_shaped_answer(names, stranger, code):
    from flows.config import RosterEntry
    from flows.signing import Signers, signed_form

    people = tuple(RosterEntry(name=n, role="CFO", party="customer", contact="json://127.0.0.1/x") for n in names)
    for base, name_field, extra in ((GateSignOff, "signer", {"decision": "approve"}),
                                    (ManualStepInput, "done_by", {"outcome": "done"})):
        form = signed_form(base, Signers("customer", people), name_field)
        assert "role" not in form.model_fields and list(form.model_fields).index("code") == \
            list(form.model_fields).index(name_field) + 1
        for name in names:
            data = {**extra, name_field: name, "code": code}
            shaped = code == "" or (len(code) == 8 and code.isdigit())
            assert _server_accepts(form, data) == _flow_accepts(form, data) == shaped, (name, code)
        if stranger not in names:  # a name that is not on the roster is no choice of the form
            data = {**extra, name_field: stranger, "code": "12345678"}
            assert not _server_accepts(form, data) and not _flow_accepts(form, data)

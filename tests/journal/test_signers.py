"""One-time codes: single use, expiring, bound to signer and prompt, kept only as a keyed hash; the
notice that carries one delivers it and journals it masked."""

from __future__ import annotations

import datetime as dt
import secrets

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from journal.chain import verify_run
from journal.configuration import NoticesSection
from journal.events import EventKind
from journal.signers import CODE_DIGITS, CODE_MASK, CodeBook, PersonNotifier, codes_of
from journal.store import Journal

T0 = dt.datetime(2026, 12, 4, 9, 0, tzinfo=dt.timezone.utc)
TTL = dt.timedelta(minutes=60)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def journal(request, tmp_path):
    if request.param == "sqlite":
        return Journal(f"sqlite:///{tmp_path / 'j.db'}")
    return Journal(request.getfixturevalue("pg_url"))


def _run(journal) -> str:
    run, _ = journal.open_run(name="acme", portal="https://p.example", mode="cutover", timezone="UTC",
                              config_snapshot={}, new=True)
    return run.id


def _journal_text(journal, run_id: str) -> str:
    rows = [str({c.name: getattr(r, c.name) for c in r.__table__.columns}) for r in codes_of(journal, run_id)]
    rows += [f"{e.message} {e.data}" for e in journal.events(run_id)]
    return "\n".join(rows)


DIGITS = st.text(alphabet="0123456789", min_size=CODE_DIGITS, max_size=CODE_DIGITS)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(guess=DIGITS, signer=st.sampled_from(["Dana Demo", "Ольга Иванова", "O'Brien, Pat"]))
def test_a_code_is_taken_once_by_its_signer_for_its_prompt_and_nothing_else_is(journal, guess, signer):
    run_id, clock = _run(journal), Clock()
    book = CodeBook(journal, clock=clock)
    code, expires = book.issue(run_id, "gate-1-attempt-1", signer, TTL)
    assert len(code) == CODE_DIGITS and code.isdigit() and expires == T0 + TTL
    if guess != code:
        assert not book.check(run_id, "gate-1-attempt-1", signer, guess).ok
    assert not book.check(run_id, "gate-1-attempt-2", signer, code).ok  # another prompt
    assert not book.check(run_id, "gate-1-attempt-1", signer + " Jr", code).ok  # another signer
    assert book.check(run_id, "gate-1-attempt-1", signer, f"{code[:4]} {code[4:]}").ok  # as a person types it
    again = book.check(run_id, "gate-1-attempt-1", signer, code)
    assert not again.ok and "used already" in again.reason
    # the journal keeps the keyed hash, the expiry and the use; never the code
    (row,) = codes_of(journal, run_id)
    assert (row.status, row.signer, row.used_at, len(row.code_hash)) == ("used", signer, T0, 64)
    assert code not in _journal_text(journal, run_id)
    assert verify_run(journal, run_id).ok  # a chained table like every other


def test_expired_superseded_and_other_process_codes_are_refused(journal):
    run_id, clock = _run(journal), Clock()
    book = CodeBook(journal, clock=clock)
    old, _ = book.issue(run_id, "step-1-2-attempt-1", "Dana Demo", TTL)
    new, _ = book.issue(run_id, "step-1-2-attempt-1", "Dana Demo", TTL)
    assert "newer code" in book.check(run_id, "step-1-2-attempt-1", "Dana Demo", old).reason
    clock.now = T0 + TTL
    expired = book.check(run_id, "step-1-2-attempt-1", "Dana Demo", new)
    assert not expired.ok and "expired" in expired.reason and "new code" in expired.reason
    clock.now = T0
    # a code made by another process (another key) is void here: the resumed run sends new ones
    other = CodeBook(journal, key=secrets.token_bytes(32), clock=clock)
    assert not other.check(run_id, "step-1-2-attempt-1", "Dana Demo", new).ok
    assert "no code" in book.check(run_id, "step-1-2-attempt-1", "Dana Demo", "").reason
    assert "8 digits" in book.check(run_id, "step-1-2-attempt-1", "Dana Demo", "12ab").reason
    assert [r.status for r in codes_of(journal, run_id)] == ["superseded", "open"]


def test_the_person_gets_the_code_and_the_journal_a_masked_copy(tmp_path):
    from sandbox.inbox import start_inbox

    journal = Journal(f"sqlite:///{tmp_path / 'j.db'}")
    run_id = _run(journal)
    code, expires = CodeBook(journal).issue(run_id, "gate-2-attempt-1", "Dana Demo", TTL)
    with start_inbox() as inbox:
        sent = PersonNotifier(journal, run_id, NoticesSection(), context={"name": "acme"}).send(
            "sign-request", to="Dana Demo", role="Head of Sales", party="customer", url=inbox.contact("Dana Demo"),
            code=code, expires_at=expires, what="the sign-off of phase 2 — Cutover", verb="sign off a phase",
            action="Approve or reject.", link="http://ui.example/runs/flow-run/42", refused=None,
            ref="gate-2-attempt-1", mode="cutover")
        (message,) = inbox.messages("Dana Demo")
    assert sent.delivered and sent.target.startswith("json://127.0.0.1")
    assert f"one-time code:** {code}" in message["message"] and "http://ui.example/runs/flow-run/42" in message["message"]
    (event,) = journal.events(run_id, EventKind.PERSON_NOTICE)
    assert event.data["delivered"] and event.data["with_code"] and CODE_MASK in event.data["body"]
    assert code not in _journal_text(journal, run_id)


def test_an_undeliverable_notice_is_journaled_as_failed(tmp_path):
    journal = Journal(f"sqlite:///{tmp_path / 'j.db'}")
    run_id = _run(journal)
    sent = PersonNotifier(journal, run_id, NoticesSection(timeout_s=2)).send(
        "run-failed", to="Alex Engineer", role="Migration engineer", party="contractor",
        url="json://127.0.0.1:1/nobody", mode="cutover", state="Failed", headline="x", what="x", fix="", link="l")
    assert not sent.delivered
    (event,) = journal.events(run_id, EventKind.PERSON_NOTICE)
    assert "FAILED for Alex Engineer" in event.message and not event.data["delivered"]

"""Who signs: the roster's people answer the pauses, the customer with a one-time code, and the
person who must act is told.

A pause of a bound run (the config has ``[[roster]]`` entries) offers the names of the people
who may answer it — the customer's step, a gate and the ladder's roll-back decision: the roster's
customers; a contractor's step: its contractors — as a choice, not free text. Before the run pauses
for the customer, every eligible customer gets a notice with what to do, the flow run's link and a one-time
code of their own (:mod:`journal.signers`); the form asks for the code. An answer whose code is
wrong, expired, used or sent for another prompt, or whose name is not eligible, is journaled as
refused (``sign-refused``) and asked again with the reason, within :data:`MAX_SIGN_ASKS`; a
taken one is journaled as ``sign-verified`` with the roster's name and role, and the step's actor
or the gate's signer is that name and role, never text typed into the form. A contractor's step
needs no code: the contractor runs the Prefect server and the code protects the *customer's* word
against it; its contractors are told all the same.

A run without a roster is refused for a cutover (:func:`require_roster`); a rehearsal without one
asks for typed names as before and journals each answer as ``sign-unbound``.

When a run fails or crashes, the roster's engineers (``engineer = true``; every contractor when
nobody is marked) get a notice with what happened, the fix and the link (:func:`tell_engineers`,
the ``migration`` flow's ``on_failure``/``on_crashed`` hooks). Hooks with apprise, not Prefect
automations: they use the roster and its contacts from the same config, journal what they sent,
and work on any Prefect server, ephemeral ones included, with nothing to set up on the server.
What a hook cannot see — a process killed with SIGKILL, a host that dies — needs a watcher outside
the process: a Prefect automation on the server (README, "Who signs").

A fire closed by hand (``cloud2box issues resolve`` on a fire) needs a reason and the customer's
consent as a one-time code: :func:`override_fire`; the issue becomes ``overridden`` and the gates
and the report show it as such.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal

from pydantic import Field, create_model

from connectors.errors import ConfigError, FatalError, MigrationError
from connectors.secrets import redact
from flows.config import Config, RosterEntry, sign_code_key
from journal.events import EventKind
from journal.models import utcnow
from journal.signers import CODE_DIGITS, CodeBook, PersonNotifier

if TYPE_CHECKING:
    from flows.run_context import RunContext

MAX_SIGN_ASKS = 10  # answers that cannot be taken (a wrong code …) are asked again, within a bound
CODE_FIELD = "code"
CODE_PATTERN = f"^(?:[0-9]{{{CODE_DIGITS}}})?$"

log = logging.getLogger("cloud2box.signing")


# -- who may answer -----------------------------------------------------------------------------

def party_of(owner: str) -> str:
    """The roster party that answers for a runbook owner (``customer-sales`` is the customer's)."""
    return "contractor" if owner == "contractor" else "customer"


@dataclass(frozen=True)
class Signers:
    """Who may answer one pause: the roster's people of ``party`` (none: a run without a roster)."""

    party: str
    people: tuple[RosterEntry, ...]

    @property
    def bound(self) -> bool:
        return bool(self.people)

    @property
    def needs_code(self) -> bool:
        return self.bound and self.party == "customer"

    def names(self) -> str:
        return " or ".join(f"{p.name} ({p.role})" for p in self.people)


def signers_for(config: Config, party: str) -> Signers:
    return Signers(party, tuple(p for p in config.roster if p.party == party))


def roster_problems(config: Config, runbook) -> list[str]:
    """What a roster lacks for ``runbook``: somebody for each party that has manual steps."""
    if not config.roster:
        return []
    parties = {p.party for p in config.roster}
    problems = []
    for step in runbook.steps:
        party = party_of(step.owner)
        if step.is_manual and party not in parties:
            problems.append(f"[roster] has nobody with party = \"{party}\", but step {step.id} ({step.title}) is "
                            f"confirmed by hand by the {step.owner}: add them to the roster")
            parties.add(party)  # one line per missing party
    return problems


def register_contacts(config: Config) -> None:
    """A contact written as a URL may hold a token (tgram://BOT_TOKEN/…): masked like a secret in
    the journal's config snapshot, the logs and the reports."""
    from connectors.secrets import register_secret

    for person in config.roster:
        if "://" in person.contact:
            register_secret(person.contact)


def require_roster(config: Config, mode: str) -> None:
    """A cutover's sign-offs are bound to named people: without ``[[roster]]`` it does not start."""
    if mode == "cutover" and not config.roster:
        raise ConfigError(config.source, [
            "[roster] is empty: a cutover's confirmations and sign-offs are bound to named people, each "
            "customer's with a one-time code sent to them; add [[roster]] entries (name, role, party = "
            "\"customer\" | \"contractor\", contact = an apprise URL or a [secrets] name; engineer = true for "
            "who is told when a run fails) — see config.example.toml"])


def contact_url(person: RosterEntry, secrets: dict) -> str | None:
    """The person's apprise URL (a [secrets] name resolved), None when that secret is not set."""
    if person.contact in secrets:
        return secrets[person.contact].get_secret_value()
    return person.contact if "://" in person.contact else None


# -- the form and the prompt --------------------------------------------------------------------

def signed_form(base: type, signers: Signers, name_field: str) -> type:
    """``base`` for this pause: ``name_field`` a choice of the eligible names, a ``code`` field after
    it when the party is the customer, ``role`` gone (the roster says it). A run without a roster
    keeps ``base``. The fields keep their order and their limits."""
    from flows.forms import _Form

    if not signers.bound:
        return base
    names = tuple(p.name for p in signers.people)
    fields: dict[str, Any] = {}
    for name, info in base.model_fields.items():
        if name == "role":
            continue
        if name != name_field:
            fields[name] = (info.annotation, info)
            continue
        fields[name] = (Literal[names], Field(description="Your name, as the roster has it",
                                              json_schema_extra=_as_choice(names)))
        if signers.needs_code:
            fields[CODE_FIELD] = (str, Field(
                max_length=CODE_DIGITS, pattern=CODE_PATTERN,
                description=f"The {CODE_DIGITS}-digit one-time code cloud2box sent you for this prompt. Lost or "
                            "expired: leave it empty and submit, a new code is sent to you"))
    return create_model(base.__name__, __base__=_Form, __doc__=base.__doc__, **fields)


def _as_choice(names: tuple[str, ...]):
    """A one-name Literal is a ``const`` in pydantic's schema, which the UI shows as no choice at
    all: always an ``enum``, which it renders as a select (the server checks either)."""
    def fix(schema: dict) -> None:
        schema.pop("const", None)
        schema["enum"] = list(names)
    return fix


def _signers_section(signers: Signers, ttl_min: float, sent_at: dt.datetime) -> str:
    if not signers.bound:
        return ("**Who answers:** type your name (this run has no [[roster]]: the name is not verified; "
                "a cutover needs a roster).")
    if signers.needs_code:
        return (f"**Who signs:** {signers.names()} — choose your name and type the one-time code cloud2box "
                f"sent you at {sent_at:%H:%M} UTC (valid {ttl_min:g} min). An empty code gets you a new one.")
    return f"**Who confirms:** {signers.names()} — choose your name."


def with_signers(prompt: str, section: str) -> str:
    """``prompt`` with who answers right after its ``**Who:**`` line, so it shows first in the
    modal's small box (appended when there is no such line)."""
    lines = prompt.split("\n")
    at = next((i + 1 for i, line in enumerate(lines) if line.startswith("**Who:**")), None)
    if at is None:
        return f"{prompt}\n\n{section}"
    return "\n".join(lines[:at] + ["", section] + lines[at:])


def flow_run_link(flow_run_id: str | None) -> str:
    """The flow run's page in the Prefect UI (``PREFECT_UI_URL``, else derived from the API URL)."""
    from prefect.utilities.urls import url_for

    url = url_for("flow-run", obj_id=flow_run_id) if flow_run_id else None
    return url or f"the Prefect UI, flow run {flow_run_id} (set PREFECT_UI_URL for a link)"


# -- asking -------------------------------------------------------------------------------------

@dataclass
class Answer:
    """An answer to a pause: the base form's fields (never the code; ``role`` from the roster),
    the roster's person who gave it, and why it was not taken (None: taken)."""

    data: dict
    person: RosterEntry | None
    refused: str | None = None


def code_book(config: Config, secrets: dict, journal) -> CodeBook:
    """The codes' book with ``[signoff] code_key_secret``'s key, else this process's own."""
    key = sign_code_key(config, secrets)
    return CodeBook(journal, key=key) if key else CodeBook(journal)


def person_notifier(run: RunContext) -> PersonNotifier:
    m = run.config.migration
    return PersonNotifier(run.journal, run.run_id, run.config.notices,
                          context={"name": m.name, "portal": m.portal, "timezone": m.timezone})


def tell_signers(run: RunContext, signers: Signers, *, key: str, what: str, verb: str, action: str, link: str,
                 refused: str | None = None, step_id: str | None = None) -> None:
    """Each eligible person gets a notice (with a new code of their own for the customer's)."""
    notifier, book = person_notifier(run), code_book(run.config, run.secrets, run.journal)
    ttl = dt.timedelta(minutes=run.config.signoff.code_ttl_minutes)
    for person in signers.people:
        url = contact_url(person, run.secrets)
        if url is None:
            run.journal.add_event(run.run_id, EventKind.PERSON_NOTICE, f"{person.name} cannot be told: the contact's "
                                  f"[secrets] entry is not set", data={"to": person.name, "delivered": False},
                                  step_id=step_id)
            continue
        code = expires = None
        if signers.needs_code:
            code, expires = book.issue(run.run_id, key, person.name, ttl)
        notifier.send("sign-request", to=person.name, role=person.role, party=person.party, url=url, code=code,
                      expires_at=expires, what=what, verb=verb, action=action, link=link, refused=refused, ref=key,
                      mode=run.mode, step_id=step_id)


def ask(run: RunContext, *, base: type, name_field: str, prompt: str, key: str, what: str, verb: str, action: str,
        refused: str | None = None, step_id: str | None = None, event_data: dict | None = None,
        signers: Signers | None = None) -> Answer:
    """One pause answered by a roster person (see the module doc). ``refused``: why the last answer
    was not taken, for the notices (the caller puts it into ``prompt``). ``event_data`` goes into
    the journaled verdict (a gate: its phase)."""
    from prefect import get_run_logger

    from flows.run_context import flow_run_id

    logger, cfg, journal = get_run_logger(), run.config, run.journal
    signers = signers or signers_for(cfg, "customer")
    link, sent_at = flow_run_link(flow_run_id()), utcnow()
    answered = key in fired_pause_keys()
    if answered:  # asked before this flow run was suspended; its answer is read, nobody is told again
        logger.info("%s: the answer came while the run waited without a process; reading it", what)
    elif signers.bound:
        tell_signers(run, signers, key=key, what=what, verb=verb, action=action, link=link, refused=refused,
                     step_id=step_id)
        logger.info("%s waits for %s (%s)%s: told each of them; %s", what, signers.names(), signers.party,
                    ", each with a one-time code" if signers.needs_code else "", link)
    else:
        logger.info("%s waits for the %s (no [[roster]]: nobody is told by cloud2box); %s", what, signers.party, link)
    form = signed_form(base, signers, name_field)
    description = with_signers(prompt, _signers_section(signers, cfg.signoff.code_ttl_minutes, sent_at))
    answer = wait_for_answer(run, form.with_initial_data(description=description), key=key, what=what,
                             signers=signers, answered=answered, step_id=step_id)
    data = answer.model_dump(include=set(base.model_fields))
    name, extra = str(data.get(name_field, "")), {**(event_data or {}), "pause": key}
    if not signers.bound:
        journal.add_event(run.run_id, EventKind.SIGN_UNBOUND, f"{what}: answered by {name!r} as typed (no [[roster]]: "
                          f"not verified)", data={**extra, "name": name}, step_id=step_id)
        return Answer(data, None)
    person = cfg.roster_entry(name)
    reason = None
    if person is None or person not in signers.people:
        reason = f"{name!r} is no {signers.party} of the roster; {what} is answered by {signers.names()}"
    elif signers.needs_code:
        check = code_book(cfg, run.secrets, journal).check(run.run_id, key, person.name, getattr(answer, CODE_FIELD, "") or "")
        reason = None if check.ok else check.reason
    if reason:
        journal.add_event(run.run_id, EventKind.SIGN_REFUSED, f"{what}: the answer given as {name} was not taken: "
                          f"{reason}", data={**extra, "name": name, "reason": reason}, step_id=step_id)
        logger.warning("%s: the answer given as %s was not taken: %s", what, name, reason)
        return Answer(data, person, refused=reason)
    if "role" in base.model_fields:
        data["role"] = person.role
    how = "one-time code checked" if signers.needs_code else "chosen from the roster"
    journal.add_event(run.run_id, EventKind.SIGN_VERIFIED, f"{what}: answered by {person.name} ({person.role}, "
                      f"{person.party}); {how}", data={**extra, "signer": person.name, "role": person.role,
                                                       "party": person.party, "how": how}, step_id=step_id)
    logger.info("%s: answered by %s (%s, %s); %s", what, person.name, person.role, person.party, how)
    return Answer(data, person)


def fired_pause_keys() -> set[str]:
    """The pause keys this flow run has waited at before (Prefect's ``pause_keys``): after a suspension
    the flow starts again from its top, and a key in here was asked and answered already."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    policy = getattr(ctx.flow_run, "empirical_policy", None) if ctx and ctx.flow_run else None
    return set(getattr(policy, "pause_keys", None) or ())


def process_hold(run: RunContext, signers: Signers) -> str | None:
    """Why the run must keep its process while it waits for a person, or None: it may be suspended.

    Prefect suspends only a deployment's top-level flow run: the process exits, and the answer
    schedules the run again, which starts from its top and goes on from the journal. Work that must go
    on while people think keeps the process: the pre-sync's passes, a step's straggler sweeps, the
    downtime's notices. One-time codes keyed by this process would be void in the next one."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    flow_run = ctx.flow_run if ctx else None
    if not run.config.prefect.suspend_while_waiting:
        return "[prefect] suspend_while_waiting is off"
    if flow_run is None or flow_run.deployment_id is None:
        return "it was started without a deployment (cloud2box run, the demo), so nothing could start it again"
    if flow_run.parent_task_run_id is not None:
        return "Prefect does not suspend a subflow"
    if run.presyncer is not None:
        return "the pre-sync goes on while it waits"
    if run.sweeper is not None:
        return "the straggler sweeps go on while it waits"
    if run.watcher is not None:
        return "the users' downtime notices go on while it waits"
    if signers.needs_code and not sign_code_key(run.config, run.secrets):
        return "its one-time codes are keyed by this process ([signoff] code_key_secret is not set)"
    return None


def wait_for_answer(run: RunContext, form: Any, *, key: str, what: str, signers: Signers, answered: bool,
                    step_id: str | None) -> Any:
    """The answer to the pause ``key``: read at once when it came while the run was suspended,
    else waited for — without a process when :func:`process_hold` allows (Prefect's suspend: this
    process ends here, and the answer starts the flow run again), in this process otherwise."""
    from prefect import get_run_logger
    from prefect.flow_runs import pause_flow_run, suspend_flow_run

    if answered:  # fired already: Prefect refuses the same key again and gives the stored answer
        return suspend_flow_run(wait_for_input=form, key=key)
    cfg, logger = run.config, get_run_logger()
    hold = process_hold(run, signers)
    if hold is None:
        run.journal.add_event(run.run_id, EventKind.WAIT, f"{what}: the run waits without a process (suspended) "
                              "until the answer starts it again", data={"pause": key, "suspended": True},
                              step_id=step_id)
        logger.info("%s: suspending; this process ends and the answer starts the run again", what)
        return suspend_flow_run(wait_for_input=form, timeout=cfg.prefect.pause_timeout_s, key=key)
    logger.info("%s: waiting in this process: %s", what, hold)
    return pause_flow_run(wait_for_input=form, timeout=cfg.prefect.pause_timeout_s,
                          poll_interval=cfg.prefect.poll_interval_s, key=key)


def ask_until_taken(run: RunContext, *, base: type, name_field: str, prompt: str, key: str, what: str, verb: str,
                    action: str, signers: Signers, step_id: str | None = None) -> dict:
    """:func:`ask` again, saying why, until an answer is taken (within :data:`MAX_SIGN_ASKS`); the
    first ask has ``key``, the next ``key-ask-2`` …; returns the taken answer's fields."""
    # after a suspension the flow starts again from its top: the asks refused before are not asked again
    refusals = [e for e in run.journal.events(run.run_id, EventKind.SIGN_REFUSED)
                if str(e.data.get("pause", "")) == key or str(e.data.get("pause", "")).startswith(f"{key}-ask-")]
    refused = refusals[-1].data.get("reason") if refusals else None
    for n in range(1 + len(refusals), MAX_SIGN_ASKS + 1):
        answer = ask(run, base=base, name_field=name_field, prompt=with_refusal(prompt, refused),
                     key=key if n == 1 else f"{key}-ask-{n}", what=what, verb=verb, action=action, refused=refused,
                     step_id=step_id, signers=signers)
        if answer.refused is None:
            return answer.data
        refused = answer.refused
    raise FatalError(f"{what} was answered {MAX_SIGN_ASKS} times without an answer that could be taken (last: "
                     f"{refused})", fix="the signer types the newest code sent to them (an empty code gets a new one); "
                                        "re-run the migration: it resumes where it stopped")


def ask_step(run: RunContext, step, base: type, prompt: str, key: str) -> dict:
    """A manual step's confirmation by a roster person of the step's party; returns the base form's
    fields, ``done_by`` the roster's name."""
    action = " ".join((step.instructions or "Do the step as agreed in the runbook.").split())
    if len(action) > 400:
        action = action[:399] + "…"
    return ask_until_taken(run, base=base, name_field="done_by", prompt=prompt, key=key,
                           what=f"step {step.id} — {step.title}", verb="confirm a step",
                           action=action + " Then confirm it in the form: done or not done, what was done, any problems.",
                           signers=signers_for(run.config, party_of(step.owner)), step_id=step.id)


def with_refusal(prompt: str, refused: str | None) -> str:
    if not refused:
        return prompt
    from connectors.outputs import markdown_text

    lines = prompt.split("\n")
    at = next((i + 1 for i, line in enumerate(lines) if line.startswith("**Who:**")), len(lines))
    return "\n".join(lines[:at] + ["", f"> **Your last answer was not taken:** {markdown_text(refused)}"] + lines[at:])


# -- the engineer is told when a run stops --------------------------------------------------------

def engineers(config: Config) -> list[RosterEntry]:
    marked = [p for p in config.roster if p.engineer]
    return marked or [p for p in config.roster if p.party == "contractor"]


def tell_engineers(flow, flow_run, state) -> None:
    """``on_failure`` / ``on_crashed`` of the migration flow: the roster's engineers get a notice
    with what happened, the fix and the link. A hook never raises: the run's state stays its own."""
    try:
        _tell_engineers(flow_run, state)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not tell the engineers that flow run %s stopped: %s", getattr(flow_run, "id", "?"),
                    redact(f"{type(exc).__name__}: {exc}"))


def _tell_engineers(flow_run, state) -> None:
    from flows.config import journal_chain_key, load_config_and_secrets
    from flows.run_context import _read_prefect_secret
    from journal.store import Journal

    params = flow_run.parameters or {}
    config, secrets, _ = load_config_and_secrets(str(params.get("config", "")), prefect_reader=_read_prefect_secret)
    if config is None or not engineers(config):
        log.warning("flow run %s stopped (%s); nobody to tell: no config or no engineer on its [[roster]]",
                    flow_run.id, state.type.value)
        return
    journal = Journal(config.journal.url, chain_key=journal_chain_key(config, secrets))
    run = next((r for r in reversed(journal.runs()) if r.last_flow_run_id == str(flow_run.id)), None)
    exc = None
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 — a crashed run may have no result to read
        pass
    what = exc.message if isinstance(exc, MigrationError) else (state.message or state.type.value)
    fix = exc.fix if isinstance(exc, MigrationError) else ""
    m = config.migration
    notifier = PersonNotifier(journal, run.id if run else None, config.notices,
                              context={"name": m.name, "portal": m.portal, "timezone": m.timezone})
    mode = str(params.get("mode", "rehearsal"))
    for person in engineers(config):
        url = contact_url(person, secrets)
        if url is None:
            log.warning("%s cannot be told: the contact's [secrets] entry is not set", person.name)
            continue
        notifier.send("run-failed", to=person.name, role=person.role, party=person.party, url=url, mode=mode,
                      state=state.name or state.type.value, headline=(what or "")[:120], what=what or "", fix=fix or "",
                      link=flow_run_link(str(flow_run.id)))


# -- a fire closed by hand ------------------------------------------------------------------------

def override_fire(config: Config, secrets: dict, journal, *, issue_id: int, by: str, reason: str, signer: str,
                  read_code: Callable[[str], str]) -> Any:
    """Close the open fire ``issue_id`` by hand: ``by`` (a roster name) gives ``reason``; ``signer``
    (a customer of the roster) gets a one-time code and gives it to ``by`` if they agree, which
    ``read_code(prompt)`` reads. The issue becomes ``overridden``; the gates show it.

    Raises:
        MigrationError: no roster, not a fire or not open, no reason, a name not on the roster, the
            code not delivered, or a wrong code (journaled as refused).
    """
    from journal import triage

    if not config.roster:
        raise MigrationError("a fire is closed by hand only with the customer's consent, and this config has no "
                             "[[roster]] to ask it of", fix="add the roster (see config.example.toml), or fix the "
                                                            "cause so the check passes and closes the fire")
    issue = triage.get_issue(journal, issue_id)
    if issue.severity != "fire" or issue.status != "open":
        raise MigrationError(f"issue #{issue_id} is no open fire ({issue.severity}, {issue.status})",
                             fix="cloud2box issues list shows the open fires")
    if not (reason or "").strip():
        raise MigrationError(f"closing fire #{issue_id} by hand needs a reason",
                             fix=f'cloud2box issues resolve --id {issue_id} --by NAME --signer CUSTOMER --reason "why"')
    actor = config.roster_entry(by or "")
    customer = config.roster_entry(signer or "")
    if actor is None:
        raise MigrationError(f"--by {by!r} is not on the roster", fix="give your name as the roster has it: "
                             + ", ".join(p.name for p in config.roster))
    if customer is None or customer.party != "customer":
        names = ", ".join(p.name for p in config.roster if p.party == "customer")
        raise MigrationError(f"--signer {signer!r} is no customer of the roster; a fire is closed by hand only with "
                             "a customer's consent", fix=f"--signer one of: {names}")
    url = contact_url(customer, secrets)
    if url is None:
        raise MigrationError(f"{customer.name}'s contact is a [secrets] entry that is not set",
                             fix="set it, then run the command again")
    purpose = f"override-issue-{issue_id}"
    book = code_book(config, secrets, journal)
    code, expires = book.issue(issue.run_id, purpose, customer.name,
                               dt.timedelta(minutes=config.signoff.code_ttl_minutes))
    m = config.migration
    sent = PersonNotifier(journal, issue.run_id, config.notices,
                          context={"name": m.name, "portal": m.portal, "timezone": m.timezone}).send(
        "override-request", to=customer.name, role=customer.role, party=customer.party, url=url, code=code,
        expires_at=expires, by=actor.name, issue=f"#{issue.id} {issue.title}", reason=reason, ref=purpose,
        mode=journal.get_run(issue.run_id).mode, step_id=issue.step_id)
    if not sent.delivered:
        raise MigrationError(f"the one-time code could not be sent to {customer.name} ({sent.target}): {sent.error}",
                             fix="check the contact in the roster; nothing was changed")
    typed = read_code(f"A one-time code was sent to {customer.name} ({customer.role}). If they agree to close fire "
                      f"#{issue.id} by hand, they give it to you; type it: ")
    check = book.check(issue.run_id, purpose, customer.name, typed)
    data = {"issue_id": issue.id, "by": actor.name, "signer": customer.name, "role": customer.role, "reason": reason}
    if not check.ok:
        journal.add_event(issue.run_id, EventKind.SIGN_REFUSED, f"closing fire #{issue.id} by hand: the consent given "
                          f"as {customer.name} was not taken: {check.reason}", data={**data, "pause": purpose,
                                                                                     "reason": check.reason},
                          step_id=issue.step_id)
        raise MigrationError(f"fire #{issue.id} stays open: {check.reason}",
                             fix="ask the customer for the code they were sent and run the command again (a new "
                                 "code is sent each time)")
    journal.add_event(issue.run_id, EventKind.SIGN_VERIFIED, f"closing fire #{issue.id} by hand: consent of "
                      f"{customer.name} ({customer.role}, customer); one-time code checked",
                      data={**data, "pause": purpose, "party": "customer", "how": "one-time code checked"},
                      step_id=issue.step_id)
    return triage.override_issue(journal, issue.id, by=actor.name, reason=reason, agreed_by=customer.name,
                                 agreed_role=customer.role)

"""A phase's gate: the customer's sign-off, with the checks, the open issues and the risks.

:func:`ask_gate` pauses the phase flow for the sign-off (flow code: Prefect pauses flows, not
tasks) and :func:`record_gate` journals the answer. An approval is not taken while a fire is open
when it arrives (the phase's checks run again then: a fire fixed since closes, one closed by hand
while its check still fails opens again) or, at gate 1, while a high-impact risk without mitigation is not explicitly accepted: it is
journaled as refused and the gate is asked again, within :data:`MAX_GATE_ASKS`. Every answer is
followed by the journal's anchor (:func:`flows.outputs.publish_anchor`), so a sign-off removed
later shows against the copy kept away from the journal.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from checklists.risks import load_risks
from checklists.runbook import Phase
from connectors.errors import FatalError, GateRejected
from connectors.secrets import redact
from flows.forms import REVIEW_HOLDS, GateSignOff, GateSignOffAcceptingRisks, gate_prompt
from flows.outputs import publish_anchor, publish_review
from flows import signing
from flows.run_context import RunContext, flow_run_id
from flows.steps import verify_before
from journal.events import EventKind
from journal.export import brief_table, phase_rows
from journal.risks import risk_register_brief, risk_register_markdown, risk_statuses, set_risk_status
from journal.presync import presync_summary
from journal.sweeps import sweeps_markdown
from journal.triage import fires_refusal, issues, open_fires, open_issues_brief, overrides_brief

MAX_GATE_ASKS = 10  # approvals that cannot be taken (risks not accepted) are asked again, within a bound


@task(cache_policy=NO_CACHE, persist_result=False, tags=["owner:customer", "gate"])
def record_gate(run: RunContext, phase: int, signoff: dict, must_accept: list[str] | None = None,
                asked_fires: list[int] | None = None) -> dict:
    """Journal a customer's gate decision; a rejection stops the run.

    An approval is taken on the journal's state when it arrives, not the prompt's: with a fire open
    now it is journaled as refused, the reason naming each fire, the check still failing and its fix
    (``asked_fires``: the fires open when the question was put, to name one closed by hand since
    whose check still fails); the gate is asked again. So is an approval that does not accept the
    risks in ``must_accept``.
    """
    journal, run_id = run.journal, run.run_id
    form = GateSignOffAcceptingRisks if must_accept else GateSignOff
    answer = form.model_validate(signoff)
    fires = open_fires(journal, run_id) if answer.decision == "approve" else []
    reason = None
    if fires:
        asked = [i for i in issues(journal, run_id) if i.id in set(asked_fires or ())]
        reason = fires_refusal(fires, asked)
        get_run_logger().warning("gate %s: approval not taken: %s", phase, redact(reason))
    elif answer.decision == "approve" and must_accept and not getattr(answer, "accept_unmitigated_risks", False):
        reason = (f"{', '.join(must_accept)} have high impact and no mitigation; tick the acceptance box "
                  f"or reject the phase")
    if reason:
        journal.add_event(run_id, EventKind.GATE_REFUSED, f"phase {phase}: approval by {answer.signer} not taken: {reason}",
                          data={"phase": phase, "signer": answer.signer})
        return {"phase": phase, "decision": "refused", "reason": reason}
    journal.record_signoff(run_id, phase=phase, signer=answer.signer, role=answer.role, decision=answer.decision,
                           comment=answer.comment, flow_run_id=flow_run_id())
    if answer.decision != "approve":
        raise GateRejected(
            f"phase {phase} was rejected by {answer.signer} ({answer.role}): {answer.comment or 'no comment'}",
            fix="resolve what the customer raised, then re-run the migration: completed steps are kept and "
                "the gate is asked again",
        )
    if phase == 1:
        _record_risk_decisions(run, answer.signer, accepted=must_accept or [])
    return {"phase": phase, "decision": answer.decision, "signer": answer.signer}


def _record_risk_decisions(run: RunContext, signer: str, accepted: list[str]) -> None:
    register = load_risks(run.config.runbook.risks)
    for risk in register.risks:
        if risk.id in accepted:
            set_risk_status(run.journal, run.run_id, risk.id, "accepted", decided_by=signer,
                            note="high impact, no mitigation: accepted at gate 1")
        elif risk.mitigation:
            set_risk_status(run.journal, run.run_id, risk.id, "mitigation-planned", decided_by=signer,
                            note=risk.mitigation)


def _gate_asks(run: RunContext, phase: int) -> int:
    signed = sum(1 for s in run.journal.signoffs(run.run_id) if s.phase == phase)
    refused = sum(1 for e in run.journal.events(run.run_id) if e.kind in (EventKind.GATE_REFUSED, EventKind.SIGN_REFUSED)
                  and e.data.get("phase") == phase)
    return signed + refused


def ask_gate(run: RunContext, phase: Phase) -> dict:
    """Ask the phase's sign-off until a decision is taken; returns the approval (a rejection raises)."""
    journal, run_id, cfg = run.journal, run.run_id, run.config
    sections, must_accept, decide_first = [], [], []
    review_sections, review_holds = [], REVIEW_HOLDS  # the full review's (heading, Markdown) and what it holds
    if phase.number == 1:
        register = load_risks(cfg.runbook.risks)
        statuses = {k: v.status for k, v in risk_statuses(journal, run_id).items()}
        sections.append(risk_register_brief(register, statuses))
        review_sections.append(("Risk register", risk_register_markdown(register, statuses)))
        review_holds += ", the risk register"
        must_accept = [r.id for r in register.needing_acceptance]
        decide_first = [f"accept **{r.id}** ({r.title}: {r.impact} impact, no mitigation) — tick "
                        f"*accept unmitigated risks* — or reject the phase" for r in register.needing_acceptance]
    refused_reason = None
    checked = [s for s in phase.steps if s.verify]
    signers = signing.signers_for(cfg, "customer")
    for _ in range(MAX_GATE_ASKS):
        attempt = 1 + _gate_asks(run, phase.number)
        verification = []
        if checked:  # checks again at every ask: a fixed fire closes here, what broke since shows here
            verification = [verify_before(run, checked[-1].id, f"gate-{phase.number}")["brief"]]
        table = brief_table(phase_rows(journal, run_id, phase.number))
        presynced = presync_summary(journal, run_id) if any(s.presync for s in phase.steps) else ""
        sections_now = [*sections, open_issues_brief(journal, run_id), *verification, overrides_brief(journal, run_id),
                        presynced, sweeps_markdown(journal, run_id, brief=True)]
        sections_now = [x for x in sections_now if x]
        fires = open_fires(journal, run_id)
        decide_now = decide_first + ([f"{len(fires)} **fire(s)** open: approval is refused until they are resolved"
                                      + (" (the checks run again when your answer arrives)" if checked else "")]
                                     if fires else [])
        decide_now += [f"{i.severity} #{i.id} was **closed by hand** (an override, see below): approve only if you "
                       "accept it" for i in issues(journal, run_id, status="overridden")]
        link = publish_review(run, phase, f"gate {phase.number}, ask {attempt}",
                              [*review_sections, ("Pre-sync", presynced),
                               ("Straggler sweeps", sweeps_markdown(journal, run_id))])
        form_cls = GateSignOffAcceptingRisks if must_accept else GateSignOff
        prompt = gate_prompt(
            phase, mode=run.mode, portal=cfg.migration.portal, journal_table_md=table, extra_sections=sections_now,
            decide_first=decide_now, refused_reason=refused_reason, review_link=link, review_holds=review_holds)
        # a customer of the roster answers with the one-time code sent to them (flows/signing.py)
        answer = signing.ask(run, base=form_cls, name_field="signer", prompt=prompt,
                             key=f"gate-{phase.number}-attempt-{attempt}",
                             what=f"the sign-off of phase {phase.number} — {phase.title}", verb="sign off a phase",
                             action=f"{phase.gate} Read the prompt and the full review it links, then approve or "
                                    "reject.", refused=refused_reason, event_data={"phase": phase.number},
                             signers=signers)
        if answer.refused:  # journaled (sign-refused); nothing of the answer is taken
            publish_anchor(run, f"gate {phase.number} of run {run_id}, ask {attempt}")
            refused_reason = answer.refused
            continue
        signoff = answer.data
        if checked and signoff.get("decision") == "approve":
            # the answer may come days after the question and the fires since closed by hand or
            # broken anew: the checks run again, the decision is taken on the state now, not the prompt's
            verify_before(run, checked[-1].id, f"gate-{phase.number}")
        try:
            result = record_gate(run, phase.number, signoff, must_accept, asked_fires=[i.id for i in fires])
        finally:  # every decision, refusals and rejections too, leaves the journal at once
            publish_anchor(run, f"gate {phase.number} of run {run_id}, ask {attempt}")
        if result["decision"] == "approve":
            return result
        refused_reason = result["reason"]
    raise FatalError(f"the gate of phase {phase.number} was answered {MAX_GATE_ASKS} times without a valid decision",
                     fix="approve with the required acceptances, or reject; then re-run the migration")

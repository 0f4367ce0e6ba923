"""A phase's gate: the customer's sign-off, with the checks, the open issues and the risks.

:func:`ask_gate` pauses the phase flow for the sign-off (flow code: Prefect pauses flows, not
tasks) and :func:`record_gate` journals the answer. An approval is not taken while a fire is open
or, at gate 1, while a high-impact risk without mitigation is not explicitly accepted: it is
journaled as refused and the gate is asked again, within :data:`MAX_GATE_ASKS`. Every answer is
followed by the journal's anchor (:func:`flows.outputs.publish_anchor`), so a sign-off removed
later shows against the copy kept away from the journal.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.flow_runs import pause_flow_run

from checklists.risks import load_risks
from checklists.runbook import Phase
from connectors.errors import FatalError, GateRejected
from flows.forms import GateSignOff, GateSignOffAcceptingRisks, gate_prompt
from flows.outputs import publish_anchor
from flows.run_context import RunContext, flow_run_id
from flows.steps import verify_before
from journal.events import EventKind
from journal.export import SUMMARY_COLUMNS, markdown_table, phase_rows
from journal.risks import risk_register_markdown, risk_statuses, set_risk_status
from journal.presync import presync_summary
from journal.sweeps import sweeps_markdown
from journal.triage import gate_issues_markdown, open_fires

MAX_GATE_ASKS = 10  # approvals that cannot be taken (risks not accepted) are asked again, within a bound


@task(cache_policy=NO_CACHE, persist_result=False, tags=["owner:customer", "gate"])
def record_gate(run: RunContext, phase: int, signoff: dict, must_accept: list[str] | None = None) -> dict:
    """Journal a customer's gate decision; a rejection stops the run.

    An approval that does not accept the risks in ``must_accept`` is not taken: it is journaled
    as refused and the gate is asked again.
    """
    journal, run_id = run.journal, run.run_id
    form = GateSignOffAcceptingRisks if must_accept else GateSignOff
    answer = form.model_validate(signoff)
    fires = open_fires(journal, run_id) if answer.decision == "approve" else []
    reason = None
    if fires:
        reason = (f"{len(fires)} fire(s) open: {'; '.join(f'#{i.id} {i.title}' for i in fires)}; resolve them, or "
                  f"reject the phase (roll back to the cloud)")
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
    refused = sum(1 for e in run.journal.events(run.run_id, kind=EventKind.GATE_REFUSED) if e.data.get("phase") == phase)
    return signed + refused


def ask_gate(run: RunContext, phase: Phase) -> dict:
    """Ask the phase's sign-off until a decision is taken; returns the approval (a rejection raises)."""
    journal, run_id, cfg = run.journal, run.run_id, run.config
    sections, must_accept, decide_first = [], [], []
    if phase.number == 1:
        register = load_risks(cfg.runbook.risks)
        statuses = {k: v.status for k, v in risk_statuses(journal, run_id).items()}
        sections.append("Risk register:\n\n" + risk_register_markdown(register, statuses))
        must_accept = [r.id for r in register.needing_acceptance]
        decide_first = [f"accept **{r.id}** ({r.title}: {r.impact} impact, no mitigation) — tick "
                        f"*accept unmitigated risks* — or reject the phase" for r in register.needing_acceptance]
    refused_reason = None
    checked = [s for s in phase.steps if s.verify]
    for _ in range(MAX_GATE_ASKS):
        attempt = 1 + _gate_asks(run, phase.number)
        verification = []
        if checked:  # checks again at every ask: a fixed fire closes here, what broke since shows here
            verification = [verify_before(run, checked[-1].id, f"gate-{phase.number}")["markdown"]]
        table = markdown_table(phase_rows(journal, run_id, phase.number), SUMMARY_COLUMNS)
        sections_now = [*sections, *verification, gate_issues_markdown(journal, run_id),
                        presync_summary(journal, run_id) if any(s.presync for s in phase.steps) else "",
                        sweeps_markdown(journal, run_id)]
        sections_now = [x for x in sections_now if x]
        fires = open_fires(journal, run_id)
        decide_now = decide_first + ([f"{len(fires)} **fire(s)** open: approval is refused until they are resolved"]
                                     if fires else [])
        form_cls = GateSignOffAcceptingRisks if must_accept else GateSignOff
        form = form_cls.with_initial_data(description=gate_prompt(
            phase, mode=run.mode, portal=cfg.migration.portal, journal_table_md=table, extra_sections=sections_now,
            decide_first=decide_now, refused_reason=refused_reason))
        answer = pause_flow_run(wait_for_input=form, timeout=cfg.prefect.pause_timeout_s,
                                poll_interval=cfg.prefect.poll_interval_s, key=f"gate-{phase.number}-attempt-{attempt}")
        try:
            result = record_gate(run, phase.number, answer.model_dump(include=set(form_cls.model_fields)),
                                 must_accept)
        finally:  # every decision, refusals and rejections too, leaves the journal at once
            publish_anchor(run, f"gate {phase.number} of run {run_id}, ask {attempt}")
        if result["decision"] == "approve":
            return result
        refused_reason = result["reason"]
    raise FatalError(f"the gate of phase {phase.number} was answered {MAX_GATE_ASKS} times without a valid decision",
                     fix="approve with the required acceptances, or reject; then re-run the migration")

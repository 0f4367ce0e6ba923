"""A scripted customer: answers paused runs through Prefect's API exactly as a person would in the UI.

The demo uses it to confirm manual steps and sign the gates; tests use it with their own answers.
It reads the form's Markdown prompt and schema that the paused run saved, then calls
``resume_flow_run`` with typed input, which the server validates against that schema.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import requests
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
from prefect.client.schemas.objects import StateType
from prefect.exceptions import NotPausedError, ObjectNotFound, PrefectHTTPStatusError
from prefect.flow_runs import resume_flow_run
from prefect.input.run_input import keyset_from_paused_state

log = logging.getLogger("cloud2box.customer")


@dataclass
class PausedPrompt:
    flow_run_id: str
    flow_run_name: str
    key: str  # our stable pause key: step-2-10-attempt-1, gate-1-attempt-1
    description: str
    fields: tuple[str, ...] = ()  # the form's field names, from the schema the run saved
    choices: dict[str, tuple[str, ...]] = field(default_factory=dict)  # a field's offered values (the roster's names)

    @property
    def kind(self) -> str:
        return "gate" if self.key.startswith("gate-") else "step"

    @property
    def target(self) -> str:
        """The step id (``2.10``) or the phase number (``1``) the prompt is about."""
        m = re.match(r"^(?:step|gate)-(.+?)-attempt-\d+(?:-ask-\d+)?$", self.key)
        return m.group(1).replace("-", ".") if m else self.key

    @property
    def who(self) -> str:
        m = re.search(r"\*\*Who:\*\*\s*([^·\n]+)", self.description)
        return m.group(1).strip() if m else "Customer"


def _offered(prompt: PausedPrompt, name_field: str, preferred: str) -> str | None:
    """The name to choose from the roster's names the form offers (None: a free-text name)."""
    offered = prompt.choices.get(name_field)
    if not offered:
        return None
    return preferred if preferred in offered else offered[0]


def demo_answer(prompt: PausedPrompt) -> dict:
    """What the demo's people answer: every step done, every gate approved. With a roster they choose
    their names from the form (the one-time code is the :class:`ScriptedCustomer`'s to read)."""
    if prompt.kind == "gate":
        reply = {"signer": _offered(prompt, "signer", "Dana Demo") or "Dana Demo", "decision": "approve",
                 "comment": f"phase {prompt.target} checked in the demo"}
        if "role" in prompt.fields or not prompt.fields:
            reply["role"] = "Head of Sales (customer)"
        if "accept_unmitigated_risks" in prompt.fields:
            reply["accept_unmitigated_risks"] = True  # the demo customer knowingly accepts them
        return reply
    person = "Alex Engineer" if prompt.who == "Contractor" else "Dana Demo"
    return {"outcome": "done", "done_by": _offered(prompt, "done_by", person) or f"{person} ({prompt.who})",
            "notes": "done in the demo", "evidence_link": ""}


@dataclass
class ScriptedCustomer:
    """Polls for paused flow runs and answers them with ``answer(prompt) -> dict | None``.

    ``None`` leaves the prompt unanswered. Every answered prompt is kept in ``answered``.
    With ``config`` set, only runs of the migration with that config file are answered (a
    server may hold other migrations' pauses).
    """

    answer: Callable[[PausedPrompt], dict | None] = demo_answer
    config: str | None = None
    poll_s: float = 0.5
    answered: list[tuple[PausedPrompt, dict]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._contacts: dict[str, str | None] | None = None  # roster name → apprise URL, read once
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="scripted-customer", daemon=True)

    def start(self) -> "ScriptedCustomer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def __enter__(self) -> "ScriptedCustomer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def pending(self) -> list[PausedPrompt]:
        """Paused runs whose form (schema and Markdown prompt) is saved and ready to answer."""
        prompts = []
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
            for run in runs:
                if not run.state or not run.state.state_details.run_input_keyset:
                    continue
                if self.config is not None and str(run.parameters.get("config")) != str(self.config):
                    continue
                keyset = keyset_from_paused_state(run.state)
                try:
                    description = client.read_flow_run_input(run.id, keyset["description"])
                    schema = json.loads(client.read_flow_run_input(run.id, keyset["schema"]))
                except (ObjectNotFound, PrefectHTTPStatusError) as exc:
                    if isinstance(exc, PrefectHTTPStatusError) and exc.response.status_code != 404:
                        raise
                    continue  # the run has paused but not yet saved its form
                props = schema.get("properties", {})
                choices = {k: tuple(v.get("enum") or ([v["const"]] if "const" in v else []))
                           for k, v in props.items() if isinstance(v, dict) and ("enum" in v or "const" in v)}
                prompts.append(PausedPrompt(str(run.id), run.name, run.state.state_details.pause_key or "",
                                            _unquote(description), tuple(props), choices))
        return prompts

    def _loop(self) -> None:
        seen: set[tuple[str, str]] = set()
        while not self._stop.wait(self.poll_s):
            try:
                for prompt in self.pending():
                    if (prompt.flow_run_id, prompt.key) in seen:
                        continue
                    reply = self.answer(prompt)
                    if reply is None:
                        continue
                    reply = self.signed(prompt, reply)
                    try:
                        resume_flow_run(prompt.flow_run_id, run_input=reply)
                    except NotPausedError:
                        continue  # answered or retired meanwhile (a resumed run retires its predecessor's prompts)
                    seen.add((prompt.flow_run_id, prompt.key))
                    self.answered.append((prompt, reply))
                    log.info("answered %s %s (%s)", prompt.kind, prompt.target, prompt.who)
            except Exception as exc:  # keep polling: the server may be busy; record for the caller
                self.errors.append(f"{type(exc).__name__}: {exc}")
                if len(self.errors) > 100:
                    raise


    # -- the one-time code, read as the person reads it: from the notice sent to them ------------
    def signed(self, prompt: PausedPrompt, reply: dict) -> dict:
        """``reply`` as the form takes it: only the form's fields, and the code the chosen person was
        sent for this prompt when the form asks for one and the answer brings none."""
        if prompt.fields:
            reply = {k: v for k, v in reply.items() if k in prompt.fields}
        if "code" in prompt.fields and "code" not in reply:
            name = next((str(reply[f]) for f in NAME_FIELDS if f in reply), "")
            reply["code"] = self.code_for(prompt, name)
        return reply

    def code_for(self, prompt: PausedPrompt, name: str, wait_s: float = 15.0) -> str:
        """The code in the newest notice to ``name`` for this prompt, read from their inbox (a
        ``json://`` contact the sandbox's inbox serves; see sandbox/inbox.py); "" when none comes."""
        url = self._inbox_url(name)
        if url is None:
            self.errors.append(f"cannot read {name!r}'s notices: their contact is no json:// inbox")
            return ""
        ref = re.compile(rf"^Reference: {re.escape(prompt.key)}$", re.MULTILINE)
        deadline = time.monotonic() + wait_s
        while True:
            messages = requests.get(url, timeout=10).json()
            for message in reversed(messages):
                body = message.get("message", "")
                found = CODE_IN_NOTICE.search(body)
                if found and ref.search(body):
                    return found.group(1)
            if time.monotonic() >= deadline:
                return ""
            time.sleep(0.2)

    def _inbox_url(self, name: str) -> str | None:
        if self._contacts is None:
            from flows.config import load_config_and_secrets
            from flows.signing import contact_url

            config, secrets, _ = load_config_and_secrets(self.config) if self.config else (None, {}, [])
            self._contacts = {p.name: contact_url(p, secrets) for p in (config.roster if config else [])}
        url = self._contacts.get(name) or ""
        scheme, _, rest = url.partition("://")
        if scheme not in ("json", "jsons"):
            return None
        return ("https://" if scheme == "jsons" else "http://") + rest.split("?", 1)[0]


NAME_FIELDS = ("done_by", "signer", "decided_by")
CODE_IN_NOTICE = re.compile(r"one-time code:\*\*\s*([0-9]{6,12})")


def _unquote(value) -> str:
    # flow run inputs are stored JSON-encoded; a string comes back quoted
    if isinstance(value, str):
        try:
            loaded = json.loads(value)
            return loaded if isinstance(loaded, str) else value
        except ValueError:
            return value
    return str(value)

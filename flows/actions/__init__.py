"""Automated runbook actions: the registry a runbook step's ``action`` names.

An action is a plain function ``fn(ctx: ActionContext) -> ActionResult`` that calls connectors,
checklists and journal code. The phase flows wrap it in a Prefect task; actions themselves use
Prefect only through ``ctx.progress`` (so they can be tested with a dummy context).

Register with ``@register("name")`` in a module of this package and list the module in
``_ACTION_MODULES`` so it is imported when the registry is first used.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from pydantic import SecretStr

from journal.counters import StepCounters

if TYPE_CHECKING:  # annotations only: importing this package stays cheap
    from connectors.platform import Platform
    from flows.config import Config, Mode
    from journal.store import Journal

MANUAL = "manual"

# Modules that register actions; imported lazily so `import flows.actions` stays cheap.
_ACTION_MODULES: list[str] = ["flows.actions.transfer", "flows.actions.box_host", "flows.actions.crm_delta",
                              "flows.actions.verify"]

_REGISTRY: dict[str, Callable[["ActionContext"], "ActionResult"]] = {}
_REQUIRES: dict[str, tuple[str, ...]] = {}


class ProgressSink(Protocol):
    def __call__(self, done: float, total: float | None, message: str = "") -> None: ...


@dataclass
class ActionContext:
    """What an action may use: the run's validated config, its resolved secrets and its journal.

    Sections are read as ``ctx.config.<section>``, already validated; an optional one the action
    ``requires`` is None only when a test builds the context by hand (a run refuses that at start).
    """

    config: Config
    secrets: dict[str, SecretStr]
    journal: Journal
    run_id: str
    step_id: str
    mode: Mode
    work_dir: Path
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("cloud2box"))
    progress: ProgressSink = lambda done, total, message="": None  # noqa: E731

    @property
    def platform(self) -> Platform:
        """The CRM platform of ``[migration] platform``: actions reach its format, delivery, restore
        and CRM through it and name no platform themselves."""
        return self.config.platform

    def secret_value(self, name: str | None, problems: list[str], what: str) -> str | None:
        """The value of the ``[secrets]`` entry ``name`` (None if unnamed); a missing one is added to
        ``problems`` so an action can report them all at once."""
        if not name:
            return None
        value = self.secrets.get(name)
        if value is None:
            problems.append(f"[secrets.{name}] is not defined ({what})")
            return None
        return value.get_secret_value()


@dataclass
class ActionResult:
    """What an action proved: ``evidence`` (hashes, checks…) and ``counters`` (bytes, records…).

    ``counters`` may be given as a dict; it is validated into :class:`StepCounters` (an unknown
    key fails here, where it is written, not later in the forecast that would not find it).
    """

    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)
    counters: StepCounters = field(default_factory=StepCounters)

    def __post_init__(self) -> None:
        if not isinstance(self.counters, StepCounters):
            self.counters = StepCounters.model_validate(self.counters)


def register(name: str, *, requires: tuple[str, ...] = ()):
    """Decorator: make ``fn`` the action called ``name``.

    ``requires`` names the config sections the action cannot run without; a run whose runbook
    uses the action is refused at start, before anything happens, when one is missing.
    """

    def deco(fn):
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"action {name!r} registered twice")
        _REGISTRY[name] = fn
        _REQUIRES[name] = tuple(requires)
        return fn

    return deco


def missing_requirements(runbook, config) -> list[str]:
    """Problems of the form "[section] ..." for every automated step whose config is missing."""
    _load()
    problems = []
    for step in runbook.steps:
        for section in _REQUIRES.get(step.action, ()):
            value = getattr(config, section, None)
            if value is None:
                problems.append(f"[{section}] is missing, but step {step.id} runs the automated action "
                                f"{step.action!r}; add the section (see config.example.toml) or do the step by hand "
                                f"with [runbook] manual_steps = [\"{step.id}\"]")
                continue
            for where, name in _secret_references(value, section):
                if name not in config.secrets and f"[{where}]" not in " ".join(problems):
                    # the name is not repeated: a secret value pasted there looks like a name too
                    problems.append(f"[{where}] names a secret that [secrets] does not define; add that name "
                                    "= { env = \"VAR\" } (or a Prefect Secret block) to [secrets], or, if the "
                                    "secret itself was pasted there, move it to an env var and write its name")
    return problems


def _secret_references(model, prefix: str):
    """(dotted key, secret name) for every ``*_secret`` field in a config section, nested ones too."""
    for field_name in type(model).model_fields:
        value = getattr(model, field_name)
        if field_name.endswith("_secret") and isinstance(value, str) and value:
            yield f"{prefix}.{field_name}", value
        elif hasattr(type(value), "model_fields"):
            yield from _secret_references(value, f"{prefix}.{field_name}")


def _load() -> None:
    for module in _ACTION_MODULES:
        importlib.import_module(module)


def get_action(name: str) -> Callable[[ActionContext], ActionResult]:
    _load()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"no automated action named {name!r}; known: {sorted(_REGISTRY)}") from None


def known_actions() -> set[str]:
    _load()
    return set(_REGISTRY)

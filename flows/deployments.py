"""The deployments engineers start from the Prefect UI: one pair per customer.

``<slug>-rehearsal`` and ``<slug>-cutover`` (slug of ``[migration] name``), so a second customer's
``serve`` registers its own pair instead of overwriting the first one's.

What the Run dialog can change, and why it cannot change these (read in prefect 3.8.8):

- ``mode``: the deployed entry points are :func:`rehearsal` and :func:`cutover`, which have no
  ``mode`` parameter at all: the deployment fixes it.
- ``config``: the UI's custom run sends ``parameters``, and the server merges them over the
  deployment's (server/api/deployments.py ``create_flow_run_from_deployment``). The value is passed
  as ``freeze(path)``, which marks it ``readOnly`` with ``enum: [path]`` in the deployment's schema
  (deployments/runner.py ``validate_deployment_parameters``), and ``enforce_parameter_schema=True``
  makes the server refuse (409) any other value. A flow run may switch the enforcement off
  (``enforce_parameter_schema=False`` on the request, which the UI offers), so the flow also checks
  at its start that its ``config`` is the deployment's and refuses otherwise (:func:`_fixed_config`).
- Job variables (``env``, ``command``, ``working_dir`` of a process pool) stay overridable per run
  for work-pool deployments; whoever may start runs may also change those: serve the UI only to
  people you trust with the host (README, "Serving the UI to a team and a customer").
"""

from __future__ import annotations

from prefect import flow
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.utilities.annotations import freeze

from connectors.errors import FatalError
from flows.config import load_config
from flows.migration import migration, run_name
from flows.run_context import customer_slug, customer_tag

MODES = ("rehearsal", "cutover")


def _fixed_config(config: str) -> None:
    """Refuse a run of a deployment whose ``config`` is not the deployment's own."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if not ctx or not ctx.flow_run or not ctx.flow_run.deployment_id:
        return  # called directly (tests, a terminal): the caller chose the config
    with get_client(sync_client=True) as client:
        fixed = client.read_deployment(ctx.flow_run.deployment_id).parameters.get("config")
    if fixed != config:
        raise FatalError(f"this deployment runs the migration of {fixed}; a run with config {config!r} was refused",
                         fix="start the deployment without changing its parameters, or the deployment of that config")


def _name(mode: str):
    def name() -> str:
        from prefect.runtime import flow_run

        return run_name(str(flow_run.parameters.get("config", "")), mode)

    return name


@flow(name="migration", flow_run_name=_name("rehearsal"), persist_result=False)
def rehearsal(config: str) -> dict:
    """The rehearsal of the migration in ``config`` (fixed by the deployment)."""
    _fixed_config(config)
    return migration.fn(config, "rehearsal")


@flow(name="migration", flow_run_name=_name("cutover"), persist_result=False)
def cutover(config: str) -> dict:
    """The cutover of the migration in ``config`` (fixed by the deployment)."""
    _fixed_config(config)
    return migration.fn(config, "cutover")


ENTRY_POINTS = {"rehearsal": rehearsal, "cutover": cutover}


def deployment_name(customer: str, mode: str) -> str:
    return f"{customer_slug(customer)}-{mode}"


def build_deployments(config_path: str) -> list:
    """The customer's two deployments, one per mode, bound to ``config_path``.

    ``concurrency_limit=1`` with ``CANCEL_NEW``: a second run of the same deployment while one runs is
    cancelled by the server. That limit is per deployment and a paused run gives its slot back
    (server/orchestration/core_policy.py ``ReleaseFlowConcurrencySlots``), so the customer-wide rule
    is the check at each run's start (flows.run_context.refuse_second_run); the limit is a second line.
    """
    customer = load_config(config_path).migration.name
    return [
        ENTRY_POINTS[mode].to_deployment(
            name=deployment_name(customer, mode),
            parameters={"config": freeze(config_path)},
            enforce_parameter_schema=True,
            concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
            description=f"The {mode} of {customer}, described in {config_path}.",
            tags=[customer_tag(customer), f"mode:{mode}", "cloud2box"],
        )
        for mode in MODES
    ]


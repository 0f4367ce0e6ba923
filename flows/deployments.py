"""The deployments engineers start from the Prefect UI: ``rehearsal`` and ``cutover``."""

from __future__ import annotations

from flows.migration import migration


def build_deployments(config_path: str) -> list:
    """Two deployments of the migration flow, one per mode, bound to ``config_path``."""
    return [
        migration.to_deployment(
            name=mode,
            parameters={"config": config_path, "mode": mode},
            description=f"The {mode} of the migration described in {config_path}.",
            tags=[f"mode:{mode}", "cloud2box"],
        )
        for mode in ("rehearsal", "cutover")
    ]

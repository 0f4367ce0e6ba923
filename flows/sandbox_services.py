"""Start the sandbox's servers for the demo (and `cloud2box sandbox up`).

Each sandbox piece contributes config TOML lines, secret env vars and in-process service
handles; the demo writes them into its config file.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator


@dataclass
class SandboxHandles:
    config: dict[str, Any] = field(default_factory=dict)  # portal, box_portal
    toml: list[str] = field(default_factory=list)          # config sections of the sandbox pieces
    secrets: list[str] = field(default_factory=list)       # lines of the [secrets] table (references only)
    env: dict[str, str] = field(default_factory=dict)      # secret values, set as env vars
    services: dict[str, Any] = field(default_factory=dict)
    addresses: list[str] = field(default_factory=list)

    def describe(self) -> list[str]:
        return self.addresses


@contextlib.contextmanager
def start_sandbox(out: Path) -> Iterator[SandboxHandles]:
    """Start every sandbox piece on loopback; stop them all on exit."""
    from sandbox.backup_server import start_backup_sandbox

    handles = SandboxHandles()
    with contextlib.ExitStack() as stack:
        # the cloud's backup delivery (one part corrupted on the wire) and an SSH mirror with good copies
        backup = stack.enter_context(start_backup_sandbox(out / "sandbox-backup"))
        handles.toml += backup.toml_lines()
        handles.secrets += backup.secrets_toml_lines()
        handles.env.update(backup.env)
        handles.addresses += backup.describe()
        handles.services["backup"] = backup
        yield handles

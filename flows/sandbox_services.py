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
    config: dict[str, Any] = field(default_factory=dict)  # portal, box_portal, toml (list of lines)
    env: dict[str, str] = field(default_factory=dict)      # secret values, set as env vars
    services: dict[str, Any] = field(default_factory=dict)
    addresses: list[str] = field(default_factory=list)

    def describe(self) -> list[str]:
        return self.addresses


@contextlib.contextmanager
def start_sandbox(out: Path) -> Iterator[SandboxHandles]:
    handles = SandboxHandles()
    with contextlib.ExitStack() as stack:
        yield handles

"""Start the sandbox's servers for the demo (and `cloud2box sandbox up`).

Each sandbox piece contributes config TOML lines, secret env vars and in-process service
handles; the demo writes them into its config file.
"""

from __future__ import annotations

import contextlib
import json
import secrets
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

    def add(self, name: str, piece) -> None:
        """Take a sandbox piece that offers toml_lines(), secrets_toml_lines(), env and describe()."""
        self.toml += piece.toml_lines()
        self.secrets += piece.secrets_toml_lines()
        self.env.update(piece.env)
        self.addresses += piece.describe()
        self.services[name] = piece


@contextlib.contextmanager
def start_sandbox(out: Path, *, cloud_costs: bool = True) -> Iterator[SandboxHandles]:
    """Start every sandbox piece on loopback; stop them all on exit. ``cloud_costs``: the cloud portal
    costs what the vendor measured (``cloud2box sandbox up``); the demo, which runs the whole runbook
    twice within minutes, turns them off (the benchmarks measure them: bench/crm_bench.py)."""
    from sandbox.backup_maker import SANDBOX_REST_APPS
    from sandbox.backup_server import ENCRYPTION_SECRET, start_backup_sandbox
    from sandbox.box_web import start_box_web
    from sandbox.box_host import start_box_host
    from sandbox.inbox import start_inbox
    from sandbox.portal import PortalLimits, start_pair

    handles = SandboxHandles()
    with contextlib.ExitStack() as stack:
        # the cloud's backup delivery (one part corrupted on the wire) and an SSH mirror with good copies;
        # encrypted, as the cloud always writes its backups (NAME.enc.gz, aes-256-ecb)
        backup = stack.enter_context(start_backup_sandbox(out / "sandbox-backup",
                                                          encrypt_password=secrets.token_urlsafe(12)))
        handles.add("backup", backup)
        # the box host: SSH with exec + SFTP under a local root, and a fresh database on the local MariaDB
        handles.add("box_host", stack.enter_context(start_box_host(out / "sandbox-box",
                                                                   archive_password_secret=ENCRYPTION_SECRET)))
        # the cloud portal (backup + what users did after it) and the box portal (the restored backup)
        # the cloud costs what the vendor measured; the box is self-hosted: the operating limit is off
        # there by default and its speed is the customer's server (limits.md), so its writes cost
        # no simulated time and the demo stays within its budget
        # Without the costs (the demo) the cloud is on the Enterprise plan's bucket, 5 requests/s with a
        # burst of 250 (limits.md): the pre-sync, the sweeps and the steps share it within minutes.
        cloud_limits = None if cloud_costs else PortalLimits.free(**PortalLimits.ENTERPRISE_PLAN)
        pair = stack.enter_context(start_pair(limits=cloud_limits, box_limits=PortalLimits.free(rate=20.0)))
        handles.config.update(portal=pair.cloud.base_url, box_portal=pair.box.base_url)
        plan = [] if cloud_costs else [f"rate = {PortalLimits.ENTERPRISE_PLAN['rate']:g}  # the demo's cloud is on the Enterprise plan",
                                       f"burst = {PortalLimits.ENTERPRISE_PLAN['burst']}"]
        handles.toml += ["[crm_delta]", 'cloud_webhook_secret = "cloud_webhook"', 'box_webhook_secret = "box_webhook"',
                         "# the box is self-hosted: no request limit by default (limits.md)",
                         "box_rate = 20", *plan,
                         f'cutoff = {pair.cutoff.isoformat()}', ""]
        handles.secrets += ['cloud_webhook = { env = "C2B_SANDBOX_CLOUD_WEBHOOK_CODE" }',
                            'box_webhook = { env = "C2B_SANDBOX_BOX_WEBHOOK_CODE" }']
        handles.env.update(C2B_SANDBOX_CLOUD_WEBHOOK_CODE=pair.cloud_code, C2B_SANDBOX_BOX_WEBHOOK_CODE=pair.box_code)
        records = sum(len(t) for t in pair.cloud.portal.store.tables.values())
        handles.addresses += [f"cloud portal {pair.cloud.base_url}/rest/1/***/ ({records} CRM records; backup cutoff "
                              f"{pair.cutoff:%Y-%m-%d %H:%M} UTC)",
                              f"box portal {pair.box.base_url}/rest/1/***/ (the restored backup)"]
        handles.services["crm"] = pair
        # the box portal's HTTPS front (a certificate valid 90 days); the cloud's apps the box must have
        handles.add("box_web", stack.enter_context(start_box_web(out / "sandbox-box-web")))
        handles.toml += [f"cloud_apps = {json.dumps(sorted(SANDBOX_REST_APPS))}", ""]  # still under [verify]
        # the people's inboxes: the roster's notices and one-time codes land there (flows.demo.write_demo_config)
        handles.add("inbox", stack.enter_context(start_inbox()))
        yield handles

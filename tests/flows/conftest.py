"""Fixtures for flow tests: one real Prefect test server per session, configs, a scripted customer."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path

# Prefect reads its settings when first imported: isolate its home and keep it off the network.
_PREFECT_HOME = tempfile.mkdtemp(prefix="c2b-prefect-home-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ.pop("PREFECT_API_URL", None)
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "90"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
assert "prefect" not in sys.modules or os.environ.get("PREFECT_HOME") == _PREFECT_HOME

import pytest  # noqa: E402

MINI_RUNBOOK = """
[[phases]]
number = 1
title = "Preparation"
urgency = "medium"
gate = "Sign off the preparation."
  [[phases.steps]]
  id = "1.1"
  title = "Deploy the host"
  owner = "contractor"
  planned_minutes = 30
  instructions = "Deploy it."
  [[phases.steps]]
  id = "1.2"
  title = "Check the host"
  owner = "customer"
  planned_minutes = 10
  action = "{action_1_2}"

[[phases]]
number = 2
title = "Cutover"
urgency = "high"
gate = "Sign off the cutover."
  [[phases.steps]]
  id = "2.1"
  title = "Stop sales in the cloud"
  owner = "customer"
  planned_minutes = 5
  downtime = "start"
  [[phases.steps]]
  id = "2.2"
  title = "Start sales on the box"
  owner = "customer-sales"
  planned_minutes = 5
  downtime = "end"
"""


@pytest.fixture(scope="session")
def prefect_server():
    """A real Prefect API server (SQLite) for the whole session; yields its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield PREFECT_API_URL.value()


# Who signs in the tests: the demo's people (flows.customer.demo_answer chooses them), their notices
# and one-time codes delivered to the session's loopback inbox (sandbox/inbox.py).
ROSTER = [{"name": "Dana Demo", "role": "Head of Sales", "party": "customer"},
          {"name": "Alex Engineer", "role": "Migration engineer", "party": "contractor", "engineer": True}]


@pytest.fixture(scope="session")
def signer_inbox():
    """The people's inboxes on loopback for the whole session (sandbox/inbox.py)."""
    from sandbox.inbox import start_inbox

    with start_inbox() as inbox:
        yield inbox


def roster_toml(people: list[dict], inbox) -> str:
    """``[[roster]]`` tables for ``people``; a person without a contact gets their inbox's."""
    out = []
    for person in people:
        entry = {"contact": inbox.contact(person["name"]), **person}
        out.append("[[roster]]\n" + "".join(
            f"{k} = {str(v).lower() if isinstance(v, bool) else json.dumps(v)}\n" for k, v in entry.items()))
    return "".join(out)


@pytest.fixture
def make_config(tmp_path, signer_inbox):
    """Write a config + mini runbook; returns a function(journal_url=None, action_1_2='manual', extra='',
    roster=ROSTER): ``roster`` [] writes none (a rehearsal without one takes typed names)."""

    def _make(journal_url: str | None = None, action_1_2: str = "manual", extra: str = "", name: str | None = None,
              runbook: str | None = None, roster: list[dict] | None = None) -> Path:
        rb = tmp_path / f"runbook-{uuid.uuid4().hex[:6]}.toml"
        rb.write_text(runbook or MINI_RUNBOOK.format(action_1_2=action_1_2), encoding="utf-8")
        cfg = tmp_path / f"config-{uuid.uuid4().hex[:6]}.toml"
        cfg.write_text(textwrap.dedent(f"""
            [migration]
            name = "{name or 'test-' + uuid.uuid4().hex[:8]}"
            portal = "https://acme.example.invalid"
            timezone = "Europe/Berlin"
            [journal]
            url = "{journal_url or 'sqlite:///' + str(tmp_path / 'journal.db')}"
            out_dir = "{tmp_path / 'out'}"
            [prefect]
            poll_interval_s = 1
            pause_timeout_s = 120
        """) + roster_toml(ROSTER if roster is None else roster, signer_inbox) + textwrap.dedent(f"""
            [runbook]
            path = "{rb}"
        """) + extra, encoding="utf-8")
        return cfg

    return _make

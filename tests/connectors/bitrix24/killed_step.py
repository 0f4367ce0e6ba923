"""Step 2.11 in a process of its own that stops at every write boundary until told to go on, so a
test can SIGKILL it exactly there (tests/connectors/bitrix24/test_crm_delta_faults.py).

The process is forked from a fork server that has imported this module (and with it the product)
once: a kill costs the fork, not a fresh interpreter's imports (~1 s each, 38+ kills a test). The
step itself runs as a separate OS process would: its own journal connection, its own HTTP clients,
nothing shared with the test but the pipe."""

from __future__ import annotations

import multiprocessing
import traceback
from pathlib import Path

from pydantic import SecretStr

from connectors.bitrix24 import rest
from flows.actions import ActionContext
from flows.actions.crm_delta import transfer_crm_delta
from journal.store import Journal
from tests.flows.actions.helpers import action_config

_send = rest.Bitrix24Client._once


def run_step(conn, cloud_url: str, box_url: str, cutoff: str, db: str, work: str, batch_import: bool) -> None:
    """The process's target: reports ``("boundary", text)`` before and after every HTTP write to the
    box and waits for ``"go"``; ends with ``("done", None)`` or ``("error", traceback)``."""

    def boundary(text: str) -> None:
        conn.send(("boundary", text))
        if conn.recv() != "go":
            raise SystemExit(3)

    def watched(self, method, params, *, idempotent):
        # every HTTP write to the box: a boundary before it and one after it (answer in or not)
        if idempotent:
            return _send(self, method, params, idempotent=idempotent)
        what = ",".join(sorted({c.partition("?")[0] for c in (params.get("cmd") or {}).values()})) or method
        boundary("before " + what)
        try:
            return _send(self, method, params, idempotent=idempotent)
        finally:
            boundary("after " + what)

    try:
        rest.Bitrix24Client._once = watched  # this process only
        config = action_config(crm_delta={"rate": 150, "burst": 40, "box_rate": 150, "box_burst": 40, "cutoff": cutoff,
                                          "use_batch_import": batch_import, "timeout_s": 10},
                               migration={"name": "acme", "portal": "http://127.0.0.1"})
        journal = Journal("sqlite:///" + db)
        run, _ = journal.open_run(name="acme", portal="http://127.0.0.1", mode="rehearsal", timezone="UTC",
                                  config_snapshot={})
        ctx = ActionContext(config=config, secrets={"cloud_webhook": SecretStr(cloud_url),
                                                    "box_webhook": SecretStr(box_url)},
                            journal=journal, run_id=run.id, step_id="2.11", mode="rehearsal", work_dir=Path(work))
        transfer_crm_delta(ctx)
    except BaseException:  # noqa: BLE001 — the test shows it
        try:
            conn.send(("error", traceback.format_exc()[-3000:]))
        except OSError:
            pass  # the test has gone
        raise
    conn.send(("done", None))


def fork_context():
    """The multiprocessing context whose processes fork from a server that preloaded this module."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context

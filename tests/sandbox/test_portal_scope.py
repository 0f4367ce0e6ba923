"""The sandbox portal's webhook scopes: ``scope`` lists them (api-reference/common/system/scope.md)
and a method of a module outside them is refused with 403 insufficient_scope."""

from __future__ import annotations

import requests

from sandbox.portal import start_pair


def test_scope_lists_the_webhooks_scopes_and_other_modules_are_refused():
    pair = start_pair(leads=5)
    try:
        hook = pair.box.webhook
        granted = requests.post(f"{hook}scope.json", json={}, timeout=10).json()["result"]
        assert {"crm", "user"} <= set(granted)
        pair.box.portal.scopes = frozenset({"crm"})
        assert requests.post(f"{hook}scope.json", json={}, timeout=10).json()["result"] == ["crm"]
        refused = requests.post(f"{hook}user.get.json", json={}, timeout=10)
        assert refused.status_code == 403 and refused.json()["error"] == "insufficient_scope"
        assert requests.post(f"{hook}crm.lead.list.json", json={"start": -1}, timeout=10).status_code == 200
        batch = requests.post(f"{hook}batch.json", json={"cmd": {"u": "user.get"}}, timeout=10).json()
        assert batch["result"]["result_error"]["u"]["error"] == "insufficient_scope"  # inside a batch too
        assert requests.post(f"{pair.cloud.webhook}user.get.json", json={}, timeout=10).status_code == 200
    finally:
        pair.close()

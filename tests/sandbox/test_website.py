"""The naive website sync of seed 000 over real loopback HTTP: box events in, cloud writes out."""

import time

import pytest
import requests

from sandbox.portal import Portal, PortalLimits, PortalServer
from sandbox.portal.store import CrmStore
from sandbox.website import next_stamp, start_website

FAST = PortalLimits.free(rate=1000, burst=500)


@pytest.fixture
def portals():
    cloud = PortalServer(Portal(CrmStore(), limits=FAST)).start()
    box = PortalServer(Portal(CrmStore(), limits=FAST)).start()
    yield cloud, box
    box.close()
    cloud.close()


def _until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_next_stamp():
    assert next_stamp("call back") == "call back [site sync #1]"
    assert next_stamp("call back [site sync #9]") == "call back [site sync #10]"
    assert next_stamp(None) == " [site sync #1]"


def test_website_mirrors_a_box_lead_add_into_the_cloud(portals):
    cloud, box = portals
    with start_website(cloud.webhook, box.webhook, "") as site:
        # the admin creates the outgoing webhook with the site's URL, then pastes its token into the site
        site.application_token = box.portal.add_outbound_webhook(site.handler_url, ["ONCRMLEADADD",
                                                                                    "ONCRMLEADUPDATE"])
        box_id = requests.post(box.webhook + "crm.lead.add.json", json={"fields": {
            "TITLE": "Website order", "NAME": "Anna", "LAST_NAME": "Petrova", "STATUS_ID": "NEW",
            "SOURCE_ID": "WEB", "COMMENTS": "first", "ORIGINATOR_ID": "box", "ORIGIN_ID": "box-77"}},
            timeout=5).json()["result"]
        assert _until(lambda: cloud.store.count("lead") == 1)
        copy = next(iter(cloud.store.tables["lead"].values()))
        assert {k: copy.get(k) for k in ("TITLE", "NAME", "LAST_NAME", "STATUS_ID", "SOURCE_ID", "COMMENTS",
                                         "ORIGINATOR_ID", "ORIGIN_ID")} == {
            "TITLE": "Website order", "NAME": "Anna", "LAST_NAME": "Petrova", "STATUS_ID": "NEW",
            "SOURCE_ID": "WEB", "COMMENTS": "first", "ORIGINATOR_ID": "box", "ORIGIN_ID": "box-77"}
        assert site.events_received == 1 and site.requests == 2 and site.rejected == 0  # get + add
        assert box.store.get("lead", box_id) is not None


def test_website_stamps_every_update_and_rejects_a_wrong_token(portals):
    cloud, box = portals
    cloud_id = cloud.store.add("lead", {"TITLE": "from the cloud", "COMMENTS": "call back"})
    box_id = box.store.add("lead", {"TITLE": "from the cloud", "COMMENTS": "call back",
                                    "ORIGINATOR_ID": "cloud", "ORIGIN_ID": str(cloud_id)})
    with start_website(cloud.webhook, box.webhook, "x" * 32) as site:
        site.application_token = box.portal.add_outbound_webhook(site.handler_url, ["ONCRMLEADUPDATE"])
        update = box.webhook + "crm.lead.update.json"
        requests.post(update, json={"id": box_id, "fields": {"STATUS_ID": "IN_PROCESS"}}, timeout=5)
        assert _until(lambda: cloud.store.get("lead", cloud_id)["COMMENTS"] == "call back [site sync #1]")
        requests.post(update, json={"id": box_id, "fields": {"COMMENTS": "call back [site sync #1]"}}, timeout=5)
        assert _until(lambda: cloud.store.get("lead", cloud_id)["COMMENTS"] == "call back [site sync #2]")
        # a forged event: 401, counted, nothing written
        r = requests.post(site.handler_url, data={"event": "ONCRMLEADUPDATE", "data[FIELDS][ID]": str(box_id),
                                                  "auth[application_token]": "forged"}, timeout=5)
        assert r.status_code == 401 and site.rejected == 1
        assert site.events_received == 2
        assert _until(lambda: box.portal.events_sent == 2) and box.portal.events_failed == 0


def test_two_naive_syncs_echo_until_the_bound(portals):
    """Seed 000: box → website → cloud and cloud → (the same naive code) → box; one update echoes
    back and forth until each side's max_events bound is spent."""
    cloud, box = portals
    cloud_id = cloud.store.add("lead", {"TITLE": "ping", "COMMENTS": "test"})
    box_id = box.store.add("lead", {"TITLE": "ping", "COMMENTS": "test", "ORIGIN_ID": str(cloud_id)})
    cloud.store.update("lead", cloud_id, {"ORIGIN_ID": str(box_id)})
    bound = 15
    with start_website(cloud.webhook, box.webhook, "", max_events=bound) as to_cloud, \
            start_website(box.webhook, cloud.webhook, "", max_events=bound) as to_box:
        to_cloud.application_token = box.portal.add_outbound_webhook(to_cloud.handler_url, ["ONCRMLEADUPDATE"])
        to_box.application_token = cloud.portal.add_outbound_webhook(to_box.handler_url, ["ONCRMLEADUPDATE"])
        requests.post(box.webhook + "crm.lead.update.json", json={"id": box_id, "fields": {"TITLE": "pong"}},
                      timeout=5)
        assert _until(lambda: to_cloud.acted == bound and to_box.acted == bound, timeout=10)
        # the last write's event still arrives and is ignored: only the bound stopped the echo
        assert _until(lambda: to_cloud.events_received > bound)
        assert _until(lambda: box.store.get("lead", box_id)["COMMENTS"].endswith(f"[site sync #{2 * bound}]"))
        assert cloud.store.get("lead", cloud_id)["COMMENTS"].endswith(f"[site sync #{2 * bound - 1}]")
        assert to_cloud.requests + to_box.requests == 4 * bound  # a get and an update per hop

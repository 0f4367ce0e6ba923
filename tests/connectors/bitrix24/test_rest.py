"""The REST client against the sandbox portal over loopback HTTP."""

import logging

import pytest

from connectors.bitrix24.lists import fast_list, iter_rows, offset_list
from connectors.bitrix24.rest import AmbiguousWriteError, Bitrix24Client, LeakyBucket
from connectors.errors import AuthError, RateLimitedError, TransientError
from sandbox.portal import PortalLimits

from .crm_helpers import clients, make_pair


@pytest.fixture
def pair():
    p = make_pair()
    yield p
    p.close()


def test_wrong_code_fails_fast_without_retry_storm(pair, caplog):
    bad = pair.cloud.base_url + "/rest/1/not-the-code-0000/"
    client = Bitrix24Client(bad, name="the cloud portal", timeout=5)
    before = pair.cloud.portal.requests
    with pytest.raises(AuthError) as err:
        client.call("crm.lead.list")
    assert client.requests == 1  # one request, no retries
    assert pair.cloud.portal.requests == before  # refused before the bucket
    msg = str(err.value)
    assert "webhook" in msg and "NO_AUTH_FOUND" in msg and "not-the-code-0000" not in msg


def test_rate_limit_and_operating_limit_are_waited_out(pair, caplog):
    cloud, _ = clients(pair)
    pair.cloud.faults.inject("QUERY_LIMIT_EXCEEDED", times=3)
    pair.cloud.faults.inject("OPERATION_TIME_LIMIT", times=1, reset_in=0.3)
    with caplog.at_level(logging.WARNING, logger="cloud2box"):
        body = cloud.call("crm.lead.list", {"start": -1})
    assert len(body["result"]) == 50
    assert pair.cloud.faults.fired["QUERY_LIMIT_EXCEEDED"] == 3
    assert pair.cloud.faults.fired["OPERATION_TIME_LIMIT"] == 1
    assert cloud.requests == 5
    assert pair.cloud_code not in caplog.text and pair.cloud_webhook not in caplog.text


def test_transient_errors_are_bounded(pair):
    cloud = Bitrix24Client(pair.cloud_webhook, rate=100, burst=10, max_attempts=3, sleep=lambda s: None)
    pair.cloud.faults.inject("INTERNAL_SERVER_ERROR", times=10)
    with pytest.raises(TransientError):
        cloud.call("crm.lead.list")
    assert cloud.requests == 3


def test_html_page_with_200_is_not_a_result(pair):
    cloud = Bitrix24Client(pair.cloud_webhook, rate=100, burst=10, max_attempts=2, sleep=lambda s: None)
    pair.cloud.faults.inject("HTML_200", times=5)
    with pytest.raises(TransientError, match="without JSON"):
        cloud.call("crm.lead.list")


def test_writes_with_unknown_outcome_are_not_retried(pair):
    _, box = clients(pair)
    pair.box.faults.inject("DROP_AFTER_WRITE", times=1, method="crm.lead.add")
    before = pair.box.store.count("lead")
    with pytest.raises(AmbiguousWriteError):
        box.call("crm.lead.add", {"fields": {"TITLE": "x"}}, idempotent=False)
    assert pair.box.store.count("lead") == before + 1  # it did happen, once
    assert box.requests == 1


def test_client_bucket_keeps_the_portal_from_refusing():
    from sandbox.portal import PortalServer, Portal
    from sandbox.portal.store import CrmStore

    portal = Portal(CrmStore(), limits=PortalLimits.free(rate=20, burst=5))
    with PortalServer(portal) as srv:
        client = Bitrix24Client(srv.webhook, rate=20, burst=5)
        for _ in range(15):
            client.call("user.get")
        assert portal.rejected == 0


def test_leaky_bucket_waits_after_the_burst():
    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    bucket = LeakyBucket(rate=2.0, burst=5, clock=lambda: now[0], sleep=sleep)
    for _ in range(4):
        assert bucket.acquire() == 0.0
    waited = sum(bucket.acquire() for _ in range(4))
    assert waited == pytest.approx(4 / 2.0, rel=0.2)


def test_fast_list_equals_offset_list_and_counts_nothing(pair):
    cloud, _ = clients(pair)
    fast = [r["ID"] for r in iter_rows(cloud, "crm.lead.list", select=["ID"])]
    slow = [r["ID"] for page in offset_list(cloud, "crm.lead.list", select=["ID"]) for r in page]
    stored = [str(i) for i in pair.cloud.store.ids["lead"]]
    assert fast == slow == stored
    items = [str(r["id"]) for page in fast_list(cloud, "crm.item.list", extra={"entityTypeId": 1}, select=["id"])
             for r in page]
    assert items == stored


def test_fast_list_ends_on_a_short_page(pair):
    cloud, _ = clients(pair)
    ids = pair.cloud.store.ids["lead"]
    after = ids[-58]  # exactly 57 rows after it: one full page, one short page
    rows = list(iter_rows(cloud, "crm.lead.list", select=["ID"], after_id=after))
    assert [int(r["ID"]) for r in rows] == ids[-57:]


@pytest.mark.parametrize("status,code,kind", [
    (503, "QUERY_LIMIT_EXCEEDED", "RateLimitedError"),
    (200, "OPERATION_TIME_LIMIT", "RateLimitedError"),
    (401, "NO_AUTH_FOUND", "AuthError"),
    (200, "insufficient_scope", "AuthError"),
    (200, "INTERNAL_SERVER_ERROR", "TransientError"),
    (404, "ERROR_METHOD_NOT_FOUND", "FatalError"),
    (400, "INVALID_ARG_VALUE", "FatalError"),
])
def test_the_portal_codes_reach_the_one_classifier(status, code, kind):
    """The generic rules are tested in tests/connectors/test_http_errors.py; here, Bitrix24's hook."""
    from connectors.bitrix24.errors import BITRIX24_CODES
    from connectors.http_errors import classify

    err = classify(status, error_code=code, codes=BITRIX24_CODES)
    assert type(err).__name__ == kind


def test_a_limit_on_commands_inside_a_batch_is_waited_out_not_fatal(pair):
    """OPERATION_TIME_LIMIT on single commands of a batch (HTTP 200, result_error): the listing
    waits, in the client's one retry loop, and ends complete."""
    cloud = Bitrix24Client(pair.cloud_webhook, rate=150, burst=40, max_attempts=4)
    pair.cloud.faults.inject("OPERATION_TIME_LIMIT", times=2, method="crm.lead.list", reset_in=0.2)
    ids = [int(r["ID"]) for r in iter_rows(cloud, "crm.lead.list", select=["ID"])]
    assert ids == pair.cloud.store.ids["lead"]
    assert pair.cloud.faults.fired["OPERATION_TIME_LIMIT"] == 2 and cloud.waited_s > 0
    res = cloud.batch({"a": "crm.lead.list?start=-1", "b": "crm.nosuch.method"})
    assert type(cloud.command_error({"b": "crm.nosuch.method"}, res, "b")).__name__ == "FatalError"
    # what stays refused within the bound is raised as what it is: a limit, never a fatal error
    pair.cloud.faults.inject("OPERATION_TIME_LIMIT", times=10_000, method="crm.lead.list")  # 1 per command
    impatient = Bitrix24Client(pair.cloud_webhook, rate=150, burst=40, max_attempts=2, sleep=lambda s: None)
    with pytest.raises(RateLimitedError):
        list(iter_rows(impatient, "crm.lead.list", select=["ID"]))
    pair.cloud.faults.clear()


def test_writes_refused_by_a_limit_are_sent_again_only_when_nothing_ran(pair):
    _, box = clients(pair)
    before = pair.box.store.count("lead")
    adds = {f"c{i}": f"crm.lead.add?fields[TITLE]=limit{i}" for i in range(3)}
    # the first command refused, the batch halted: nothing ran, the same request goes again
    pair.box.faults.inject("OPERATION_TIME_LIMIT", times=1, method="crm.lead.add")
    res = box.batch(adds, halt=True, idempotent=False)
    assert sorted(res["result"]) == ["c0", "c1", "c2"] and pair.box.store.count("lead") == before + 3
    # without halt the others ran: the batch is not sent again; the refused command says it was a limit
    pair.box.faults.inject("OPERATION_TIME_LIMIT", times=1, method="crm.lead.add")
    res = box.batch(adds, idempotent=False)
    assert sorted(res["result"]) == ["c1", "c2"] and pair.box.store.count("lead") == before + 5
    assert isinstance(box.command_error(adds, res, "c0"), RateLimitedError)
    # a refused request (503) is safe to send again, writes too
    pair.box.faults.inject("QUERY_LIMIT_EXCEEDED", times=2)
    box.call("crm.lead.add", {"fields": {"TITLE": "after 503"}}, idempotent=False)
    assert pair.box.store.count("lead") == before + 6


def test_a_write_timing_out_says_so():
    """A write without an answer within the timeout is ambiguous and says it timed out (the box
    may still be executing it); a connection that was never made is not ambiguous."""
    import http.server
    import threading
    import time as _time

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            _time.sleep(0.6)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        client = Bitrix24Client(f"http://127.0.0.1:{srv.server_address[1]}/rest/1/slowcode/", timeout=0.2)
        with pytest.raises(AmbiguousWriteError) as caught:
            client.call("crm.lead.add", {"fields": {}}, idempotent=False)
        assert caught.value.timed_out
    finally:
        srv.shutdown()
        srv.server_close()
    dead = Bitrix24Client("http://127.0.0.1:9/rest/1/deadcode/", timeout=1, max_attempts=1)
    with pytest.raises(TransientError) as caught:
        dead.call("crm.lead.add", {"fields": {}}, idempotent=False)
    assert not isinstance(caught.value, AmbiguousWriteError)

"""The sandbox portal over real HTTP: the vendor's behaviour the connector depends on."""

import time

import pytest
import requests

from sandbox.portal import Portal, PortalLimits, PortalServer, start_pair
from sandbox.portal.store import CrmStore


@pytest.fixture
def pair():
    p = start_pair(limits=PortalLimits(rate=500, burst=50), leads=120, deals=40, contacts=40, companies=20)
    yield p
    p.close()


def test_wrong_code_is_401_no_auth_found(pair):
    r = requests.get(f"{pair.cloud.base_url}/rest/1/wrongcode/crm.lead.list.json", timeout=5)
    assert r.status_code == 401 and r.json()["error"] == "NO_AUTH_FOUND"


def test_envelope_paging_and_count(pair):
    url = pair.cloud_webhook + "crm.lead.list.json"
    r = requests.get(url, params={"start": 0}, timeout=5).json()
    assert len(r["result"]) == 50 and r["next"] == 50 and r["total"] == pair.cloud.store.count("lead")
    assert {"operating", "operating_reset_at", "duration"} <= set(r["time"])
    r = requests.get(url, params={"start": -1, "order[ID]": "ASC", "filter[>ID]": 100, "select[]": ["ID", "PHONE"]},
                     timeout=5).json()
    assert "total" not in r and "next" not in r
    assert all(int(row["ID"]) > 100 for row in r["result"])
    assert [int(x["ID"]) for x in r["result"]] == sorted(int(x["ID"]) for x in r["result"])
    # POST form-encoded and JSON give the same answer
    form = requests.post(url, data={"start": -1, "filter[>ID]": 100, "select[0]": "ID"}, timeout=5).json()
    js = requests.post(url, json={"start": -1, "filter": {">ID": 100}, "select": ["ID"]}, timeout=5).json()
    assert form["result"] == js["result"] == [{"ID": x["ID"]} for x in r["result"]]


def test_batch_references_and_result_error(pair):
    cmd = {"a": "crm.lead.list?order[ID]=ASC&filter[>ID]=0&start=-1&select[0]=ID",
           "b": "crm.lead.list?order[ID]=ASC&filter[>ID]=$result[a][49][ID]&start=-1&select[0]=ID",
           "c": "crm.nothing.here?x=1"}
    res = requests.post(pair.cloud_webhook + "batch.json", json={"halt": 0, "cmd": cmd}, timeout=5).json()["result"]
    a, b = res["result"]["a"], res["result"]["b"]
    assert len(a) == 50 and int(b[0]["ID"]) > int(a[-1]["ID"])
    assert res["result_error"]["c"]["error"] == "ERROR_METHOD_NOT_FOUND"


def test_leaky_bucket_and_operating_limit():
    portal = Portal(CrmStore(), limits=PortalLimits(rate=0.5, burst=3))
    with PortalServer(portal) as srv:
        codes = [requests.get(srv.webhook + "user.get.json", timeout=5).status_code for _ in range(5)]
        assert codes[:3] == [200, 200, 200] and 503 in codes[3:]
        body = requests.get(srv.webhook + "profile.json", timeout=5).json()
        assert body["error"] == "QUERY_LIMIT_EXCEEDED"
    portal = Portal(CrmStore(), limits=PortalLimits(rate=100, burst=50, operating_limit_s=0.0))
    with PortalServer(portal) as srv:
        requests.get(srv.webhook + "crm.lead.list.json", timeout=5)  # uses some operating time
        r = requests.get(srv.webhook + "crm.lead.list.json", timeout=5)
        assert r.status_code == 429 and r.json()["error"] == "OPERATION_TIME_LIMIT"
        assert r.json()["time"]["operating_reset_at"] > time.time()


def test_offset_paging_pays_for_the_count(pair):
    pair.cloud.portal.limits.count_cost_s = 1e-3
    t0 = time.perf_counter()
    requests.get(pair.cloud_webhook + "crm.lead.list.json", params={"start": 0}, timeout=10)
    counted = time.perf_counter() - t0
    assert counted >= pair.cloud.store.count("lead") * 1e-3 * 0.9
    t0 = time.perf_counter()
    requests.get(pair.cloud_webhook + "crm.lead.list.json", params={"start": -1}, timeout=10)
    assert time.perf_counter() - t0 < counted  # no count with start=-1


def test_batch_import_limits_and_origin(pair):
    url = pair.box_webhook + "crm.item.batchImport.json"
    r = requests.post(url, json={"entityTypeId": 1, "data": [{"title": "x"}] * 21}, timeout=5)
    assert r.status_code == 400
    r = requests.post(url, json={"entityTypeId": 1, "data": [
        {"title": "old", "createdTime": "2020-01-01T00:00:00+00:00"},
        {"title": "new", "originatorId": "cloud2box", "originId": "777"}]}, timeout=5).json()
    items = r["result"]["items"]
    assert "error" in items[0]  # older than the box's newest record: refused
    new_id = items[1]["item"]["id"]
    rec = pair.box.store.get("lead", new_id)
    assert rec["ORIGINATOR_ID"] == "cloud2box" and rec["ORIGIN_ID"] == "777"
    found = requests.get(pair.box_webhook + "crm.lead.list.json", params={
        "filter[ORIGINATOR_ID]": "cloud2box", "filter[ORIGIN_ID]": "777", "start": -1}, timeout=5).json()["result"]
    assert [int(x["ID"]) for x in found] == [new_id]


def test_faults_from_tests(pair):
    pair.cloud.faults.inject("INTERNAL_SERVER_ERROR", times=1, method="crm.lead.list")
    assert requests.get(pair.cloud_webhook + "crm.lead.list", timeout=5).status_code == 500
    assert requests.get(pair.cloud_webhook + "crm.lead.list", timeout=5).status_code == 200


# --- users, telephony, tasks, outgoing webhooks --------------------------------------------------

import datetime as dt  # noqa: E402
import threading  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402
from urllib.parse import parse_qsl  # noqa: E402

from connectors.bitrix24.rest import Bitrix24Client  # noqa: E402
from connectors.errors import MigrationError  # noqa: E402


def _client(srv) -> Bitrix24Client:
    return Bitrix24Client(srv.webhook, rate=500, burst=50, timeout=5, max_attempts=1)


def test_user_add_and_get_by_filter(pair):
    cloud = _client(pair.cloud)
    new_id = cloud.call("user.add", {"EMAIL": "New.Hire@corp.example", "NAME": "New", "LAST_NAME": "Hire",
                                     "UF_DEPARTMENT": [1]}, idempotent=False)["result"]
    assert isinstance(new_id, int) and new_id == max(pair.cloud.store.users)
    found = cloud.call("user.get", {"FILTER": {"EMAIL": "new.hire@corp.example"}})
    assert [u["ID"] for u in found["result"]] == [str(new_id)] and found["total"] == 1
    assert found["result"][0]["ACTIVE"] is True and found["result"][0]["UF_DEPARTMENT"] == [1]
    # the docs' other spellings: lower-case filter, top-level fields, ACTIVE, start=-1 without a count
    assert cloud.call("user.get", {"filter": {"EMAIL": "new.hire@corp.example"}})["total"] == 1
    assert cloud.call("user.get", {"UF_DEPARTMENT": 1})["total"] == 1
    pair.cloud.store.users[2]["ACTIVE"] = False
    active = cloud.call("user.get", {"FILTER": {"ACTIVE": True}, "start": -1})
    assert "total" not in active and "2" not in [u["ID"] for u in active["result"]]
    assert len(active["result"]) == len(pair.cloud.store.users) - 1
    # a used e-mail and a bad one: 400 ERROR_ARGUMENT, as the docs list
    r = requests.post(pair.cloud_webhook + "user.add.json", json={"EMAIL": "NEW.HIRE@corp.example"}, timeout=5)
    assert r.status_code == 400 and r.json()["error"] == "ERROR_ARGUMENT"
    r = requests.post(pair.cloud_webhook + "user.add.json", json={"NAME": "no mail"}, timeout=5)
    assert r.json() == {"error": "ERROR_ARGUMENT", "error_description": "wrong_email"}
    with pytest.raises(MigrationError):
        cloud.call("user.add", {"EMAIL": "user1@corp.example"}, idempotent=False)


def test_external_lines_need_an_application_context(pair):
    url = pair.box.app_endpoint + "telephony.externalLine.get.json"
    token = pair.box.portal.app_token
    assert requests.post(url, json={"auth": token}, timeout=5).json()["result"] == []  # a fresh box has none
    # an incoming webhook is refused, as the docs say ("works only in the context of an application")
    r = requests.post(pair.box_webhook + "telephony.externalLine.get.json", json={}, timeout=5)
    assert r.status_code == 403 and r.json()["error"] == "WRONG_AUTH_TYPE"
    assert requests.post(url, json={"auth": "wrong"}, timeout=5).status_code == 401
    add = pair.box.app_endpoint + "telephony.externalLine.add.json"
    r = requests.post(add, json={"NUMBER": "74951234567", "NAME": "Support", "CRM_AUTO_CREATE": "N", "auth": token},
                      timeout=5).json()
    assert r["result"] == {"ID": 1}
    requests.post(add, json={"NUMBER": "74957654321", "NAME": "Main", "auth": token}, timeout=5)
    assert requests.post(url, json={"auth": token}, timeout=5).json()["result"] == [
        {"NUMBER": "74951234567", "NAME": "Support", "CRM_AUTO_CREATE": "N"},
        {"NUMBER": "74957654321", "NAME": "Main", "CRM_AUTO_CREATE": "Y"}]
    dup = requests.post(add, json={"NUMBER": "74951234567", "auth": token}, timeout=5).json()
    assert dup == {"error": "ERROR_CORE", "error_description": "Line already exists"}
    delete = pair.box.app_endpoint + "telephony.externalLine.delete.json"
    assert requests.post(delete, json={"NUMBER": "74951234567", "auth": token}, timeout=5).json()["result"] == []
    gone = requests.post(delete, json={"NUMBER": "74951234567", "auth": token}, timeout=5).json()
    assert gone == {"error": "ERROR_CORE", "error_description": "Could not find line with number 74951234567"}
    assert [x["NUMBER"] for x in pair.box.store.external_lines.values()] == ["74957654321"]


def test_tasks_list_filters_pages_and_camel_case(pair):
    cloud = _client(pair.cloud)
    n_tasks = len(pair.dataset.tasks)
    assert n_tasks == 30 and pair.cloud.store.tasks.keys() == pair.box.store.tasks.keys()
    first = cloud.call("tasks.task.list", {"select": ["ID", "TITLE", "CREATED_DATE"]})
    tasks = first["result"]["tasks"]
    assert first["total"] == n_tasks and "next" not in first
    assert [int(t["id"]) for t in tasks] == sorted(pair.cloud.store.tasks, reverse=True)  # default: ID desc
    assert set(tasks[0]) == {"id", "title", "createdDate"}
    mid = pair.dataset.tasks[14]["CREATED_DATE"]
    page = cloud.call("tasks.task.list", {"order": {"ID": "asc"}, "filter": {"<=CREATED_DATE": mid.isoformat(),
                                                                             ">ID": 3},
                                          "select": ["ID", "CREATED_DATE", "CREATED_BY"], "start": -1})
    assert "total" not in page and "next" not in page
    ids = [int(t["id"]) for t in page["result"]["tasks"]]
    assert ids == list(range(4, 16))  # tasks are numbered in creation order
    assert dt.datetime.fromisoformat(page["result"]["tasks"][-1]["createdDate"]) == mid
    for i in range(60):  # a second page
        pair.cloud.store.add_task(f"extra {i}", mid, 1)
    p1 = cloud.call("tasks.task.list", {"order": {"ID": "asc"}, "select": ["ID"]})
    assert len(p1["result"]["tasks"]) == 50 and p1["next"] == 50 and p1["total"] == n_tasks + 60
    p2 = cloud.call("tasks.task.list", {"order": {"ID": "asc"}, "select": ["ID"], "start": 50})
    assert len(p2["result"]["tasks"]) == 40 and "next" not in p2


def test_task_comments_match_until_the_cutoff(pair):
    cloud, box = _client(pair.cloud), _client(pair.box)
    task = next(t for t in pair.dataset.tasks if len(t["comments"]) >= 2 and t["ID"] in
                {c[0] for c in pair.dataset.post_comments})
    cutoff = pair.cutoff.isoformat()
    params = {"TASKID": task["ID"], "ORDER": {"ID": "asc"}, "FILTER": {"<=POST_DATE": cutoff}}
    on_cloud = cloud.call("task.commentitem.getlist", params)["result"]
    on_box = box.call("task.commentitem.getlist", params)["result"]
    assert on_cloud == on_box and [int(c["ID"]) for c in on_cloud] == [c[0] for c in task["comments"]]
    assert {"ID", "AUTHOR_ID", "AUTHOR_NAME", "POST_DATE", "POST_MESSAGE"} <= set(on_cloud[0])
    everything = cloud.call("task.commentitem.getlist", {"TASKID": task["ID"]})["result"]
    assert len(everything) > len(on_cloud)  # the cloud got comments after the backup
    assert [int(c["ID"]) for c in everything] == sorted((int(c["ID"]) for c in everything), reverse=True)
    after = cloud.call("task.commentitem.getlist", {"TASKID": task["ID"], "ORDER": {},
                                                    "FILTER": {">POST_DATE": cutoff}})["result"]
    assert len(after) == len(everything) - len(on_cloud)
    # the positional form, and the docs' warning: FILTER where ORDER belongs is refused
    r = requests.post(pair.box_webhook + "task.commentitem.getlist.json",
                      json=[task["ID"], {"ID": "asc"}, {"<=POST_DATE": cutoff}], timeout=5)
    assert r.status_code == 200 and [c["ID"] for c in r.json()["result"]] == [c["ID"] for c in on_box]
    r = requests.post(pair.box_webhook + "task.commentitem.getlist.json",
                      json={"TASKID": task["ID"], "FILTER": {"<=POST_DATE": cutoff}}, timeout=5)
    assert r.status_code == 400 and r.json()["error"] == "ERROR_CORE" and "arOrder" in r.json()["error_description"]
    # the fault the verification must catch: the box shows fewer comments
    pair.box.store.delete_comment(task["ID"], task["comments"][0][0])
    assert len(box.call("task.commentitem.getlist", params)["result"]) == len(on_cloud) - 1


class _Receiver:
    """A loopback handler that records what the portal POSTs."""

    def __init__(self, status: int = 200) -> None:
        self.posts: list[tuple[str, list[tuple[str, str]]]] = []
        self.got = threading.Event()
        receiver = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                receiver.posts.append((self.headers.get("Content-Type"), parse_qsl(raw)))
                receiver.got.set()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}/handler"
        threading.Thread(target=self.srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    def wait(self, n: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.posts) < n and time.monotonic() < deadline:
            time.sleep(0.02)

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()


def test_outgoing_webhook_posts_documented_form():
    portal = Portal(CrmStore(), limits=PortalLimits(rate=500, burst=50))
    receiver = _Receiver()
    with PortalServer(portal) as srv:
        with pytest.raises(ValueError):
            portal.add_outbound_webhook("http://example.com/handler", ["ONCRMLEADADD"])
        with pytest.raises(ValueError):
            portal.add_outbound_webhook(receiver.url, ["ONCRMNOSUCHEVENT"])
        token = portal.add_outbound_webhook(receiver.url, ["ONCRMLEADADD", "ONCRMLEADUPDATE", "ONCRMDEALDELETE"])
        lead_id = requests.post(srv.webhook + "crm.lead.add.json", json={"fields": {"TITLE": "t"}},
                                timeout=5).json()["result"]
        requests.post(srv.webhook + "crm.lead.update.json", json={"id": lead_id, "fields": {"TITLE": "u"}}, timeout=5)
        requests.post(srv.webhook + "crm.contact.add.json", json={"fields": {"NAME": "not subscribed"}}, timeout=5)
        requests.post(srv.webhook + "crm.item.batchImport.json",
                      json={"entityTypeId": 1, "data": [{"title": "imported"}]}, timeout=5)
        receiver.wait(3)
        deadline = time.monotonic() + 5  # the portal counts an event once the handler has answered
        while portal.events_sent < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert portal.events_sent == 3 and portal.events_failed == 0
        ctype, form = receiver.posts[0]
        assert ctype == "application/x-www-form-urlencoded"
        fields = dict(form)
        assert [k for k, _ in form] == ["event", "event_handler_id", "data[FIELDS][ID]", "ts", "auth[domain]",
                                        "auth[client_endpoint]", "auth[server_endpoint]", "auth[member_id]",
                                        "auth[application_token]"]
        assert fields["event"] == "ONCRMLEADADD" and fields["data[FIELDS][ID]"] == str(lead_id)
        assert fields["auth[application_token]"] == token and fields["auth[domain]"] == f"127.0.0.1:{srv.port}"
        assert fields["auth[client_endpoint]"] == f"http://127.0.0.1:{srv.port}/rest/"
        assert abs(int(fields["ts"]) - time.time()) < 10
        assert [dict(f)["event"] for _, f in receiver.posts] == ["ONCRMLEADADD", "ONCRMLEADUPDATE", "ONCRMLEADADD"]
        # no retries: a failing handler loses the event, counted
        receiver.close()
        requests.post(srv.webhook + "crm.lead.add.json", json={"fields": {"TITLE": "lost"}}, timeout=5)
        deadline = time.monotonic() + 5
        while portal.events_failed < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert portal.events_failed == 1 and portal.events_sent == 3
        portal.remove_outbound_webhooks()
        requests.post(srv.webhook + "crm.lead.add.json", json={"fields": {"TITLE": "nobody listens"}}, timeout=5)
    assert portal.events_failed == 1 and portal.events_sent == 3


def test_generated_data_unchanged_by_tasks():
    from sandbox.portal import generate
    a, b = generate(leads=50, deals=10, tasks=0), generate(leads=50, deals=10)
    assert a.backup == b.backup and [(c.kind, c.record_id) for c in a.changes] == [(c.kind, c.record_id)
                                                                                      for c in b.changes]
    assert all(c[2] <= b.cutoff for t in b.tasks for c in t["comments"])
    assert all(c[3] > b.cutoff for c in b.post_comments)

"""Notices go through apprise's json:// to a real HTTP server on loopback and are journaled."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import socket
import threading

import pytest

from connectors.errors import ConfigError
from connectors.secrets import register_secret
from pydantic import SecretStr

from journal.configuration import NoticesSection, resolve_notice_urls
from journal.forecast import Forecast, StepForecast
from journal.notices import (KINDS, Notifier, announcement_values, next_update_due, summary_values, target_label)
from journal.store import Journal
from journal.triage import report_issue, resolve_issue

T0 = dt.datetime(2026, 3, 20, 19, 0, tzinfo=dt.timezone.utc)


class _Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.received.append({"path": self.path, "json": json.loads(body)})
        status = 500 if self.path.startswith("/broken") else 200
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def journal(tmp_path):
    return Journal(f"sqlite:///{tmp_path / 'j.db'}")


@pytest.fixture
def run_id(journal):
    run, _ = journal.open_run(name="acme", portal="https://acme.example.invalid", mode="cutover",
                              timezone="Europe/Moscow", config_snapshot={})
    return run.id


CONTEXT = {"name": "acme", "portal": "https://acme.example.invalid", "box_portal": "https://crm.acme.example",
           "contact": "Alex Engineer <alex@contractor.example>", "timezone": "Europe/Moscow"}


class Clock:
    def __init__(self):
        self.now = T0

    def __call__(self):
        return self.now


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_progress_notice_delivered_and_journaled(journal, run_id, receiver):
    port = receiver.server_address[1]
    register_secret("tok3n-abcdef")
    urls = [f"json://127.0.0.1:{port}/hooks/tok3n-abcdef"]
    clock = Clock()
    notifier = Notifier(journal, run_id, NoticesSection(next_update_minutes=30), urls, context=CONTEXT, clock=clock)
    result = notifier.send("progress", known="12 of 30 backup parts are downloaded; no errors so far.",
                           impact="Sales managers cannot use the CRM; leads go to the shared sheet.",
                           eta=T0 + dt.timedelta(hours=3))
    assert result.ok and result.delivered == [f"json://127.0.0.1:{port}"]
    [post] = receiver.received
    assert post["path"].startswith("/hooks/")
    msg = post["json"]
    assert msg["title"].startswith("CRM move update")
    body = msg["message"]
    assert "12 of 30 backup parts" in body and "shared sheet" in body
    assert "Next update: 2026-03-20 19:30 UTC (22:30 Europe/Moscow)" in body
    assert "Expected end of the downtime:** 2026-03-20 22:00 UTC" in body

    [event] = journal.events(run_id, "notice")
    assert event.data["notice"] == "progress" and event.data["delivered"] == [f"json://127.0.0.1:{port}"]
    assert "tok3n" not in json.dumps(event.data) and "tok3n" not in event.message
    assert next_update_due(journal, run_id) == T0 + dt.timedelta(minutes=30)


def test_failed_delivery_is_journaled(journal, run_id, receiver):
    port = receiver.server_address[1]
    urls = [f"json://127.0.0.1:{port}/broken", f"json://127.0.0.1:{_free_port()}/nobody", "nonsense://"]
    notifier = Notifier(journal, run_id, NoticesSection(timeout_s=3), urls, context=CONTEXT, clock=Clock())
    result = notifier.send("downtime-started", started_at=T0, expected_end=T0 + dt.timedelta(minutes=40))
    assert not result.ok and len(result.failed) == 3
    assert len(receiver.received) == 1  # the broken endpoint did get the post
    [event] = journal.events(run_id, "notice")
    assert "FAILED for 3 of 3" in event.message
    assert {f["target"] for f in event.data["failed"]} >= {f"json://127.0.0.1:{port}", "nonsense://***"}


def test_dry_run_writes_files(journal, run_id, tmp_path):
    notifier = Notifier(journal, run_id, NoticesSection(dry_run=True, out_dir=tmp_path / "notices"),
                        ["json://127.0.0.1:9/never"], context=CONTEXT, clock=Clock())
    result = notifier.send("workaround", downtime_s=3700)
    assert result.file.exists() and result.file.parent == tmp_path / "notices"
    text = result.file.read_text(encoding="utf-8")
    assert "shared sheet" in text and "62 min" in text
    assert journal.events(run_id, "notice")[0].data["dry_run"] is True


def test_progress_must_say_what_is_known(journal, run_id):
    notifier = Notifier(journal, run_id, NoticesSection(dry_run=True), [], context=CONTEXT, clock=Clock())
    with pytest.raises(ValueError, match="known and impact"):
        notifier.render("progress", next_update_at=T0)


@pytest.mark.parametrize("language", ["en", "ru", "de"])
def test_every_kind_renders_in_every_shipped_language(journal, run_id, language):
    forecast = Forecast("r1", [
        StepForecast("2.10", "Stop", 2, "customer", "manual", "manual", 300, 450, downtime="start"),
        StepForecast("2.11", "Delta", 2, "contractor", "crm_delta", "automated", 600, 900),
        StepForecast("2.12", "Start", 2, "customer", "manual", "manual", 300, 450, downtime="end"),
    ], start=T0)
    issue = report_issue(journal, run_id, title="Users cannot log in", reported_by="Dana")
    resolve_issue(journal, issue.id, resolved_by="Alex", resolution="passwords reset",
                  root_cause="Bitrix24.Network passwords are not stored on the portal")
    journal.add_event(run_id, "downtime-start", "user downtime starts (step 2.10)")
    notifier = Notifier(journal, run_id, NoticesSection(language=language), [], context=CONTEXT, clock=Clock())
    values = {
        "announcement": announcement_values(forecast, backup_date=T0 - dt.timedelta(days=2)),
        "downtime-started": {"started_at": T0, "expected_end": T0 + dt.timedelta(minutes=20)},
        "progress": {"known": "KNOWN-TEXT", "impact": "IMPACT-TEXT", "next_update_at": T0},
        "workaround": {"downtime_s": 3600, "next_update_at": T0},
        "completed": {"started_at": T0, "ended_at": T0 + dt.timedelta(minutes=25), "open_issues": []},
        "summary": {**summary_values(journal, run_id, corrective_actions=["reset passwords before the cutover"]),
                    "window_start": T0, "window_end": T0 + dt.timedelta(minutes=25)},
        "stragglers": {"since": T0, "stragglers": [{"name": "Ivan Petrov", "email": "ivan@corp.example", "records": 3,
                                                    "last_at": "2026-03-20T19:30:00+00:00"}]},
        "sync-alert": {"headline": "lead 7 quarantined", "detail": "changed 6 times", "action": "not synced",
                       "fix": "stop the loop"},
    }
    for kind in KINDS:
        notice = notifier.render(kind, **values[kind])
        assert notice.title and notice.body.strip(), kind
        assert "{{" not in notice.body and "{%" not in notice.body
    summary = notifier.render("summary", **values["summary"]).body
    assert "Bitrix24.Network passwords" in summary and "reset passwords before the cutover" in summary
    assert "2026-03-20 19:00 UTC" in summary
    ann = notifier.render("announcement", **values["announcement"]).body
    assert "19:05 UTC" in ann  # the window starts when step 2.10 is forecast to end


def test_templates_overridable_per_language(journal, run_id, tmp_path):
    (tmp_path / "tpl" / "en").mkdir(parents=True)
    (tmp_path / "tpl" / "en" / "workaround.j2").write_text(
        "{% block title %}Custom{% endblock %}{% block body %}Use the phone: {{ contact }}{% endblock %}",
        encoding="utf-8")
    notifier = Notifier(journal, run_id, NoticesSection(templates_dir=tmp_path / "tpl"), [], context=CONTEXT,
                        clock=Clock())
    notice = notifier.render("workaround", downtime_s=60, next_update_at=T0)
    assert notice.title == "Custom" and "Use the phone: Alex Engineer" in notice.body
    assert notifier.render("progress", known="k", impact="i", next_update_at=T0).title.startswith("CRM move update")


def test_url_resolution_and_labels():
    section = NoticesSection(urls=["slack_hook", "json://127.0.0.1:8080/x", "typo"])
    with pytest.raises(ConfigError, match=r"\[notices.urls.2\] is neither an apprise URL") as failed:
        resolve_notice_urls(section, {"slack_hook": SecretStr("slack://T/B/C")})
    assert "typo" not in str(failed.value)  # not echoed: it may be a token pasted without its scheme
    urls = resolve_notice_urls(NoticesSection(urls=["slack_hook"]), {"slack_hook": SecretStr("slack://T/B/C")})
    assert urls == ["slack://T/B/C"]
    assert target_label("slack://TOKENA/TOKENB/TOKENC") == "slack://***"
    assert target_label("tgram://123:bottoken/456") == "tgram://***"
    assert target_label("mailtos://user:pw@smtp.example.com:465") == "mailtos://smtp.example.com:465"

"""The customer's website integration as seed 000's was built: a naive two-way CRM sync with no
loop guard, for rehearsing what the product's own sync must not do.

:func:`start_website` runs an HTTP handler on loopback that receives the *box* portal's outgoing
webhook events and mirrors each change into the *cloud* portal with plain ``requests`` calls:

- ``ONCRMLEADADD``: reads the lead from the box (``crm.lead.get``) and creates a copy in the
  cloud (``crm.lead.add``), copying every field it knows — including the box's
  ``ORIGINATOR_ID``/``ORIGIN_ID`` markers;
- ``ONCRMLEADUPDATE``: reads the box lead; when it has an ``ORIGIN_ID`` (the cloud ID it came
  from), updates that cloud lead's ``COMMENTS`` with a fresh sync stamp (``… [site sync #N+1]``),
  so every pass changes the record and every change raises the next event.

Wired both ways (box → website → cloud, and something syncing cloud → box), one test update
echoes forever. The only bound is ``max_events``: after that many events the website stops acting
(so that a test ends), as the customer's integration platform did once its credits were gone.
"""

from __future__ import annotations

import logging
import queue
import re
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl

import requests

from sandbox.portal.server import php_parse

log = logging.getLogger(__name__)

LEAD_COPY_FIELDS = ("TITLE", "NAME", "LAST_NAME", "STATUS_ID", "SOURCE_ID", "COMMENTS", "ORIGINATOR_ID", "ORIGIN_ID")
_STAMP_RE = re.compile(r" \[site sync #(\d+)\]$")
_TIMEOUT = (3.0, 10.0)  # connect, read: every call to a portal


def next_stamp(comments: str | None) -> str:
    """``"x"`` → ``"x [site sync #1]"``; ``"x [site sync #4]"`` → ``"x [site sync #5]"``."""
    text = comments or ""
    m = _STAMP_RE.search(text)
    n = int(m.group(1)) if m else 0
    return f"{text[:m.start()] if m else text} [site sync #{n + 1}]"


class WebsiteServer:
    """The running website handler. ``application_token`` may be set after start (the portal
    generates it once the handler URL is known); until then every event is refused.

    Counters: ``events_received`` (events with the right token), ``requests`` (calls made to
    either portal), ``rejected`` (events refused for a wrong token), ``errors`` (events whose
    mirroring failed), ``acted`` (events acted upon; at most ``max_events``)."""

    def __init__(self, cloud_webhook: str, box_webhook: str, application_token: str, *,
                 max_events: int = 5000, host: str = "127.0.0.1", port: int = 0) -> None:
        self._cloud = cloud_webhook if cloud_webhook.endswith("/") else cloud_webhook + "/"
        self._box = box_webhook if box_webhook.endswith("/") else box_webhook + "/"
        self.application_token = application_token  # settable: the admin pastes it in after creating the hook
        self.max_events = max_events
        self.events_received = 0
        self.requests = 0
        self.rejected = 0
        self.errors = 0
        self.acted = 0
        self._lock = threading.Lock()
        self._bound_logged = False
        self._queue: queue.Queue = queue.Queue(maxsize=10000)
        self._session = requests.Session()
        self._server = _Server((host, port), _Handler)
        self._server.website = self
        self.host, self.port = host, self._server.server_address[1]
        self._http = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                      name=f"sandbox-website-{self.port}", daemon=True)
        self._worker = threading.Thread(target=self._work, name=f"sandbox-website-worker-{self.port}", daemon=True)
        self._http.start()
        self._worker.start()

    @property
    def handler_url(self) -> str:
        """The URL to configure as the box portal's outgoing webhook handler."""
        return f"http://{self.host}:{self.port}/bitrix/handler.php"

    # --- receiving ----------------------------------------------------------------------------
    def _receive(self, form: dict) -> int:
        """One POSTed event → the HTTP status to answer (the work happens in the worker)."""
        auth = form.get("auth")
        token = str(auth.get("application_token") or "") if isinstance(auth, dict) else ""
        if not token or not secrets.compare_digest(token, self.application_token or ""):
            with self._lock:
                self.rejected += 1
            return 401
        with self._lock:
            self.events_received += 1
        try:
            self._queue.put_nowait(form)
        except queue.Full:
            with self._lock:
                self.errors += 1
        return 200

    # --- mirroring ----------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            form = self._queue.get()
            if form is None:
                return
            with self._lock:
                if self.acted >= self.max_events:
                    if not self._bound_logged:
                        self._bound_logged = True
                        log.warning("website sync: %d events handled, stopping (max_events)", self.max_events)
                    continue
                self.acted += 1
            try:
                self._mirror(form)
            except Exception as e:  # noqa: BLE001 - one bad event must not stop the worker
                with self._lock:
                    self.errors += 1
                log.info("website sync: event %s not mirrored (%s)", form.get("event"), type(e).__name__)

    def _call(self, base: str, method: str, params: dict) -> dict:
        with self._lock:
            self.requests += 1
        resp = self._session.post(f"{base}{method}.json", json=params, timeout=_TIMEOUT)
        body = resp.json()
        if "error" in body:
            raise ValueError(f"{method}: {body['error']}")
        return body

    def _mirror(self, form: dict) -> None:
        event = str(form.get("event") or "").upper()
        lead_id = int(((form.get("data") or {}).get("FIELDS") or {}).get("ID") or 0)
        if event not in ("ONCRMLEADADD", "ONCRMLEADUPDATE") or not lead_id:
            return
        lead = self._call(self._box, "crm.lead.get", {"id": lead_id})["result"]
        if event == "ONCRMLEADADD":
            fields = {k: lead.get(k) for k in LEAD_COPY_FIELDS if lead.get(k) is not None}
            self._call(self._cloud, "crm.lead.add", {"fields": fields})
        elif lead.get("ORIGIN_ID"):
            self._call(self._cloud, "crm.lead.update",
                       {"id": int(lead["ORIGIN_ID"]), "fields": {"COMMENTS": next_stamp(lead.get("COMMENTS"))}})

    # --- lifecycle ----------------------------------------------------------------------------
    def close(self) -> None:
        """Stop serving and stop the worker (events still queued are dropped)."""
        self._server.shutdown()
        self._server.server_close()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._queue.put(None)
        self._worker.join(timeout=15)
        self._session.close()

    def __enter__(self) -> "WebsiteServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, fmt, *args):  # quiet: events carry the application token
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if 0 < length <= 1_000_000 else b""
        form = php_parse(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
        status = self.server.website._receive(form)
        data = b"OK" if status == 200 else b"wrong application_token"
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    website: WebsiteServer


def start_website(cloud_webhook: str, box_webhook: str, application_token: str, *,
                  max_events: int = 5000) -> WebsiteServer:
    """Start the website's event handler on 127.0.0.1 (ephemeral port). Configure the box portal's
    outgoing webhook with :attr:`WebsiteServer.handler_url`; the token it gives goes into
    ``application_token`` (here, or set the attribute afterwards)."""
    return WebsiteServer(cloud_webhook, box_webhook, application_token, max_events=max_events)

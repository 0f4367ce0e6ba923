"""A receiver for a portal's outgoing webhook events (``ONCRMLEADADD`` …), to sweep early.

The portal POSTs ``application/x-www-form-urlencoded`` bodies: ``event``, ``data[FIELDS][ID]``,
``ts`` and ``auth[application_token]`` — the token the portal generated for this outgoing webhook,
the only proof the POST comes from the portal. A POST without the right token is answered 401 and
ignored. The receiver only *wakes* the sweeper (``on_event``); what to move is decided by the sweep
itself, under its loop guard and budgets, so a flood of events cannot turn into a flood of writes.
"""

from __future__ import annotations

import hmac
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qsl

log = logging.getLogger("cloud2box.events")

MAX_BODY = 64 * 1024  # an event is a few hundred bytes; anything bigger is not one


class EventReceiver:
    """``on_event(event, record_id)`` for every authentic event; counters ``received``/``rejected``."""

    def __init__(self, application_token: str, on_event: Callable[[str, str | None], None], *,
                 host: str = "127.0.0.1", port: int = 0, timeout_s: float = 10.0) -> None:
        if not application_token:
            raise ValueError("an event receiver needs the outgoing webhook's application_token")
        self._token = application_token.encode()
        self.on_event = on_event
        self.received = 0
        self.rejected = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            timeout = timeout_s  # a slow or silent client cannot hold a thread for ever

            def log_message(self, fmt, *args):  # bodies carry the token: nothing is logged per request
                pass

            def do_POST(self) -> None:
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    length = -1
                if length <= 0 or length > MAX_BODY:
                    self._answer(400, b"not an event")
                    return
                form = dict(parse_qsl(self.rfile.read(length).decode("utf-8", "replace"), keep_blank_values=True))
                token = form.get("auth[application_token]", "").encode()
                if not token or not hmac.compare_digest(token, receiver._token):
                    receiver.rejected += 1
                    self._answer(401, b"wrong application_token")
                    return
                receiver.received += 1
                self._answer(200, b"OK")
                try:
                    receiver.on_event(form.get("event", ""), form.get("data[FIELDS][ID]"))
                except Exception as exc:  # the portal must get its answer whatever we do with the event
                    log.warning("event %s not handled: %s", form.get("event"), type(exc).__name__)

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.host, self.port = host, self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"c2b-events-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        """The handler URL to give the portal's outgoing webhook."""
        return f"http://{self.host}:{self.port}/cloud2box/events"

    def start(self) -> "EventReceiver":
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()  # waits for serve_forever: only when it runs
        self._server.server_close()

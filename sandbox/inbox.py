"""People's inboxes on loopback: where the sandbox's people read what they are sent.

A notifier that speaks apprise's ``json://`` POSTs each message (``{"title", "message", "type",
…}``) to ``http://HOST:PORT/<path>``; the inbox keeps the messages of every path, oldest first,
and ``GET /<path>`` lists them as JSON (``[{"received_at", "title", "message"}, …]``). So a trainer
who runs ``cloud2box sandbox up`` reads a signer's one-time code in a browser, and the demo's
scripted people read theirs the way a person reads a mail: from the message they were sent.

Bounded: a message body of at most 64 KiB, 500 messages per path (the oldest go first). Loopback
only; nothing is written to disk.

Usage: ``with start_inbox() as inbox: url = inbox.contact("dana-demo")`` (the apprise URL) and
``inbox.messages("dana-demo")``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import threading
from collections import defaultdict, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

MAX_BODY = 64 * 1024
MAX_PER_PATH = 500
TIMEOUT_S = 10  # a client that stalls in its request is dropped


class _Handler(BaseHTTPRequestHandler):
    server: "_InboxServer"
    timeout = TIMEOUT_S

    def log_message(self, *args) -> None:  # the demo's output is the run's, not the inbox's
        pass

    def _reply(self, status: int, payload) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 — http.server's name
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._reply(413, {"error": f"a message is at most {MAX_BODY} bytes"})
            return
        raw = self.rfile.read(length).decode("utf-8", "replace")
        try:
            data = json.loads(raw)
        except ValueError:
            data = {"message": raw}
        if not isinstance(data, dict):
            data = {"message": str(data)}
        self.server.add(self.path, {"received_at": dt.datetime.now(dt.timezone.utc).isoformat(),
                                    "title": str(data.get("title", "")), "message": str(data.get("message", ""))})
        self._reply(200, {"ok": True})

    def do_GET(self) -> None:  # noqa: N802
        self._reply(200, self.server.list(self.path))


class _InboxServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address) -> None:
        super().__init__(address, _Handler)
        self._lock = threading.Lock()
        self._boxes: dict[str, deque] = defaultdict(lambda: deque(maxlen=MAX_PER_PATH))

    @staticmethod
    def _key(path: str) -> str:
        return "/" + path.split("?", 1)[0].strip("/")

    def add(self, path: str, message: dict) -> None:
        with self._lock:
            self._boxes[self._key(path)].append(message)

    def list(self, path: str) -> list[dict]:
        with self._lock:
            return list(self._boxes.get(self._key(path), ()))


class Inbox:
    """A running inbox (see the module doc)."""

    def __init__(self, server: _InboxServer) -> None:
        self._server = server
        host, port = server.server_address[:2]
        self.base_url = f"http://{host}:{port}"
        self.host, self.port = host, port

    @staticmethod
    def slug(name: str) -> str:
        """The path of a person's inbox: their name, lower-case ``[a-z0-9-]``."""
        return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "someone"

    def contact(self, name: str) -> str:
        """The apprise URL that delivers to ``name``'s inbox."""
        return f"json://{self.host}:{self.port}/inbox/{self.slug(name)}"

    def page(self, name: str) -> str:
        """Where a person reads their inbox (GET)."""
        return f"{self.base_url}/inbox/{self.slug(name)}"

    def messages(self, name: str) -> list[dict]:
        return self._server.list(f"/inbox/{self.slug(name)}")

    # the sandbox piece's side (flows/sandbox_services.SandboxHandles.add)
    def toml_lines(self) -> list[str]:
        return []

    def secrets_toml_lines(self) -> list[str]:
        return []

    env: dict = {}

    def describe(self) -> list[str]:
        return [f"people's inboxes {self.base_url}/inbox/<name> (one-time codes and notices sent to the roster)"]


@contextlib.contextmanager
def start_inbox(host: str = "127.0.0.1", port: int = 0) -> Iterator[Inbox]:
    server = _InboxServer((host, port))
    thread = threading.Thread(target=server.serve_forever, name="sandbox-inbox", daemon=True)
    thread.start()
    try:
        yield Inbox(server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)

"""The sandbox Bitrix24 portal: the REST API subset cloud2box uses, over real HTTP on loopback.

Faithful to the vendor's docs where the connector depends on it:

- incoming-webhook URLs ``http://127.0.0.1:PORT/rest/{USER_ID}/{CODE}/{method}.json`` (a wrong
  code → 401 ``NO_AUTH_FOUND``); GET with a PHP-style query string, POST with JSON or a
  form-encoded body; over HTTPS with a generated certificate when asked (:func:`make_tls`,
  ``PortalServer(tls=…)``, ``start_pair(tls=True)``): real portals answer over HTTPS only and
  clients such as b24pysdk build ``https://`` URLs;
- the envelope ``{"result", "next", "total", "time": {…, "operating", "operating_reset_at"}}`` and
  ``{"error", "error_description"}``;
- lists with page size 50, every documented filter prefix (see ``store._PREFIXES``), ``order``,
  ``select``; ``start=-1`` answers ``total: 0`` without a count, ``start >= 0`` counts every
  matching row at ``count_cost_s`` per row;
- ``batch`` as the vendor's core runs it (see :meth:`Portal._batch`): commands URL-decoded before
  ``$result[…]`` references are substituted, at most 50 run (later ones fail one by one), no
  nested ``batch``, per-command ``result_error`` and ``result_time``, HTTP 200; one request for
  the rate limit;
- the leaky bucket per portal (``rate``/s drain, ``burst``; 503 ``QUERY_LIMIT_EXCEEDED``) and the
  per-method operating-time limit in ten buckets, commands inside a batch included (429
  ``OPERATION_TIME_LIMIT`` until ``operating_reset_at``); every list page, counted row, add,
  update and batchImport item costs the time the vendor published (:class:`PortalLimits`), slept;
- ``crm.<entity>.list/get/add/update/delete`` (``params[IMPORT]``, PHP-true, makes the system
  fields writable and keeps the given dates, in ascending creation time),
  ``crm.deal.contact.items.get/set``, ``crm.item.list/get/add/update`` and
  ``crm.item.batchImport`` (≤ 20 items, ascending ``createdTime``) with each method's own field
  names and shapes (``stageId``/``typeId``, ``fm``; PHONE/EMAIL in the import: see
  ``store.render_item`` and ``_from_item``);
- ``user.get`` (filter by any field, prefixes, ``ACTIVE``), ``user.add`` (result = the new ID;
  a bad or used e-mail → 400 ``ERROR_ARGUMENT``);
- ``tasks.task.list`` (camelCase tasks in ``result.tasks``, default order ``ID`` desc) and
  ``task.commentitem.getlist`` (positional parameters TASKID, ORDER, FILTER, as the vendor's docs
  warn: a FILTER passed where ORDER belongs is refused);
- ``telephony.externalLine.get/add/delete``: these work only in an application's context, so an
  incoming webhook gets 403 ``WRONG_AUTH_TYPE``; call them as a local application does,
  ``POST /rest/{method}.json`` with ``auth`` = :attr:`Portal.app_token`
  (:attr:`PortalServer.app_endpoint`);
- outgoing webhooks (:meth:`Portal.add_outbound_webhook`): CRM changes made through REST are POSTed
  form-encoded to the handler (``event``, ``event_handler_id``, ``data[FIELDS][ID]``, ``ts``,
  ``auth[…]``) from a queue, once, without retries, as the vendor's queue server does.

A ``$result`` reference whose path does not exist (a page shorter than the index) is replaced,
as the vendor does, by the last node the path reached (e.g. the whole short page); a command that
then gets a list where one value belongs fails in ``result_error`` (``INVALID_ARG_VALUE``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import queue
import re
import secrets
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
import requests

from .faults import Faults
from .timeline import TIMELINE_METHODS
from . import dynamic, relations, userfields
from .store import (DYNAMIC_PREFIX, ENTITY_TYPE_IDS, ITEM_BINDINGS, ITEM_SOURCE, MULTI_ENTITIES, MULTI_FIELDS,
                    CrmStore, StoreError, from_item_name, parse_date, render_item, to_item_name, _sort_key)

_PATH_RE = re.compile(r"^/rest/(\d+)/([^/]+)/([A-Za-z0-9_.]+?)(?:\.json)?/?$")
_APP_PATH_RE = re.compile(r"^/rest/([A-Za-z0-9_.]+?)(?:\.json)?/?$")  # application (OAuth) calls
# CRestUtil::processBatchElement (avshatalov48/bitrix-core-business
# modules/rest/classes/general/rest_util.php): "$" + one of the batch's result parts + the rest of
# the token; the path is every [...] group in that rest.
_BATCH_REF_RE = re.compile(r"\$(result|next|total|time|error)(\S*)", re.IGNORECASE)
_PATH_PART_RE = re.compile(r"\[([^\]]+)\]")
BATCH_MAX_LENGTH = 50  # CRestUtil::BATCH_MAX_LENGTH
BATCH_FORBIDDEN = frozenset({"batch", "download", "upload"})
_ENTITY_METHOD_RE = re.compile(r"^crm\.(lead|deal|contact|company)\.(list|get|add|update|delete)$")

STATUS = {"QUERY_LIMIT_EXCEEDED": 503, "OPERATION_TIME_LIMIT": 429, "NO_AUTH_FOUND": 401,
          "INVALID_CREDENTIALS": 401, "ACCESS_DENIED": 403, "ERROR_METHOD_NOT_FOUND": 404,
          "INTERNAL_SERVER_ERROR": 500, "INVALID_REQUEST": 400, "INVALID_ARG_VALUE": 400, "NOT_FOUND": 400,
          "ERROR_CORE": 400, "ERROR_BATCH_LENGTH_EXCEEDED": 400, "ERROR_ARGUMENT": 400,
          "ERROR_BATCH_METHOD_NOT_ALLOWED": 405, "WRONG_AUTH_TYPE": 403, "invalid_token": 401, "": 400,
          "insufficient_scope": 403}
CRM_NAMES = {"lead": "Lead", "deal": "Deal", "contact": "Contact", "company": "Company"}
# Fields crm.<entity>.add writes only in import mode (restservice.php, CCrmRestProxyBase::add).
SYSTEM_FIELDS = ("DATE_CREATE", "DATE_MODIFY", "CREATED_BY_ID", "MODIFY_BY_ID")

log = logging.getLogger(__name__)

# The scopes an incoming webhook is created with by default here; ``scope`` lists them
# (api-reference/common/system/scope.md) and a method of a module outside them is refused with
# insufficient_scope (403). Module of a method: api-reference/scopes/permissions.md.
WEBHOOK_SCOPES = frozenset({"crm", "user", "task", "telephony", "im"})
_METHOD_SCOPES = (("crm.", "crm"), ("user.", "user"), ("tasks.", "task"), ("task.", "task"),
                  ("voximplant.", "telephony"), ("telephony.", "telephony"), ("im.", "im"))


def _scope_of(method: str) -> str | None:
    """The scope ``method`` belongs to; None for the basic methods every webhook has (scope, profile, batch)."""
    return next((scope for prefix, scope in _METHOD_SCOPES if method.startswith(prefix)), None)


# Methods the vendor serves only in an application's context (an incoming webhook is refused).
APP_ONLY_METHODS = {"telephony.externalline.get", "telephony.externalline.add", "telephony.externalline.delete"}
CRM_EVENT_ENTITIES = {"lead": "LEAD", "deal": "DEAL", "contact": "CONTACT", "company": "COMPANY"}
CRM_EVENTS = frozenset(f"ONCRM{e}{a}" for e in CRM_EVENT_ENTITIES.values() for a in ("ADD", "UPDATE", "DELETE"))
# Methods served by their own modules with the store: (store, params) → the answer's body.
CRM_METHODS = {**userfields.METHODS, **relations.METHODS, **dynamic.METHODS}
OAUTH_SERVER_ENDPOINT = "https://oauth.bitrix.info/rest/"  # where a real portal's events point for tokens


class ApiError(Exception):
    def __init__(self, code: str, description: str, extra: dict | None = None) -> None:
        self.code, self.description, self.extra = code, description, extra or {}
        super().__init__(code)


def php_parse(pairs: list[tuple[str, str]]) -> dict:
    """``a[b][]=1&a[b][]=2&c=3`` → ``{"a": {"b": ["1", "2"]}, "c": "3"}`` (PHP's rules, enough of them)."""
    root: dict = {}
    for key, value in pairs:
        head, _, rest = key.partition("[")
        parts = [head] + (re.findall(r"\[([^\]]*)\]", "[" + rest) if rest else [])
        node: Any = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if part == "":
                    if last:
                        node.append(value)
                        break
                    node.append({})
                    node = node[-1]
                    continue
                node = {str(j): v for j, v in enumerate(node)}  # a list given explicit keys
            if last:
                if part == "" and isinstance(node, dict):
                    node[str(len(node))] = value
                else:
                    node[part] = value
            else:
                nxt = parts[i + 1]
                if part not in node or not isinstance(node[part], (dict, list)):
                    node[part] = [] if nxt == "" else {}
                node = node[part]
    return root


def _as_list(v) -> list:
    if v is None:
        return []
    if isinstance(v, list):
        return v
    if isinstance(v, dict):
        return list(v.values())
    return [v]


@dataclass
class PortalLimits:
    """The portal's plan limits and what its work costs. Defaults are the vendor's published numbers
    (bitrix-tools/b24-rest-docs limits.md; its examples' ``time`` blocks); simulated costs are
    sleeps (the portal's database working), counted as the method's operating time.

    - ``rate``/``burst``: the leaky bucket of the standard plans (2/s, 50; Enterprise 5/s, 250).
    - ``operating_limit_s`` per ``operating_window_s``: each method's execution time is summed in
      ten buckets of a tenth of the window (one minute of ten), commands inside a batch included,
      the outer ``batch`` not; a call is refused (429 ``OPERATION_TIME_LIMIT``) when the sum is
      already over the limit, until the oldest bucket drops out at ``operating_reset_at``
      (limits.md, "Ограничения на ресурсоемкость"; 480 s is the doc's example limit).
    - ``page_cost_s``: one page of a ``*.list`` method, 0.068 s of processing, and
      ``request_cost_s``: the rest of that request's 0.098 s duration, spent once per HTTP request
      outside the method (not operating time) — a ``start=-1`` page of ``crm.lead.list`` on
      2 387 743 leads (performance/huge-data.md).
    - ``count_cost_s``: offset paging (``start >= 0``) counts the filtered set on every page; the
      same page with the count took 49.9 s of processing: (49.90 - 0.068) s / 2 387 743 rows ≈ 20.9 µs
      per counted row (huge-data.md).
    - ``add_cost_s`` / ``update_cost_s``: one record's ``crm.*.add`` / ``crm.*.update``: 1.83 s and
      3.19 s of processing in the examples of crm/universal/crm-item-add.md and crm-item-update.md
      (crm.lead.add's page shows 3.31 s).
    - ``import_item_cost_s``: one item of ``crm.item.batchImport``. The only example
      (import/crm-item-batch-import.md) spent 2.376 s on 2 items (one saved, one refused as
      invalid); crm.item.import spent 2.43 s on one (import/crm-item-import.md). Two calls cannot
      separate a fixed part from a per-item part, so none is assumed fixed: 2.376 s / 2 = 1.19 s
      per item, which gives batching no saving it was not shown to have.
    - ``write_latency_s``: a slow box on top of that: each ``crm.<entity>.add``/``update`` and
      each ``crm.item.batchImport`` item is saved after that long, one after the other (commands
      of a batch too), and is visible to other requests as soon as it is saved, while the request
      that writes it is still running — a client whose timeout is shorter has not seen the end of it.

    :meth:`free` is the same plan with no simulated cost (tests that must not wait)."""

    rate: float = 2.0
    burst: int = 50
    operating_limit_s: float = 480.0
    operating_window_s: float = 600.0
    count_cost_s: float = 20.9e-6
    page_cost_s: float = 0.068
    request_cost_s: float = 0.030
    add_cost_s: float = 1.83
    update_cost_s: float = 3.19
    import_item_cost_s: float = 1.19
    write_latency_s: float = 0.0

    ENTERPRISE_PLAN = {"rate": 5.0, "burst": 250}  # limits.md: the Enterprise plans' leaky bucket
    COSTS = ("count_cost_s", "page_cost_s", "request_cost_s", "add_cost_s", "update_cost_s", "import_item_cost_s")

    @classmethod
    def free(cls, **overrides: Any) -> "PortalLimits":
        """The plan's limits without simulated costs; ``overrides`` set any field."""
        return cls(**{**{name: 0.0 for name in cls.COSTS}, **overrides})


class Portal:
    """The API logic of one portal (no HTTP): auth, limits, methods, batch."""

    scopes: frozenset[str] = WEBHOOK_SCOPES  # the incoming webhook's scopes; a test narrows them per portal

    def __init__(self, store: CrmStore | None = None, *, user_id: int = 1, code: str | None = None,
                 limits: PortalLimits | None = None, batch_import: bool = True) -> None:
        self.store = store or CrmStore()
        self.user_id = user_id
        self.code = code or secrets.token_hex(8)
        self.limits = limits or PortalLimits()
        self.batch_import = batch_import  # an old box without crm.item.batchImport: False
        self.faults = Faults()
        self._tl = threading.local()  # the simulated count cost of the current thread's list call
        self._bucket_lock = threading.Lock()
        self._level = 0.0
        self._level_at = time.monotonic()
        self._operating: dict[str, list[list[float]]] = {}  # method → [[bucket start, seconds], …]
        self.requests = 0
        self.rejected = 0
        # A local application installed on the portal: its access token opens the app-only methods.
        self.app_token = secrets.token_hex(16)
        self.member_id = secrets.token_hex(16)
        self.domain = "127.0.0.1"  # host:port once served (PortalServer.start sets it)
        self.scheme = "http"  # "https" when served over TLS
        self._webhooks: list[_OutboundWebhook] = []
        self._webhook_seq = 0
        self._events = _EventQueue()

    # --- outgoing webhooks ----------------------------------------------------------------------
    @property
    def events_sent(self) -> int:
        """Events the handlers accepted (2xx)."""
        return self._events.sent

    @property
    def events_failed(self) -> int:
        """Events lost: the handler failed, timed out, answered non-2xx, or the queue was full."""
        return self._events.failed

    def add_outbound_webhook(self, handler_url: str, events: list[str]) -> str:
        """Configure an outgoing webhook (what an admin sets up in the UI): POST ``events`` (e.g.
        ``ONCRMLEADADD``) to ``handler_url``; returns the generated ``application_token`` the
        handler must check. Only loopback handlers are accepted (ValueError otherwise)."""
        url = urlsplit(handler_url)
        try:
            loopback = url.hostname == "localhost" or ipaddress.ip_address(url.hostname or "").is_loopback
        except ValueError:
            loopback = False
        if url.scheme not in ("http", "https") or not loopback:
            raise ValueError("the sandbox portal posts events only to loopback handlers "
                             "(http://127.0.0.1:PORT/…)")
        wanted = {str(e).upper() for e in events}
        unknown = sorted(wanted - CRM_EVENTS)
        if not wanted or unknown:
            raise ValueError(f"unknown or no events {unknown}; known: {', '.join(sorted(CRM_EVENTS))}")
        with self._bucket_lock:
            self._webhook_seq += 1
            hook = _OutboundWebhook(self._webhook_seq, handler_url, frozenset(wanted), secrets.token_hex(16))
            self._webhooks.append(hook)
        self._events.start()
        return hook.application_token

    def remove_outbound_webhooks(self) -> None:
        """Delete every outgoing webhook (events already queued are still delivered)."""
        with self._bucket_lock:
            self._webhooks.clear()

    def close_events(self, timeout: float = 5.0) -> None:
        """Stop the event worker (queued events not yet sent are dropped and counted failed)."""
        self._events.stop(timeout)

    def _emit(self, entity: str, action: str, record_id: int) -> None:
        """Queue ``ONCRM{ENTITY}{ACTION}`` for every outgoing webhook subscribed to it (smart-process
        items' events are not modelled)."""
        if entity not in CRM_EVENT_ENTITIES:
            return
        event = f"ONCRM{CRM_EVENT_ENTITIES[entity]}{action}"
        with self._bucket_lock:
            hooks = [h for h in self._webhooks if event in h.events]
        for hook in hooks:
            self._events.put(hook.handler_url, [
                ("event", event), ("event_handler_id", str(hook.handler_id)),
                ("data[FIELDS][ID]", str(record_id)), ("ts", None),
                ("auth[domain]", self.domain), ("auth[client_endpoint]", f"{self.scheme}://{self.domain}/rest/"),
                ("auth[server_endpoint]", OAUTH_SERVER_ENDPOINT), ("auth[member_id]", self.member_id),
                ("auth[application_token]", hook.application_token)])

    # --- limits -------------------------------------------------------------------------------
    def _admit(self) -> None:
        with self._bucket_lock:
            now = time.monotonic()
            self._level = max(0.0, self._level - (now - self._level_at) * self.limits.rate)
            self._level_at = now
            if self._level + 1 > self.limits.burst:
                self.rejected += 1
                raise ApiError("QUERY_LIMIT_EXCEEDED", "Too many requests")
            self._level += 1
            self.requests += 1

    def _operating_check(self, method: str) -> tuple[float, float]:
        """(operating seconds used in the window, reset timestamp); 429 when over the limit."""
        used, reset_at = self._operating_used(method)
        if used > self.limits.operating_limit_s:
            raise ApiError("OPERATION_TIME_LIMIT", "Method is blocked due to operation time limit.",
                           {"time": {"operating": used, "operating_reset_at": reset_at}})
        return used, reset_at

    def _operating_used(self, method: str, now: float | None = None) -> tuple[float, float]:
        """(operating seconds of ``method`` in the window, when its oldest bucket drops out)."""
        now = time.time() if now is None else now
        window = self.limits.operating_window_s
        with self._bucket_lock:
            buckets = [b for b in self._operating.get(method, []) if b[0] > now - window]
            self._operating[method] = buckets
            used = sum(c for _, c in buckets)
            reset_at = (buckets[0][0] + window) if buckets else now
        return used, reset_at

    def _write_pause(self, cost_s: float = 0.0) -> None:
        """The time one record's write takes: ``cost_s`` (the vendor's cost of this kind of write)
        plus ``PortalLimits.write_latency_s`` (a slow box); counted as the call's operating time;
        no lock is held."""
        self._simulate(cost_s + self.limits.write_latency_s)

    def _simulate(self, seconds: float) -> None:
        """Sleep for work the portal's database would be doing (no CPU burnt) and count it for the
        method running on this thread (see :meth:`_call`)."""
        if seconds > 0:
            time.sleep(seconds)
            self._tl.simulated = getattr(self._tl, "simulated", 0.0) + seconds

    def _operating_add(self, method: str, cost: float, now: float | None = None) -> None:
        """Add ``cost`` to the method's current bucket: a bucket starts at the first call counted
        in it and collects a tenth of the window (limits.md: ten one-minute buckets, each dropping
        out ten minutes after its first call)."""
        now = time.time() if now is None else now
        width = self.limits.operating_window_s / 10
        with self._bucket_lock:
            buckets = self._operating.setdefault(method, [])
            if buckets and now < buckets[-1][0] + width:
                buckets[-1][1] += cost
            else:
                buckets.append([now, cost])

    def reset_limits(self) -> None:
        """Empty the leaky bucket and every method's operating time (a quiet portal again)."""
        with self._bucket_lock:
            self._level, self._level_at = 0.0, time.monotonic()
            self._operating.clear()

    # --- entry point --------------------------------------------------------------------------
    def handle(self, user_id: str | None, code: str | None, method: str,
               params: dict) -> tuple[int, dict, str | None]:
        """→ (status, body, fault kind to apply after the write or None).

        ``user_id``/``code`` of an incoming webhook; both None for an application's call, whose
        access token is the ``auth`` parameter."""
        start = time.time()
        method = method.lower()
        post_fault = None
        try:
            if user_id is None:
                token = str(params.pop("auth", "") or "")
                if not token or not secrets.compare_digest(token, self.app_token):
                    raise ApiError("invalid_token", "The access token provided is invalid.")
                self._tl.app = True
            else:
                if int(user_id) != self.user_id or not secrets.compare_digest(code or "", self.code):
                    raise ApiError("NO_AUTH_FOUND", "Wrong authorization data")
                self._tl.app = False
            fault = self.faults.take(method)
            if fault is not None:
                if fault.kind in ("OPERATION_TIME_LIMIT", "QUERY_LIMIT_EXCEEDED", "INTERNAL_SERVER_ERROR"):
                    raise self._fault_error(fault)
                post_fault = fault.kind
            self._admit()
            if self.limits.request_cost_s > 0:
                time.sleep(self.limits.request_cost_s)  # the request's share outside the method (not operating)
            proc_start = time.time()
            if method == "batch":
                result = self._batch(params)
                body = {"result": result}
            else:
                body = self._call(method, params)
            proc_finish = time.time()
            used, reset_at = self._operating_used(method) if method != "batch" else (0.0, proc_finish)
            body["time"] = self._time(start, time.time(), proc_finish - proc_start, used, reset_at)
            return 200, body, post_fault
        except ApiError as e:
            return STATUS.get(e.code, 400), {"error": e.code, "error_description": e.description, **e.extra}, None

    def _fault_error(self, fault) -> ApiError:
        if fault.kind == "OPERATION_TIME_LIMIT":
            return ApiError(fault.kind, "Method is blocked due to operation time limit.",
                            {"time": {"operating": self.limits.operating_limit_s + 1,
                                      "operating_reset_at": time.time() + fault.reset_in}})
        return ApiError(fault.kind, "Injected fault")

    def _time(self, start: float, finish: float, processing: float, operating: float,
              reset_at: float) -> dict:
        """The ``time`` block (rest.php ``CRestServer::appendDebugInfo``): dates as PHP's
        ``date('c')`` writes them, in the portal's time zone; ``operating``/``operating_reset_at``
        as the cloud's load limiter adds them."""
        tz = self.store.tz
        return {"start": start, "finish": finish, "duration": finish - start, "processing": processing,
                "date_start": _iso(start, tz), "date_finish": _iso(finish, tz),
                "operating_reset_at": reset_at, "operating": operating}

    def _call(self, method: str, params: dict) -> dict:
        """One method call (also used for each batch command); returns the envelope without time."""
        self._operating_check(method)
        scope = _scope_of(method)
        if scope is not None and not getattr(self._tl, "app", False) and scope not in self.scopes:
            raise ApiError("insufficient_scope", "The request requires higher privileges than provided by the "
                                                 "webhook token")
        # Operating time = this command's own execution: CPU time of this thread (wall time would
        # charge it for other requests' work under the GIL) plus the simulated work (_simulate).
        t0 = time.thread_time()
        self._tl.simulated = 0.0
        try:
            self._simulate(self._write_cost(method))  # the record is saved when its write ends
            body, count_cost = self._dispatch(method, params)
        except StoreError as e:
            raise ApiError(e.code, e.description) from None
        except (ValueError, TypeError, AttributeError) as e:  # a value of the wrong shape (e.g. a list)
            raise ApiError("INVALID_ARG_VALUE", f"invalid parameter value: {e}") from None
        if _is_list_method(method):
            self._simulate(self.limits.page_cost_s + count_cost)  # the page's query, and the count
        self._operating_add(method, time.thread_time() - t0 + self._tl.simulated)
        return body

    def _write_cost(self, method: str) -> float:
        """The vendor's cost of one ``crm.*.add`` / ``crm.*.update`` (batchImport is charged per
        item where it saves them)."""
        verb = method.rsplit(".", 1)[-1]
        if not method.startswith("crm."):
            return 0.0
        return self.limits.add_cost_s if verb == "add" else self.limits.update_cost_s if verb == "update" else 0.0

    def _dispatch(self, method: str, p: dict) -> tuple[dict, float]:
        if method in TIMELINE_METHODS:  # activities, timeline comments, products, product rows
            return self.store.timeline.call(method, p, user_id=self.user_id, base_url=f"{self.scheme}://{self.domain}",
                                            count_cost_s=self.limits.count_cost_s)
        if method in CRM_METHODS:  # custom fields, contact ↔ company bindings, smart-process types
            return CRM_METHODS[method](self.store, p), 0.0
        if method in ("crm.deal.contact.items.get", "crm.deal.contact.items.set"):
            return self._deal_contacts(method.rsplit(".", 1)[1], p), 0.0
        m = _ENTITY_METHOD_RE.match(method)
        if m:
            entity, verb = m.groups()
            return getattr(self, f"_entity_{verb}")(entity, p), 0.0 if verb != "list" else self._tl.cost
        if method == "crm.item.list":
            return self._item_list(p), self._tl.cost
        if method in ("crm.item.get", "crm.item.add", "crm.item.update", "crm.item.delete"):
            return getattr(self, f"_item_{method.rsplit('.', 1)[1]}")(p), 0.0
        if method == "crm.item.batchimport" and self.batch_import:
            return self._item_batch_import(p), 0.0
        if method == "user.get":
            return self._user_get(p), 0.0
        if method == "user.add":
            return {"result": self.store.add_user(_user_fields(p))}, 0.0
        if method == "tasks.task.list":
            return self._task_list(p), 0.0
        if method == "task.commentitem.getlist":
            return self._comment_list(p), 0.0
        if method in APP_ONLY_METHODS:
            if not getattr(self._tl, "app", False):
                raise ApiError("WRONG_AUTH_TYPE", "Current authorization type is denied for this method")
            return self._external_line(method.rsplit(".", 1)[1], p), 0.0
        if method == "voximplant.line.get":
            # {line id: title}; PHP sends an empty array (not an object) when there is none
            return {"result": {lid: line["TITLE"] for lid, line in sorted(self.store.sip_lines.items())} or []}, 0.0
        if method == "profile":
            return {"result": {"ID": str(self.user_id), "ADMIN": True}}, 0.0
        if method == "scope":  # without full=true: the webhook's own scopes (scope.md)
            return {"result": sorted(self.scopes)}, 0.0
        raise ApiError("ERROR_METHOD_NOT_FOUND", "Method not found!")



    # --- methods ------------------------------------------------------------------------------
    def _list(self, entity: str, p: dict) -> tuple[list, int | None, int]:
        try:
            start = int(p.get("start", 0) or 0)
        except ValueError:
            raise ApiError("INVALID_ARG_VALUE", "start must be an integer") from None
        flt = p.get("filter") or {}
        if not isinstance(flt, dict):
            raise ApiError("INVALID_ARG_VALUE", "filter must be an object")
        order = p.get("order") or {}
        rows, total, cost = self.store.list(entity, filter=flt, order=order if isinstance(order, dict) else {},
                                            select=[s for s in _as_list(p.get("select"))
                                                    if str(s).upper() != "COMPANY_IDS"],  # see store.LIST_BINDINGS
                                            start=start,
                                            count_cost_s=self.limits.count_cost_s)
        self._tl.cost = cost
        return rows, total, max(start, 0)

    # Errors of crm.<entity>.* come from RestException(message) with no code: {"error": "",
    # "error_description": "…"}, HTTP 400 (avshatalov48/bitrix24-core-corp
    # modules/crm/classes/general/restservice.php, CCrmRestProxyBase; the shape is documented in
    # bitrix-tools/b24-rest-docs api-reference/crm/deals/crm-deal-get.md, "Обработка ошибок").
    def _entity_list(self, entity: str, p: dict) -> dict:
        rows, total, start = self._list(entity, p)
        body: dict = {"result": rows}
        if total is None:
            # start=-1: no count query; the portal answers total 0 and no next
            # (api-reference/performance/huge-data.md, the second answer of the example)
            body["total"] = 0
        else:
            body["total"] = total
            if start + len(rows) < total:
                body["next"] = start + len(rows)
        return body

    @staticmethod
    def _intval(raw) -> int:
        """PHP's intval of a request value, as the REST handlers read IDs (0 when it is none)."""
        try:
            return int(str(raw).strip()) if raw not in (None, "") else 0
        except ValueError:
            return 0

    @classmethod
    def _entity_id(cls, p: dict) -> int:
        """``ID`` or ``id``, intval'd; not a positive integer → "ID is not defined or invalid."."""
        record_id = cls._intval(p.get("ID", p.get("id")))
        if record_id <= 0:
            raise ApiError("", "ID is not defined or invalid.")
        return record_id

    @staticmethod
    def _array_param(p: dict, name: str, *, required: bool) -> dict:
        value = p.get(name, p.get(name.upper()))
        if value is None or value == "":
            if required:
                raise ApiError("", f"Parameter '{name}' must be array.")
            return {}
        if isinstance(value, list):
            return {str(i): v for i, v in enumerate(value)}
        if not isinstance(value, dict):
            raise ApiError("", f"Parameter '{name}' must be array.")
        return value

    def _entity_get(self, entity: str, p: dict) -> dict:
        rec = self.store.get(entity, self._entity_id(p))
        if rec is None:
            raise ApiError("", "Not found")
        return {"result": self.store.render(entity, rec, ["*", "UF_*", *MULTI_FIELDS, "CONTACT_IDS"])}

    def _entity_add(self, entity: str, p: dict) -> dict:
        """``crm.<entity>.add``. ``params[IMPORT]`` is read with PHP's ``(bool)``: any value but
        null, false, 0, "" and "0" turns import mode on (restservice.php, ``CCrmRestProxyBase::add``:
        ``$isImportMode = (bool)($params['IMPORT'] ?? false)``). Import mode makes the system fields
        DATE_CREATE, DATE_MODIFY, CREATED_BY_ID, MODIFY_BY_ID writable (read-only otherwise: dropped)
        and, as every import does, keeps records in ascending creation time: DATE_CREATE may not be
        earlier than that of the newest record created so far, nor in the future, and DATE_MODIFY
        not earlier than DATE_CREATE (api-reference/crm/universal/import/index.md, "Для дат
        действуют ограничения"). A refusal is the entity's LAST_ERROR as a RestException: error "",
        HTTP 400."""
        fields = _fix_multi(self._array_param(p, "fields", required=True))
        params = self._array_param(p, "params", required=False)
        self._write_pause()
        importing = _php_bool(params.get("IMPORT"))
        if not importing:
            fields = {k: v for k, v in fields.items() if k not in SYSTEM_FIELDS}
            new_id = self.store.add(entity, fields)
        else:
            now = dt.datetime.now(dt.timezone.utc)
            tz = self.store.tz
            created = parse_date(fields["DATE_CREATE"], tz) if fields.get("DATE_CREATE") else now
            modified = parse_date(fields["DATE_MODIFY"], tz) if fields.get("DATE_MODIFY") else created
            with self.store.lock:
                newest = self.store.newest[entity]
                if created > now or modified > now:
                    raise ApiError("", 'Invalid value of the field "DATE_CREATE"/"DATE_MODIFY": '
                                       "a date in the future")
                if modified < created:
                    raise ApiError("", 'Invalid value of the field "DATE_MODIFY": earlier than DATE_CREATE')
                if newest is not None and created < newest:
                    raise ApiError("", 'Invalid value of the field "DATE_CREATE": import requires ascending '
                                       "creation times, and a record created later already exists")
                fields = dict(fields, DATE_CREATE=created, DATE_MODIFY=modified)
                new_id = self.store.add(entity, fields, keep_times=True)
        self._emit(entity, "ADD", new_id)
        return {"result": new_id}

    def _entity_update(self, entity: str, p: dict) -> dict:
        self._write_pause()
        record_id = self._entity_id(p)
        fields = _fix_multi(self._array_param(p, "fields", required=True))
        fields = {k: v for k, v in fields.items() if k not in SYSTEM_FIELDS}  # read-only on update
        if self.store.get(entity, record_id) is None:
            raise ApiError("", f"{CRM_NAMES[entity]} is not found")
        self.store.update(entity, record_id, fields)
        self._emit(entity, "UPDATE", record_id)
        return {"result": True}

    def _entity_delete(self, entity: str, p: dict) -> dict:
        record_id = self._entity_id(p)
        if self.store.get(entity, record_id) is None:
            raise ApiError("", "Not found")
        self.store.delete(entity, record_id)
        self._emit(entity, "DELETE", record_id)
        return {"result": True}

    def _deal_contacts(self, verb: str, p: dict) -> dict:
        """``crm.deal.contact.items.get`` → ``[{CONTACT_ID, SORT, ROLE_ID, IS_PRIMARY}]`` (integers,
        the primary binding first); ``.set`` replaces the bindings (``items``) → ``true``
        (api-reference/crm/deals/contacts/crm-deal-contact-items-get.md, ...-items-set.md). The
        deal's ``CONTACT_ID`` follows the primary binding."""
        deal_id = self._intval(p.get("id", p.get("ID")))
        if deal_id <= 0:
            raise ApiError("", "The parameter ownerEntityID is invalid or not defined.")
        if verb == "set":
            items = _as_list(p.get("items", p.get("ITEMS")))
            self.store.set_deal_contacts(deal_id, [i for i in items if isinstance(i, dict)])
            return {"result": True}
        rec = self.store.get("deal", deal_id)
        if rec is None:
            raise ApiError("", "Not found.")
        ids = list(rec.get("CONTACT_IDS") or [])
        return {"result": [{"CONTACT_ID": cid, "SORT": (i + 1) * 10, "ROLE_ID": 0, "IS_PRIMARY": "Y" if i == 0 else "N"}
                           for i, cid in enumerate(ids)]}

    def _entity_of(self, p: dict) -> str:
        """crm.item.*'s ``entityTypeId``: 1 lead, 2 deal, 3 contact, 4 company, or one of the portal's
        smart processes (dynamic.py); any other: 400 NOT_FOUND (api-reference/crm/universal/
        crm-item-list.md and crm-item-get.md, "Возможные коды ошибок")."""
        try:
            type_id = int(p.get("entityTypeId") or 0)
        except (ValueError, TypeError):
            type_id = 0
        entity = ENTITY_TYPE_IDS.get(type_id) or dynamic.entity_of(self.store, type_id)
        if entity is None:
            raise ApiError("NOT_FOUND", "Смарт-процесс не найден")
        return entity

    def _uf_names(self, entity: str, p: dict) -> dict[str, str]:
        """FIELD_NAME → the name crm.item.* answers: ``ufCrm…`` (userfields.item_name), or the
        original name with ``useOriginalUfNames: Y`` (api-reference/crm/universal/index.md, since
        CRM 25.0.0; import/crm-item-batch-import.md)."""
        names = self.store.userfields.item_names(self.store.uf_entity[entity])
        if str(p.get("useOriginalUfNames") or "").upper() in ("Y", "1", "TRUE"):
            return {n: n for n in names}
        return names

    def _uf_in(self, entity: str) -> dict[str, str]:
        """A custom field's name as a request may give it (``ufCrm…`` or ``UF_CRM_…``) → FIELD_NAME."""
        names = self.store.userfields.item_names(self.store.uf_entity[entity])
        return {**{v: k for k, v in names.items()}, **{k: k for k in names}}

    def _item_filter(self, entity: str, flt) -> dict:
        """crm.item.list's filter in the store's names. A field crm.item does not know (``statusId``)
        is refused: "Invalid filter: field … is not allowed in filter" (crm-item-list.md, errors);
        sub-filters under numeric keys and ``logic`` keep their shape (crm-item-list.md, "filter")."""
        if not isinstance(flt, dict):
            raise ApiError("INVALID_ARG_VALUE", "filter must be an object")
        out: dict = {}
        for raw_key, value in flt.items():
            key = str(raw_key)
            if key.lower() == "logic" or (key.isdigit() and isinstance(value, dict)):
                out[key] = self._item_filter(entity, value) if isinstance(value, dict) else value
                continue
            prefix = re.match(r"^[^A-Za-z]*", key).group(0)
            name = from_item_name(key[len(prefix):], entity) or self._uf_in(entity).get(key[len(prefix):])
            if name is None:
                raise ApiError("INVALID_ARG_VALUE",
                               f"Invalid filter: field '{key[len(prefix):]}' is not allowed in filter")
            out[prefix + name] = value
        return out

    def _item_list(self, p: dict) -> dict:
        """``crm.item.list`` (api-reference/crm/universal/crm-item-list.md): camelCase names in
        ``filter``/``order``/``select``, rows in ``result.items`` (see ``render_item`` for ``fm``)."""
        entity = self._entity_of(p)
        flt = self._item_filter(entity, p.get("filter") or {})
        order = {}
        raw_order = p.get("order") or {}
        if not isinstance(raw_order, dict):
            raise ApiError("INVALID_ARG_VALUE", "order must be an object")
        for key, direction in raw_order.items():
            name = from_item_name(str(key), entity) or self._uf_in(entity).get(str(key))
            if name is None:
                raise ApiError("INVALID_ARG_VALUE", f"Invalid order: field '{key}' is not allowed in order")
            if str(direction).upper() not in ("ASC", "DESC"):
                raise ApiError("INVALID_ARG_VALUE", f"Invalid order: allowed sort directions are ASC, DESC. "
                                                    f"But got '{direction}' for field '{key}'")
            order[name] = str(direction).upper()
        # select names as the answer spells them ("ID" → "id"); names without a stored field
        # (a lead's contactIds, hasPhone …) pass as given, "fm" picks nothing (see render_item)
        select = [to_item_name(from_item_name(str(s), entity), entity) if from_item_name(str(s), entity) else str(s)
                  for s in _as_list(p.get("select"))]
        try:
            start = int(p.get("start", 0) or 0)
        except (TypeError, ValueError):
            raise ApiError("INVALID_ARG_VALUE", "start must be an integer") from None
        rows, total, cost = self.store.list(entity, filter=flt, order=order, select=list(ITEM_SOURCE), start=start,
                                            count_cost_s=self.limits.count_cost_s, nested=True, item=True)
        self._tl.cost = cost
        uf_names = self._uf_names(entity, p)
        body: dict = {"result": {"items": [render_item(entity, r, select, uf_names) for r in rows]}}
        if total is None:
            body["total"] = 0  # start=-1: no count, total 0 and no next (api-reference/performance/huge-data.md)
        else:
            body["total"] = total
            if start + len(rows) < total:
                body["next"] = start + len(rows)
        return body

    def _item_id(self, p: dict) -> int:
        try:
            return int(p.get("id") or 0)
        except (TypeError, ValueError):
            raise ApiError("INVALID_ARG_VALUE", "id must be an integer") from None

    def _item_answer(self, entity: str, record_id: int, p: dict) -> dict:
        """``{"item": {…}}``: what crm.item.get/add/update answer (crm-item-get.md, crm-item-add.md);
        an unknown ID is 400 NOT_FOUND "Элемент не найден" (crm-item-get.md, errors)."""
        rec = self.store.get(entity, record_id)
        if rec is None:
            raise ApiError("NOT_FOUND", "Элемент не найден")
        return {"item": render_item(entity, self.store.render(entity, rec, ITEM_SOURCE, item=True),
                                    uf_names=self._uf_names(entity, p))}

    def _item_get(self, p: dict) -> dict:
        entity = self._entity_of(p)
        return {"result": self._item_answer(entity, self._item_id(p), p)}

    def _item_delete(self, p: dict) -> dict:
        """``crm.item.delete`` → ``[]`` (crm-item-delete.md's answer); an unknown ID is NOT_FOUND."""
        entity = self._entity_of(p)
        record_id = self._item_id(p)
        if self.store.get(entity, record_id) is None:
            raise ApiError("NOT_FOUND", "Элемент не найден")
        self.store.delete(entity, record_id)
        self._emit(entity, "DELETE", record_id)
        return {"result": []}

    def _item_add(self, p: dict) -> dict:
        """``crm.item.add`` (api-reference/crm/universal/crm-item-add.md): ``fields`` in crm.item
        names, multi-fields as ``fm``; unknown fields ignored; left-out fields take their defaults."""
        entity = self._entity_of(p)
        given = p.get("fields") or {}
        if not isinstance(given, dict):
            raise ApiError("INVALID_ARG_VALUE", "fields must be an object")
        fields = _from_item(entity, given, importing=False, uf_in=self._uf_in(entity))
        fields.update(_fm_added(entity, given.get("fm")))
        self._item_defaults(entity, fields)
        self._write_pause()
        new_id = self.store.add(entity, fields)
        self._item_saved(entity, new_id)
        return {"result": self._item_answer(entity, new_id, p)}

    def _item_defaults(self, entity: str, fields: dict) -> None:
        if entity.startswith(DYNAMIC_PREFIX):
            dynamic.item_defaults(self.store, entity, fields)
        else:
            _item_defaults(entity, fields)

    def _item_saved(self, entity: str, new_id: int) -> None:
        if entity.startswith(DYNAMIC_PREFIX):
            dynamic.default_title(self.store, entity, new_id)
        self._emit(entity, "ADD", new_id)

    def _item_update(self, p: dict) -> dict:
        """``crm.item.update`` (api-reference/crm/universal/crm-item-update.md): only the given
        fields change; ``fm`` entries are added, changed or removed by their key (see
        ``_fm_changes``). When nothing it knows was given, nothing is saved (no event either)."""
        entity = self._entity_of(p)
        record_id = self._item_id(p)
        given = p.get("fields") or {}
        if not isinstance(given, dict):
            raise ApiError("INVALID_ARG_VALUE", "fields must be an object")
        rec = self.store.get(entity, record_id)
        if rec is None:
            raise ApiError("NOT_FOUND", "Элемент не найден")
        fields = _from_item(entity, given, importing=False, uf_in=self._uf_in(entity))
        fields.update(_fm_changes(entity, rec, given.get("fm")))
        if fields:
            self._write_pause()
            self.store.update(entity, record_id, fields)
            self._emit(entity, "UPDATE", record_id)
        return {"result": self._item_answer(entity, record_id, p)}

    def _item_batch_import(self, p: dict) -> dict:
        """``crm.item.batchImport`` (api-reference/crm/universal/import/crm-item-batch-import.md): up
        to 20 items, each the ``fields`` of crm.item.import (import/crm-item-import.md): crm.item
        names, multi-fields as ``PHONE``/``EMAIL`` lists of ``{VALUE, VALUE_TYPE}``, the system
        fields createdTime/updatedTime/createdBy/updatedBy kept, in ascending createdTime, none in
        the future, updatedTime ≥ createdTime (import/index.md, "Как сохранить историю элемента")."""
        entity = self._entity_of(p)
        data = _as_list(p.get("data"))
        if len(data) > 20:
            raise ApiError("MAX_IMPORT_BATCH_SIZE_EXCEEDED", "Вы не можете импортировать больше 20 элементов")
        items = []
        now = dt.datetime.now(dt.timezone.utc)
        for entry in data:
            self._write_pause(self.limits.import_item_cost_s)
            fields = _from_item(entity, entry if isinstance(entry, dict) else {}, importing=True,
                                uf_in=self._uf_in(entity))
            self._item_defaults(entity, fields)
            try:
                tz = self.store.tz  # a time without an offset is the portal's
                created = parse_date(fields["DATE_CREATE"], tz) if fields.get("DATE_CREATE") else now
                updated = parse_date(fields["DATE_MODIFY"], tz) if fields.get("DATE_MODIFY") else created
                with self.store.lock:
                    newest = self.store.newest[entity]
                    if created > now or updated > now:
                        raise StoreError("INVALID_ARG_VALUE", "createdTime and updatedTime cannot be in the future")
                    if updated < created:
                        raise StoreError("INVALID_ARG_VALUE", "updatedTime cannot be earlier than createdTime")
                    if newest is not None and created < newest:
                        raise StoreError("INVALID_ARG_VALUE",
                                         "createdTime must increase monotonically: a newer record exists")
                    # the time checked above is the time stored (no later clock reading that would
                    # make the next item of this call "older than the newest record")
                    new_id = self.store.add(entity, fields, keep_times=True, now=created)
                self._item_saved(entity, new_id)
                items.append({"item": {"id": new_id}})
            except StoreError as e:
                items.append({"error": e.code, "error_description": e.description})
            except (ValueError, TypeError) as e:
                items.append({"error": "INVALID_ARG_VALUE", "error_description": str(e)})
        return {"result": {"items": items}}

    def _user_get(self, p: dict) -> dict:
        """``user.get``: ``FILTER`` (or ``filter``, or user fields given at the top level, as the
        docs' examples do) with the documented prefixes; ``ACTIVE`` true keeps only active users;
        ``SORT``/``ORDER``; page size 50; ``start=-1`` skips the count."""
        flt = p.get("FILTER") or p.get("filter") or {}
        if not isinstance(flt, dict):
            raise ApiError("INVALID_ARG_VALUE", "FILTER must be an object")
        flt = dict(flt)
        for key, value in p.items():  # top-level field filters, e.g. {"UF_DEPARTMENT": 1}
            if key.lstrip("><=!@%").upper() in _USER_FILTER_FIELDS and key not in flt:
                flt[key] = value
        with self.store.lock:
            users = [dict(u) for u in self.store.users.values()]
        users = [u for u in users if _user_matches(u, flt)]
        sort = str(p.get("SORT") or p.get("sort") or "ID").upper()
        desc = str(p.get("ORDER") or p.get("order") or "ASC").upper() == "DESC"
        users.sort(key=lambda u: (int(u["ID"]),) if sort == "ID" else (_sort_key(u.get(sort)), int(u["ID"])),
                   reverse=desc)
        try:
            start = int(p.get("start", 0) or 0)
        except ValueError:
            raise ApiError("INVALID_ARG_VALUE", "start must be an integer") from None
        page = users[max(start, 0):max(start, 0) + 50]
        body: dict = {"result": page}
        if start >= 0:
            body["total"] = len(users)
            if start + 50 < len(users):
                body["next"] = start + 50
        return body

    # --- tasks ----------------------------------------------------------------------------------
    def _task_list(self, p: dict) -> dict:
        """``tasks.task.list``: ``order`` (default ``ID`` desc), ``filter`` with ``!``/``<``/``<=``/
        ``>``/``>=`` prefixes, ``select`` (UPPER_CASE names; the answer speaks camelCase), page 50.
        Filter keys the portal does not know are ignored, as the portal does."""
        flt = p.get("filter") or {}
        order = p.get("order") or {}
        if not isinstance(flt, dict) or not isinstance(order, dict):
            raise ApiError("INVALID_ARG_VALUE", "filter and order must be objects")
        try:
            start = int(p.get("start", 0) or 0)
        except ValueError:
            raise ApiError("INVALID_ARG_VALUE", "start must be an integer") from None
        predicates = []
        for raw_key, value in flt.items():
            key = str(raw_key)
            op = next((x for x in ("!=", ">=", "<=", "!", ">", "<", "=") if key.startswith(x)), "")
            name = key[len(op):].upper()
            name = {"REAL_STATUS": "STATUS"}.get(name, name)
            if name not in _TASK_FIELDS:
                continue
            conv = self._task_value(name)
            try:
                wanted = {conv(v) for v in _as_list(value)} if isinstance(value, (list, dict)) else {conv(value)}
            except (ValueError, TypeError):
                raise ApiError("INVALID_ARG_VALUE", f"bad filter value for {key}") from None
            predicates.append(lambda t, n=name, o=op, w=wanted: _compare(t.get(n), o, w))
        with self.store.lock:
            tasks = [dict(t, COMMENTS_COUNT=len(t["comments"])) for t in self.store.tasks.values()]
        tasks = [t for t in tasks if all(pr(t) for pr in predicates)]
        tasks.sort(key=lambda t: t["ID"], reverse=True)
        for key, direction in reversed(list({str(k).upper(): str(v).upper() for k, v in order.items()}.items())):
            if key in _TASK_FIELDS:
                tasks.sort(key=lambda t, k=key: _sort_key(t.get(k)), reverse=direction == "DESC")
        select = [str(x).upper() for x in _as_list(p.get("select"))]
        fields = [f for f in _TASK_FIELDS if not select or "*" in select or f in select or f == "ID"]
        page = tasks[max(start, 0):max(start, 0) + 50]
        body: dict = {"result": {"tasks": [self._render_task(t, fields) for t in page]}}
        if start >= 0:
            body["total"] = len(tasks)
            if start + 50 < len(tasks):
                body["next"] = start + 50
        return body

    def _task_value(self, name: str):
        if name in ("CREATED_DATE", "CHANGED_DATE"):
            return self._portal_date
        return lambda v: int(v) if name != "TITLE" else str(v)

    def _portal_date(self, value) -> dt.datetime:
        """A date as the portal reads it: ISO 8601; without an offset, in the portal's time zone."""
        d = dt.datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        return d if d.tzinfo else d.replace(tzinfo=self.store.tz)

    def _render_task(self, task: dict, fields: list[str]) -> dict:
        out = {}
        for f in fields:
            v = task.get(f)
            if isinstance(v, dt.datetime):
                v = v.astimezone(self.store.tz).isoformat(timespec="seconds")
            elif v is not None:
                v = str(v)
            out[_TASK_FIELDS[f]] = v
        return out

    def _comment_list(self, p: dict) -> dict:
        """``task.commentitem.getlist``: the parameters are positional (TASKID, ORDER, FILTER) —
        the portal reads them in the order given, whatever their names, as the docs warn."""
        args = list(p.values())
        task_id, order, flt = (args + [None, None, None])[:3]
        try:
            task_id = int(task_id)
        except (TypeError, ValueError):
            raise ApiError("ERROR_CORE", "TASKS_ERROR_EXCEPTION_#256; Param #0 (taskId) for method "
                           "ctaskcommentitem::getlist() expected to be of type \"integer\", but given "
                           "something else.; 256/TE/WRONG_ARGUMENTS") from None
        order = order or {}
        flt = flt or {}
        if not isinstance(order, dict) or not isinstance(flt, dict):
            raise ApiError("ERROR_CORE", "TASKS_ERROR_EXCEPTION_#256; Param #1 (arOrder) for method "
                           "ctaskcommentitem::getlist() expected to be of type \"array\"; 256/TE/WRONG_ARGUMENTS")
        for key in order:
            if str(key).upper() not in _COMMENT_ORDER_FIELDS:
                raise ApiError("ERROR_CORE", f"TASKS_ERROR_EXCEPTION_#256; Param #1 (arOrder) for method "
                               f"ctaskcommentitem::getlist() must not contain key \"{key}\".; 256/TE/WRONG_ARGUMENTS")
        predicates = []
        for raw_key, value in flt.items():
            key = str(raw_key)
            op = next((x for x in (">=", "<=", "!", ">", "<") if key.startswith(x)), "")
            name = key[len(op):].upper()
            if name not in _COMMENT_FILTER_FIELDS:
                raise ApiError("ERROR_CORE", f"TASKS_ERROR_EXCEPTION_#256; Param #2 (arFilter) for method "
                               f"ctaskcommentitem::getlist() must not contain key \"{key}\".; 256/TE/WRONG_ARGUMENTS")
            conv = self._portal_date if name == "POST_DATE" else (str if name == "AUTHOR_NAME" else int)
            try:
                wanted = {conv(v) for v in _as_list(value)}
            except (ValueError, TypeError):
                raise ApiError("ERROR_CORE", "TASKS_ERROR_EXCEPTION_#8; Action failed; "
                               "8/TE/ACTION_FAILED_TO_BE_PROCESSED") from None
            predicates.append(lambda c, n=name, o=op, w=wanted: _compare(c.get(n), o, w))
        with self.store.lock:
            task = self.store.tasks.get(task_id)
            if task is None:
                raise ApiError("ERROR_CORE", "TASKS_ERROR_EXCEPTION_#8; Action failed; "
                               "8/TE/ACTION_FAILED_TO_BE_PROCESSED")
            comments = [dict(c, **self._author(c["AUTHOR_ID"])) for c in task["comments"]]
        comments = [c for c in comments if all(pr(c) for pr in predicates)]
        comments.sort(key=lambda c: c["ID"], reverse=True)
        for key, direction in reversed(list(order.items())):
            comments.sort(key=lambda c, k=str(key).upper(): _sort_key(c.get(k)),
                          reverse=str(direction).upper() == "DESC")
        return {"result": [{"POST_MESSAGE_HTML": None, "ID": str(c["ID"]), "AUTHOR_ID": str(c["AUTHOR_ID"]),
                            "AUTHOR_NAME": c["AUTHOR_NAME"], "AUTHOR_EMAIL": c["AUTHOR_EMAIL"],
                            "POST_DATE": c["POST_DATE"].astimezone(self.store.tz).isoformat(timespec="seconds"),
                            "POST_MESSAGE": c["POST_MESSAGE"], "ATTACHED_OBJECTS": {}} for c in comments]}

    def _author(self, user_id: int) -> dict:
        user = self.store.users.get(int(user_id)) or {}
        name = " ".join(x for x in (user.get("NAME"), user.get("LAST_NAME")) if x)
        return {"AUTHOR_NAME": name, "AUTHOR_EMAIL": ""}

    # --- telephony ------------------------------------------------------------------------------
    def _external_line(self, verb: str, p: dict) -> dict:
        if verb == "get":
            with self.store.lock:
                lines = sorted(self.store.external_lines.values(), key=lambda x: x["ID"])
            return {"result": [{k: line[k] for k in ("NUMBER", "NAME", "CRM_AUTO_CREATE")} for line in lines]}
        if verb == "add":
            return {"result": {"ID": self.store.add_external_line(p.get("NUMBER"), p.get("NAME") or "",
                                                                  p.get("CRM_AUTO_CREATE") or "Y")}}
        self.store.delete_external_line(p.get("NUMBER"))
        return {"result": []}

    def _batch(self, p: dict) -> dict:
        """``batch`` as the vendor's ``CRestProvider::methodsBatch`` runs it (avshatalov48/bitrix-core-business
        modules/rest/classes/general/rest_provider.php; docs: bitrix-tools/b24-rest-docs
        api-reference/how-to-call-rest-api/batch.md):

        - ``halt``/``cmd`` in any case; ``halt`` is read with PHP's ``(bool)`` (JSON ``false``, 0,
          "0" and "" are off) and stops the batch at the first failed command;
        - each command ``method?query`` is split and its query parsed, which URL-decodes it, and only
          then are ``$result[key][…]`` references (also ``$next``, ``$total``, ``$time``, ``$error``)
          substituted in the parsed values (``CRestUtil::ParseBatchQuery``, rest_util.php): a
          reference sent encoded (``%24result%5Bk1%5D%5B49%5D%5BID%5D``, as SDKs send it) works;
        - a reference that is a whole value takes the referenced value as it is (an int stays an
          int); one inside a longer value is replaced only by a string; a path that does not exist
          stops at the last node it reached, and that node is used;
        - at most 50 commands run: each later one fails by itself with ``ERROR_BATCH_LENGTH_EXCEEDED``
          "Max batch length exceeded" in ``result_error`` (``CRestUtil::BATCH_MAX_LENGTH``);
        - ``batch`` inside a batch (refused since rest 24.0.0, batch.md), ``download`` and ``upload``
          fail with ``ERROR_BATCH_METHOD_NOT_ALLOWED`` "Method is not allowed for batch usage";
        - a failed command goes to ``result_error``; the batch answers HTTP 200;
        - ``result_time`` has, per successful command, ``start``, ``finish``, ``duration``,
          ``processing``, ``date_start``, ``date_finish`` (plus ``operating``/``operating_reset_at``:
          each command runs as its own ``CRestServerBatchItem``, rest.php ``appendDebugInfo``), and
          each command's operating time counts for its own method;
        - the parts are PHP arrays: an empty one is ``[]``; keys 0, 1, … in order make a JSON list.
        """
        q = {str(k).upper(): v for k, v in p.items()}
        cmd = q.get("CMD") or {}
        if isinstance(cmd, list):
            cmd = {str(i): c for i, c in enumerate(cmd)}
        if not isinstance(cmd, dict):
            cmd = {}
        halt = _php_bool(q.get("HALT"))
        parts: dict[str, dict] = {"result": {}, "next": {}, "total": {}, "time": {}, "error": {}}
        for n, (key, command) in enumerate(cmd.items()):
            key = str(key)
            if n >= BATCH_MAX_LENGTH:
                res = {"error": "ERROR_BATCH_LENGTH_EXCEEDED", "error_description": "Max batch length exceeded"}
            elif not isinstance(command, str):
                continue  # the vendor skips a command that is not a string
            else:
                res = self._batch_command(command, parts)
            if "error" in res:
                parts["error"][key] = res
                if halt:
                    break
            else:
                for part in ("result", "next", "total", "time"):
                    if part in res:
                        parts[part][key] = res[part]
        return {"result": _php_array(parts["result"]), "result_error": _php_array(parts["error"]),
                "result_total": _php_array(parts["total"]), "result_next": _php_array(parts["next"]),
                "result_time": _php_array(parts["time"])}

    def _batch_command(self, command: str, parts: dict) -> dict:
        """One command of a batch → ``{"result", "total"?, "next"?, "time"}`` or ``{"error", …}``."""
        start = time.time()
        method, _, query = command.partition("?")
        params = php_parse(parse_qsl(query, keep_blank_values=True)) if query else {}
        params = _substitute(params, parts)
        name = method.strip().lower().removesuffix(".json")
        if name in BATCH_FORBIDDEN:
            return {"error": "ERROR_BATCH_METHOD_NOT_ALLOWED", "error_description": "Method is not allowed for batch usage"}
        try:
            fault = self.faults.take(name, kinds=("OPERATION_TIME_LIMIT", "INTERNAL_SERVER_ERROR"),
                                     targeted_only=True)
            if fault is not None:
                raise self._fault_error(fault)
            proc_start = time.time()
            body = self._call(name, params)
            proc_finish = time.time()
        except ApiError as e:
            return {"error": e.code, "error_description": e.description}
        out = {"result": body["result"]}
        for part in ("next", "total"):
            if part in body:
                out[part] = body[part]
        used, reset_at = self._operating_used(name)
        out["time"] = self._time(start, time.time(), proc_finish - proc_start, used, reset_at)
        return out


# tasks.task.list: UPPER_CASE name (filter, order, select) → camelCase key of the answer
_TASK_FIELDS = {"ID": "id", "TITLE": "title", "CREATED_BY": "createdBy", "CREATED_DATE": "createdDate",
                "RESPONSIBLE_ID": "responsibleId", "CHANGED_DATE": "changedDate", "STATUS": "status",
                "COMMENTS_COUNT": "commentsCount"}
_COMMENT_ORDER_FIELDS = {"ID", "AUTHOR_ID", "AUTHOR_NAME", "AUTHOR_EMAIL", "POST_DATE"}
_COMMENT_FILTER_FIELDS = {"ID", "AUTHOR_ID", "AUTHOR_NAME", "POST_DATE"}
_USER_FILTER_FIELDS = {"ID", "ACTIVE", "EMAIL", "NAME", "LAST_NAME", "SECOND_NAME", "UF_DEPARTMENT",
                       "USER_TYPE", "WORK_POSITION", "PERSONAL_MOBILE", "WORK_PHONE", "UF_PHONE_INNER"}
_USER_ADD_FIELDS = {"EMAIL", "NAME", "LAST_NAME", "SECOND_NAME", "PERSONAL_GENDER", "PERSONAL_PROFESSION",
                    "PERSONAL_WWW", "PERSONAL_BIRTHDAY", "PERSONAL_PHONE", "PERSONAL_MOBILE", "PERSONAL_CITY",
                    "WORK_PHONE", "WORK_COMPANY", "WORK_POSITION", "WORK_DEPARTMENT", "UF_DEPARTMENT",
                    "UF_PHONE_INNER", "EXTRANET", "SONET_GROUP_ID"}


def _user_fields(p: dict) -> dict:
    """``user.add`` takes the fields at the top level (``{"EMAIL": …, "UF_DEPARTMENT": [1]}``)."""
    return {k.upper(): v for k, v in p.items() if k.upper() in _USER_ADD_FIELDS}


def _is_list_method(method: str) -> bool:
    """A method that answers one page of a list (``crm.lead.list``, ``crm.item.list``,
    ``task.commentitem.getlist`` …): each call costs ``PortalLimits.page_cost_s``."""
    return method.endswith((".list", ".getlist"))


def _truthy(value) -> bool:
    return str(value).strip().lower() not in ("", "0", "n", "false", "none")


def _user_matches(user: dict, flt: dict) -> bool:
    for raw_key, value in flt.items():
        key = str(raw_key)
        op = next((x for x in ("!@", "!=", ">=", "<=", "!", ">", "<", "@", "%", "=") if key.startswith(x)), "")
        name = key[len(op):].upper()
        have = user.get(name)
        if name == "ACTIVE":
            if _truthy(value) and not user.get("ACTIVE", True):
                return False
            if not _truthy(value) and user.get("ACTIVE", True):
                return False
            continue
        wanted = [str(v).lower() for v in _as_list(value)]
        if name == "UF_DEPARTMENT":
            values = [str(x) for x in (have or [])]
            if (op in ("!", "!=", "!@")) == any(v in values for v in wanted):
                return False
            continue
        text = "" if have is None else str(have).lower()
        if op == "%":
            ok = any(w.strip("%") in text for w in wanted)
        elif op in (">", ">=", "<", "<="):
            ok = _compare(int(have) if name == "ID" else text, op,
                          {int(w) if name == "ID" else w for w in wanted})
        elif name == "NAME" and any("%" in w for w in wanted):  # "Iva%": a LIKE pattern
            ok = any(re.fullmatch(re.escape(w).replace("%", ".*"), text) for w in wanted)
        else:
            ok = text in wanted
        if ok == (op in ("!", "!=", "!@")):
            return False
    return True


def _compare(have, op: str, wanted: set) -> bool:
    """One filter condition; ``wanted`` holds one value, or several (IN) for ``=``/``!``."""
    if op in ("", "="):
        return have in wanted
    if op in ("!", "!="):
        return have not in wanted
    if have is None:
        return False
    target = next(iter(wanted))
    return {">": have > target, ">=": have >= target, "<": have < target, "<=": have <= target}[op]


@dataclass(frozen=True)
class _OutboundWebhook:
    handler_id: int
    handler_url: str
    events: frozenset
    application_token: str


class _EventQueue:
    """Delivers events as the vendor's queue server does: asynchronously, one POST each
    (form-encoded, a few seconds' timeout), no retries; a full queue drops the event."""

    def __init__(self, maxsize: int = 1000, timeout: tuple[float, float] = (2.0, 5.0)) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self._timeout = timeout
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.sent = 0
        self.failed = 0

    def start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stopping.clear()
                self._thread = threading.Thread(target=self._run, name="sandbox-portal-events", daemon=True)
                self._thread.start()

    def put(self, url: str, form: list[tuple[str, str | None]]) -> None:
        try:
            self._queue.put_nowait((url, form))
        except queue.Full:
            with self._lock:
                self.failed += 1

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass  # the worker sees _stopping after its current POST
        thread.join(timeout)

    def _run(self) -> None:
        session = requests.Session()
        try:
            while not self._stopping.is_set():
                try:
                    item = self._queue.get(timeout=0.5)
                except queue.Empty:
                    continue
                if item is None:
                    break
                url, form = item
                # ts: the time the event leaves the queue, as the docs define it
                body = [(k, str(int(time.time())) if k == "ts" else v) for k, v in form]
                try:
                    resp = session.post(url, data=body, timeout=self._timeout, allow_redirects=False)
                    ok = 200 <= resp.status_code < 300
                except requests.RequestException:
                    ok = False
                with self._lock:
                    if ok:
                        self.sent += 1
                    else:
                        self.failed += 1
                if not ok:
                    log.info("outgoing webhook event %s to a local handler failed", dict(form).get("event"))
        finally:
            session.close()
            dropped = 0
            while True:  # what was still queued is lost, as on a portal whose queue stops
                try:
                    if self._queue.get_nowait() is not None:
                        dropped += 1
                except queue.Empty:
                    break
            with self._lock:
                self.failed += dropped


def _php_bool(value) -> bool:
    """PHP's ``(bool)``: false for null, false, 0, 0.0, "", "0" and an empty array; true otherwise
    (so "N", "false" and "0.0" are true)."""
    if value is None or value is False:
        return False
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, str):
        return value not in ("", "0")
    if isinstance(value, (list, dict)):
        return bool(value)
    return True


_PHP_INT_KEY = re.compile(r"^(0|-?[1-9][0-9]*)$")


def _php_array(d: dict) -> dict | list:
    """How PHP's ``json_encode`` writes an array: ``[]`` when empty, a list when the keys are the
    integers 0, 1, … in order (PHP turns the key "0" into 0), an object otherwise."""
    if not d:
        return []
    keys = list(d)
    if all(_PHP_INT_KEY.match(str(k)) for k in keys) and [int(k) for k in keys] == list(range(len(keys))):
        return list(d.values())
    return d


def _php_index(node: Any, part: str) -> Any:
    """``isset($node[$part]) ? $node[$part] : null`` for a decoded PHP array."""
    if isinstance(node, dict):
        return node.get(part)
    if isinstance(node, list) and _PHP_INT_KEY.match(part) and 0 <= int(part) < len(node):
        return node[int(part)]
    return None


def _resolve(value: str, parts: dict) -> Any:
    """Substitute the batch references in one (already URL-decoded) value, the way
    ``CRestUtil::processBatchElement`` does (rest_util.php)."""
    for m in list(_BATCH_REF_RE.finditer(value)):
        path = _PATH_PART_RE.findall(m.group(2))
        if not path:
            continue
        node: Any = parts[m.group(1).lower()]
        for part in path:
            nxt = _php_index(node, part)
            if nxt is None:
                break  # the vendor stops here and uses the node reached so far
            node = nxt
        if not isinstance(value, str):
            break
        if m.group(0) == value:
            value = node  # a whole value: the referenced value itself, of any type
        elif isinstance(node, str):
            value = value.replace(m.group(0), node)
    return value


def _substitute(node: Any, parts: dict) -> Any:
    """Walk a parsed command's parameters and resolve the references in every string value."""
    if isinstance(node, dict):
        return {k: _substitute(v, parts) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, parts) for v in node]
    if isinstance(node, str) and "$" in node:
        return _resolve(node, parts)
    return node


def _fix_multi(fields: dict) -> dict:
    """Multi-fields arrive as lists or (form/query encoded) as dicts keyed 0, 1, … or n0, n1."""
    out = dict(fields)
    for m in MULTI_FIELDS:
        if m in out:
            out[m] = _as_list(out[m])
    for binding in ("CONTACT_IDS", "COMPANY_IDS"):
        if binding in out:
            out[binding] = _as_list(out[binding])
    return out


# System fields only an import may set (api-reference/crm/universal/import/index.md, "Как сохранить
# историю элемента"); crm.item.add/update leave them to the portal.
_ITEM_SYSTEM_FIELDS = {"DATE_CREATE", "DATE_MODIFY", "CREATED_BY_ID", "MODIFY_BY_ID"}
# A field left out takes its default, the first entry of its list (crm-item-add.md and
# import/crm-item-import.md: a lead's stageId "по умолчанию имеет значение первой доступной стадии", a
# company's typeId "по умолчанию — первый доступный тип", a deal's stageId the first stage of its
# funnel); the sandbox's lists start with NEW and CUSTOMER.
_ITEM_DEFAULTS = {"lead": {"STATUS_ID": "NEW"}, "company": {"COMPANY_TYPE": "CUSTOMER"}}


def _from_item(entity: str, fields: dict, *, importing: bool, uf_in: dict[str, str] | None = None) -> dict:
    """crm.item.* ``fields`` → the store's fields. "Некорректное поле в fields будет проигнорировано"
    (crm-item-add.md, crm-item-update.md, import/crm-item-import.md): a name crm.item does not know —
    ``statusId``, ``companyType``, the read-only ``phone``/``email`` strings, ``fm`` in an import —
    changes nothing. Multi-fields: crm.item.import's page takes ``PHONE``/``EMAIL`` (lists of
    ``{VALUE, VALUE_TYPE}``, the crm_multifield structure); add/update take ``fm`` (see
    ``_fm_added``/``_fm_changes``). A lead's ``contactIds`` sets the one link the store keeps to
    their first entry. Custom fields (``uf_in``: a name as given → FIELD_NAME) are taken by their
    crm.item name or by the original one: the portal upper-cases the keys it is given, keeping a
    known UPPER_CASE name (see ``store.from_item_name``), which is what ``useOriginalUfNames: Y``
    relies on (import/crm-item-batch-import.md)."""
    out: dict = {}
    bound = None
    for raw_key, value in fields.items():
        key = str(raw_key)
        name = from_item_name(key, entity)
        if name is None and key in (uf_in or {}):
            out[uf_in[key]] = value
        elif name is not None and name != "ID":
            if importing or name not in _ITEM_SYSTEM_FIELDS:
                out[name] = value
        elif entity in ITEM_BINDINGS and key == ITEM_BINDINGS[entity][0]:
            bound = [x for x in _as_list(value) if str(x).strip() not in ("", "0")]
        elif importing and key in MULTI_FIELDS and entity in MULTI_ENTITIES:
            out[key] = value
    if bound is not None:
        out[ITEM_BINDINGS[entity][1]] = bound[0] if bound else None
    return _fix_multi(out)


def _item_defaults(entity: str, fields: dict) -> None:
    for name, value in _ITEM_DEFAULTS.get(entity, {}).items():
        fields.setdefault(name, value)
    if entity == "deal" and "STAGE_ID" not in fields:
        category = str(fields.get("CATEGORY_ID") or "0")
        fields["STAGE_ID"] = "NEW" if category == "0" else f"C{category}:NEW"


def _fm_entries(fm) -> list[tuple[str, dict]]:
    """``fm`` as (key, entry): a JSON list (no keys), or an object keyed ``n0``, ``n1`` … or by value
    IDs (crm-item-update.md, "fm"); a form-encoded list arrives keyed 0, 1 …"""
    if isinstance(fm, dict):
        pairs = [(str(k), v) for k, v in fm.items()]
    elif isinstance(fm, list):
        pairs = [("", v) for v in fm]
    else:
        return []
    return [(k, v) for k, v in pairs if isinstance(v, dict)]


def _fm_value(entry: dict) -> str:
    return "" if entry.get("value") is None else str(entry["value"])


def _fm_added(entity: str, fm) -> dict:
    """crm.item.add's ``fm``: every entry ``{typeId, valueType, value}`` is a new value
    (crm-item-add.md, "fm"). The store keeps PHONE, EMAIL, WEB and IM; LINK entries are dropped."""
    out: dict[str, list] = {}
    if entity not in MULTI_ENTITIES:
        return out  # deals and smart processes have no multi-fields (object-fields.md)
    for _, entry in _fm_entries(fm):
        type_id = str(entry.get("typeId") or "").upper()
        if type_id in MULTI_FIELDS and _fm_value(entry).strip():
            out.setdefault(type_id, []).append({"VALUE": _fm_value(entry),
                                                "VALUE_TYPE": str(entry.get("valueType") or "WORK")})
    return out


def _fm_changes(entity: str, rec: dict, fm) -> dict:
    """crm.item.update's ``fm`` against the record's values (crm-item-update.md, "fm"): the entry's
    key (or its ``id``) names an existing value → that value is changed, or removed when ``value`` is
    empty; a key ``n0``, ``n1`` … or an ID the record does not have → a new value ("Если не существует
    мультиполя с данным id, то будет создано новое мультиполе"). So a plain list only appends."""
    out: dict[str, list] = {}
    if entity not in MULTI_ENTITIES:
        return out
    owner = {str(x["ID"]): m for m in MULTI_FIELDS for x in rec.get(m) or []}
    for key, entry in _fm_entries(fm):
        value_id = key if key.isdigit() else str(entry.get("id") or "")
        value = _fm_value(entry)
        if value_id in owner:
            change = {"ID": value_id, "DELETE": "Y"} if not value.strip() else {"ID": value_id, "VALUE": value}
            if value.strip() and entry.get("valueType"):
                change["VALUE_TYPE"] = str(entry["valueType"])
            out.setdefault(owner[value_id], []).append(change)
        else:
            type_id = str(entry.get("typeId") or "").upper()
            if type_id in MULTI_FIELDS and value.strip():
                out.setdefault(type_id, []).append({"VALUE": value,
                                                    "VALUE_TYPE": str(entry.get("valueType") or "WORK")})
    return out


def _iso(ts: float, tz: dt.tzinfo = dt.timezone.utc) -> str:
    return dt.datetime.fromtimestamp(ts, tz).isoformat(timespec="seconds")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, fmt, *args):  # quiet: the URL path holds the webhook code
        pass

    def _params(self) -> dict:
        url = urlsplit(self.path)
        params = php_parse(parse_qsl(url.query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            raw = self.rfile.read(length)
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if ctype == "application/json":
                try:
                    body = orjson.loads(raw) if raw.strip() else {}
                except orjson.JSONDecodeError:
                    raise ApiError("INVALID_REQUEST", "Invalid JSON") from None
                if isinstance(body, list):  # PHP decodes a JSON array to keys 0, 1, … (positional params)
                    body = {str(i): v for i, v in enumerate(body)}
                if isinstance(body, dict):
                    params.update(body)
            else:
                params.update(php_parse(parse_qsl(raw.decode("utf-8"), keep_blank_values=True)))
        return params

    def _serve(self) -> None:
        portal = self.server.portal
        path = urlsplit(self.path).path
        m = _PATH_RE.match(path)
        app = None if m else _APP_PATH_RE.match(path)
        if not m and not app:
            self._send(404, {"error": "ERROR_METHOD_NOT_FOUND", "error_description": "Method not found!"})
            return
        try:
            params = self._params()
        except ApiError as e:
            self._send(400, {"error": e.code, "error_description": e.description})
            return
        if m:
            status, body, post_fault = portal.handle(m.group(1), m.group(2), m.group(3), params)
        else:
            status, body, post_fault = portal.handle(None, None, app.group(1), params)
        if post_fault == "DROP_AFTER_WRITE":
            self.close_connection = True
            try:
                self.connection.shutdown(2)
            except OSError:
                pass
            return
        if post_fault == "HTML_200":
            data = b"<html><body>502 Bad Gateway</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self._send(status, body)

    def _send(self, status: int, body: dict) -> None:
        data = orjson.dumps(body)
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = _serve
    do_POST = _serve


TLS_CERT_FILE = "portal_ca.pem"
TLS_KEY_FILE = "portal_key.pem"
TLS_HANDSHAKE_TIMEOUT_S = 10


def make_tls(out_dir: str | Path, *, host: str = "127.0.0.1", cert_days: float = 30) -> tuple[ssl.SSLContext, Path]:
    """A server TLS context with a fresh certificate for ``host`` (and localhost/127.0.0.1), made by
    the sandbox box's own generator (:func:`sandbox.box_web.tls_context`): ``(context, CA
    file)``. The CA file is the certificate clients trust (``verify=``, ``REQUESTS_CA_BUNDLE``,
    ``SSL_CERT_FILE``); its key is written next to it, mode 0600."""
    from ..box_web import tls_context

    context, ca_file, _ = tls_context(out_dir, host=host, cert_days=cert_days, cert_name=TLS_CERT_FILE,
                                      key_name=TLS_KEY_FILE)
    return context, ca_file


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # clients such as fast_bitrix24 open ~50 connections at once
    portal: Portal
    tls: ssl.SSLContext | None = None

    def finish_request(self, request, client_address) -> None:
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        # the handshake runs in the connection's own thread: one stalled client holds up no other
        request.settimeout(TLS_HANDSHAKE_TIMEOUT_S)
        try:
            conn = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return  # the client refused the certificate or went away
        conn.settimeout(None)
        super().finish_request(conn, client_address)

    def handle_error(self, request, client_address) -> None:
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLError, TimeoutError)):
            return  # the client went away (killed, gave up): nothing to report
        super().handle_error(request, client_address)


@dataclass
class PortalServer:
    """A running sandbox portal. ``webhook`` is the base URL any Bitrix24 client can use.

    ``tls`` (from :func:`make_tls`) serves HTTPS, as real portals do; ``ca_file`` is then the
    certificate a client must trust."""

    portal: Portal
    host: str = "127.0.0.1"
    port: int = 0
    tls: ssl.SSLContext | None = None
    ca_file: Path | None = None
    _server: _Server | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> "PortalServer":
        self._server = _Server((self.host, self.port), _Handler)
        self._server.portal = self.portal
        self._server.tls = self.tls
        self.port = self._server.server_address[1]
        self.portal.domain = f"{self.host}:{self.port}"
        self.portal.scheme = self.scheme
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"sandbox-portal-{self.port}", daemon=True)
        self._thread.start()
        return self

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def webhook(self) -> str:
        """``http(s)://127.0.0.1:PORT/rest/1/CODE/`` (contains the secret code)."""
        return f"{self.base_url}/rest/{self.portal.user_id}/{self.portal.code}/"

    @property
    def app_endpoint(self) -> str:
        """``http://127.0.0.1:PORT/rest/``: a local application's calls go to ``{this}{method}.json``
        with ``auth`` = ``portal.app_token`` (the only way to the app-only methods)."""
        return f"{self.base_url}/rest/"

    @property
    def store(self) -> CrmStore:
        return self.portal.store

    @property
    def faults(self) -> Faults:
        return self.portal.faults

    def close(self) -> None:
        self.portal.close_events()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "PortalServer":
        return self if self._server else self.start()

    def __exit__(self, *exc) -> None:
        self.close()

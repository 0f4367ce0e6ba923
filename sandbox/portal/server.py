"""The sandbox Bitrix24 portal: the REST API subset cloud2box uses, over real HTTP on loopback.

Faithful to the vendor's docs where the connector depends on it:

- incoming-webhook URLs ``http://127.0.0.1:PORT/rest/{USER_ID}/{CODE}/{method}.json`` (a wrong
  code → 401 ``NO_AUTH_FOUND``); GET with a PHP-style query string, POST with JSON or a
  form-encoded body;
- the envelope ``{"result", "next", "total", "time": {…, "operating", "operating_reset_at"}}`` and
  ``{"error", "error_description"}``;
- lists with page size 50, filter prefixes, ``order``, ``select``; ``start=-1`` answers without a
  count, ``start >= 0`` counts every matching row at ``count_cost_s`` per row;
- ``batch`` (≤ 50 commands, ``$result[key][n][FIELD]`` references, ``result_error``; one request
  for the rate limit);
- the leaky bucket per portal (``rate``/s drain, ``burst``; 503 ``QUERY_LIMIT_EXCEEDED``) and the
  per-method operating-time limit (429 ``OPERATION_TIME_LIMIT`` until ``operating_reset_at``);
- ``crm.<entity>.list/get/add/update/delete`` (``params[IMPORT]`` keeps the given dates),
  ``crm.item.list``, ``crm.item.batchImport`` (≤ 20 items, ascending ``createdTime``), ``user.get``.

An unresolved ``$result`` reference (a page shorter than the index) fails that command in
``result_error`` instead of running it with an empty value.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson

from .faults import Faults
from .store import (ENTITY_TYPE_IDS, CrmStore, StoreError, from_item_name, parse_date,
                    to_item_name)

_PATH_RE = re.compile(r"^/rest/(\d+)/([^/]+)/([A-Za-z0-9_.]+?)(?:\.json)?/?$")
_REF_RE = re.compile(r"\$result\[([^\]]+)\]((?:\[[^\]]*\])*)")
_ENTITY_METHOD_RE = re.compile(r"^crm\.(lead|deal|contact|company)\.(list|get|add|update|delete)$")

STATUS = {"QUERY_LIMIT_EXCEEDED": 503, "OPERATION_TIME_LIMIT": 429, "NO_AUTH_FOUND": 401,
          "INVALID_CREDENTIALS": 401, "ACCESS_DENIED": 403, "ERROR_METHOD_NOT_FOUND": 404,
          "INTERNAL_SERVER_ERROR": 500, "INVALID_REQUEST": 400, "INVALID_ARG_VALUE": 400, "NOT_FOUND": 400,
          "ERROR_CORE": 400, "ERROR_BATCH_LENGTH_EXCEEDED": 400}


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
    """The portal's plan limits. Defaults are the vendor's standard plan (2/s, burst 50, 480 s of
    operating time per method per 10 min); ``count_cost_s`` is the simulated cost of counting one
    row for offset paging (the vendor measured ~20 µs/row; the default is 10× cheaper so that
    benchmarks finish, the shape is the same)."""

    rate: float = 2.0
    burst: int = 50
    operating_limit_s: float = 480.0
    operating_window_s: float = 600.0
    count_cost_s: float = 2e-6


class Portal:
    """The API logic of one portal (no HTTP): auth, limits, methods, batch."""

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
        self._operating: dict[str, list[tuple[float, float]]] = {}
        self.requests = 0
        self.rejected = 0

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

    def _operating_used(self, method: str) -> tuple[float, float]:
        now = time.time()
        with self._bucket_lock:
            entries = [e for e in self._operating.get(method, []) if e[0] > now - self.limits.operating_window_s]
            self._operating[method] = entries
            used = sum(c for _, c in entries)
            reset_at = (entries[0][0] + self.limits.operating_window_s) if entries else now
        return used, reset_at

    def _operating_add(self, method: str, cost: float) -> None:
        with self._bucket_lock:
            self._operating.setdefault(method, []).append((time.time(), cost))

    # --- entry point --------------------------------------------------------------------------
    def handle(self, user_id: str, code: str, method: str, params: dict) -> tuple[int, dict, str | None]:
        """→ (status, body, fault kind to apply after the write or None)."""
        start = time.time()
        method = method.lower()
        post_fault = None
        try:
            if int(user_id) != self.user_id or not secrets.compare_digest(code, self.code):
                raise ApiError("NO_AUTH_FOUND", "Wrong authorization data")
            fault = self.faults.take(method)
            if fault is not None:
                if fault.kind == "OPERATION_TIME_LIMIT":
                    raise ApiError(fault.kind, "Method is blocked due to operation time limit.",
                                   {"time": {"operating": self.limits.operating_limit_s + 1,
                                             "operating_reset_at": time.time() + fault.reset_in}})
                if fault.kind in ("QUERY_LIMIT_EXCEEDED", "INTERNAL_SERVER_ERROR"):
                    raise ApiError(fault.kind, "Injected fault")
                post_fault = fault.kind
            self._admit()
            if method == "batch":
                result = self._batch(params)
                body = {"result": result}
            else:
                body = self._call(method, params)
            finish = time.time()
            used, reset_at = self._operating_used(method) if method != "batch" else (0.0, finish)
            body["time"] = {"start": start, "finish": finish, "duration": finish - start,
                            "processing": finish - start, "date_start": _iso(start), "date_finish": _iso(finish),
                            "operating_reset_at": reset_at, "operating": used}
            return 200, body, post_fault
        except ApiError as e:
            return STATUS.get(e.code, 400), {"error": e.code, "error_description": e.description, **e.extra}, None

    def _call(self, method: str, params: dict) -> dict:
        """One method call (also used for each batch command); returns the envelope without time."""
        self._operating_check(method)
        # Operating time = this command's own execution: CPU time of this thread (wall time would
        # charge it for other requests' work under the GIL) plus the simulated count.
        t0 = time.thread_time()
        try:
            body, simulated = self._dispatch(method, params)
        except StoreError as e:
            raise ApiError(e.code, e.description) from None
        if simulated > 0:
            time.sleep(simulated)  # the count the portal's database would be doing
        self._operating_add(method, time.thread_time() - t0 + simulated)
        return body

    def _dispatch(self, method: str, p: dict) -> tuple[dict, float]:
        m = _ENTITY_METHOD_RE.match(method)
        if m:
            entity, verb = m.groups()
            return getattr(self, f"_entity_{verb}")(entity, p), 0.0 if verb != "list" else self._tl.cost
        if method == "crm.item.list":
            return self._item_list(p), self._tl.cost
        if method == "crm.item.batchimport" and self.batch_import:
            return self._item_batch_import(p), 0.0
        if method == "user.get":
            return self._user_get(p), 0.0
        if method == "profile":
            return {"result": {"ID": str(self.user_id), "ADMIN": True}}, 0.0
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
                                            select=_as_list(p.get("select")), start=start,
                                            count_cost_s=self.limits.count_cost_s)
        self._tl.cost = cost
        return rows, total, max(start, 0)

    def _entity_list(self, entity: str, p: dict) -> dict:
        rows, total, start = self._list(entity, p)
        body: dict = {"result": rows}
        if total is not None:
            body["total"] = total
            if start + len(rows) < total:
                body["next"] = start + len(rows)
        return body

    def _entity_get(self, entity: str, p: dict) -> dict:
        rec = self.store.get(entity, int(p.get("id") or p.get("ID") or 0))
        if rec is None:
            raise ApiError("NOT_FOUND", "Not found")
        return {"result": self.store.render(entity, rec, ["*", "PHONE", "EMAIL", "CONTACT_IDS"])}

    def _entity_add(self, entity: str, p: dict) -> dict:
        fields = p.get("fields") or {}
        params = p.get("params") or {}
        fields = _fix_multi(fields)
        keep = bool(isinstance(params, dict) and params.get("IMPORT"))  # PHP truthiness
        if keep and params.get("IMPORT") in ("0", 0, False, "false"):
            keep = params.get("IMPORT") == "false"  # "false" is a non-empty string: truthy in PHP
        return {"result": self.store.add(entity, fields, keep_times=keep)}

    def _entity_update(self, entity: str, p: dict) -> dict:
        self.store.update(entity, int(p.get("id") or p.get("ID") or 0), _fix_multi(p.get("fields") or {}))
        return {"result": True}

    def _entity_delete(self, entity: str, p: dict) -> dict:
        self.store.delete(entity, int(p.get("id") or p.get("ID") or 0))
        return {"result": True}

    def _entity_of(self, p: dict) -> str:
        try:
            return ENTITY_TYPE_IDS[int(p.get("entityTypeId") or 0)]
        except (KeyError, ValueError):
            raise ApiError("INVALID_ARG_VALUE", "entityTypeId: unknown entity type") from None

    def _item_list(self, p: dict) -> dict:
        entity = self._entity_of(p)
        flt = {}
        for k, v in (p.get("filter") or {}).items():
            prefix = re.match(r"^[^A-Za-z]*", k).group(0)
            name = from_item_name(k[len(prefix):], entity)
            if name is None:
                raise ApiError("INVALID_ARG_VALUE", f"unknown filter field {k!r}")
            flt[prefix + name] = v
        order = {from_item_name(k, entity) or k: v for k, v in (p.get("order") or {}).items()}
        select = [s if s == "*" else (from_item_name(s, entity) or s) for s in _as_list(p.get("select"))]
        start = p.get("start", 0)
        rows, total, cost = self.store.list(entity, filter=flt, order=order, select=select or ["*", "PHONE", "EMAIL"],
                                            start=int(start or 0), count_cost_s=self.limits.count_cost_s)
        self._tl.cost = cost
        body: dict = {"result": {"items": [_to_item(r) for r in rows]}}
        if total is not None:
            body["total"] = total
            if int(start or 0) + len(rows) < total:
                body["next"] = int(start or 0) + len(rows)
        return body

    def _item_batch_import(self, p: dict) -> dict:
        entity = self._entity_of(p)
        data = _as_list(p.get("data"))
        if len(data) > 20:
            raise ApiError("INVALID_ARG_VALUE", "A maximum of 20 entities can be imported in a single request")
        items = []
        now = dt.datetime.now(dt.timezone.utc)
        for entry in data:
            fields = {}
            for k, v in (entry or {}).items():
                name = "PHONE" if k == "phone" else "EMAIL" if k == "email" else from_item_name(k, entity)
                if name:
                    fields[name] = v
            fields = _fix_multi(fields)
            try:
                created = parse_date(fields["DATE_CREATE"]) if fields.get("DATE_CREATE") else now
                updated = parse_date(fields["DATE_MODIFY"]) if fields.get("DATE_MODIFY") else created
                with self.store.lock:
                    newest = self.store.newest[entity]
                    if created > now or updated > now:
                        raise StoreError("INVALID_ARG_VALUE", "createdTime and updatedTime cannot be in the future")
                    if updated < created:
                        raise StoreError("INVALID_ARG_VALUE", "updatedTime cannot be earlier than createdTime")
                    if newest is not None and created < newest:
                        raise StoreError("INVALID_ARG_VALUE",
                                         "createdTime must increase monotonically: a newer record exists")
                    new_id = self.store.add(entity, fields, keep_times=True)
                items.append({"item": {"id": new_id}})
            except StoreError as e:
                items.append({"error": e.code, "error_description": e.description})
            except (ValueError, TypeError) as e:
                items.append({"error": "INVALID_ARG_VALUE", "error_description": str(e)})
        return {"result": {"items": items}}

    def _user_get(self, p: dict) -> dict:
        users = sorted(self.store.users.values(), key=lambda u: int(u["ID"]))
        flt = p.get("filter") or p.get("FILTER") or {}
        if isinstance(flt, dict) and flt.get("ID"):
            users = [u for u in users if str(u["ID"]) == str(flt["ID"])]
        start = int(p.get("start", 0) or 0)
        page = users[start:start + 50]
        body: dict = {"result": page, "total": len(users)}
        if start + 50 < len(users):
            body["next"] = start + 50
        return body

    def _batch(self, p: dict) -> dict:
        cmd = p.get("cmd") or {}
        if isinstance(cmd, list):
            cmd = {str(i): c for i, c in enumerate(cmd)}
        if len(cmd) > 50:
            raise ApiError("ERROR_BATCH_LENGTH_EXCEEDED", "Max batch length exceeded")
        halt = str(p.get("halt", "0")) not in ("0", "", "false")
        result, errors, totals, nexts, times = {}, {}, {}, {}, {}
        for key, command in cmd.items():
            method, _, query = str(command).partition("?")
            try:
                query = _REF_RE.sub(lambda m: _resolve(result, m), query)
                params = php_parse(parse_qsl(query, keep_blank_values=True))
                t0 = time.time()
                body = self._call(method.lower().removesuffix(".json"), params)
                result[key] = body["result"]
                if "total" in body:
                    totals[key] = body["total"]
                if "next" in body:
                    nexts[key] = body["next"]
                times[key] = {"start": t0, "finish": time.time(), "duration": time.time() - t0}
            except ApiError as e:
                errors[key] = {"error": e.code, "error_description": e.description}
                if halt:
                    break
        return {"result": result, "result_error": errors, "result_total": totals, "result_next": nexts,
                "result_time": times}


def _resolve(results: dict, m: re.Match) -> str:
    node: Any = results.get(m.group(1))
    for part in re.findall(r"\[([^\]]*)\]", m.group(2)):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            node = None
        if node is None:
            raise ApiError("INVALID_REQUEST", f"unresolved batch reference {m.group(0)}")
    return str(node)


def _fix_multi(fields: dict) -> dict:
    """Multi-fields arrive as lists or (form/query encoded) as dicts keyed 0, 1, … or n0, n1."""
    out = dict(fields)
    for m in ("PHONE", "EMAIL"):
        if m in out:
            out[m] = _as_list(out[m])
    if "CONTACT_IDS" in out:
        out["CONTACT_IDS"] = _as_list(out["CONTACT_IDS"])
    return out


def _to_item(row: dict) -> dict:
    out = {}
    for k, v in row.items():
        if k in ("PHONE", "EMAIL"):
            out[k.lower()] = v
        else:
            out[to_item_name(k)] = int(v) if k == "ID" else v
    return out


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds")


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
                if isinstance(body, dict):
                    params.update(body)
            else:
                params.update(php_parse(parse_qsl(raw.decode("utf-8"), keep_blank_values=True)))
        return params

    def _serve(self) -> None:
        portal = self.server.portal
        m = _PATH_RE.match(urlsplit(self.path).path)
        if not m:
            self._send(404, {"error": "ERROR_METHOD_NOT_FOUND", "error_description": "Method not found!"})
            return
        try:
            params = self._params()
        except ApiError as e:
            self._send(400, {"error": e.code, "error_description": e.description})
            return
        status, body, post_fault = portal.handle(m.group(1), m.group(2), m.group(3), params)
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # clients such as fast_bitrix24 open ~50 connections at once
    portal: Portal

    def handle_error(self, request, client_address) -> None:
        import sys

        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the client went away (killed, gave up): nothing to report
        super().handle_error(request, client_address)


@dataclass
class PortalServer:
    """A running sandbox portal. ``webhook`` is the base URL any Bitrix24 client can use."""

    portal: Portal
    host: str = "127.0.0.1"
    port: int = 0
    _server: _Server | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> "PortalServer":
        self._server = _Server((self.host, self.port), _Handler)
        self._server.portal = self.portal
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"sandbox-portal-{self.port}", daemon=True)
        self._thread.start()
        return self

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def webhook(self) -> str:
        """``http://127.0.0.1:PORT/rest/1/CODE/`` (contains the secret code)."""
        return f"{self.base_url}/rest/{self.portal.user_id}/{self.portal.code}/"

    @property
    def store(self) -> CrmStore:
        return self.portal.store

    @property
    def faults(self) -> Faults:
        return self.portal.faults

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "PortalServer":
        return self if self._server else self.start()

    def __exit__(self, *exc) -> None:
        self.close()

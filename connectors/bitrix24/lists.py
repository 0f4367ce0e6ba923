"""Fast lists: batches of up to 50 list commands chained by ``filter[>ID]=$result[prev][49][ID]``.

Each command asks for ``order[ID]=ASC`` and ``start=-1`` (no count query), so every page costs
the portal one index range scan; 50 chained pages travel in one request (one drop of the leaky
bucket). The first page shorter than 50 ends the list: later commands in that batch reference a
row that does not exist and are ignored, whatever the portal did with them.

:func:`offset_list` is the slow, classic way (``start=0,50,100…`` with a count on every page),
kept for the benchmark.
"""

from __future__ import annotations

import time
from typing import Any, Iterator
from urllib.parse import quote

from connectors.errors import FatalError, TransientError

from .rest import Bitrix24Client

PAGE = 50
ITEM_ENTITY_TYPE = {"lead": 1, "deal": 2, "contact": 3, "company": 4}


def php_query(params: dict, prefix: str = "") -> str:
    """Encode nested params the way PHP reads them: ``filter[>ID]=5&select[0]=ID``.
    ``$result[…]`` references are left unescaped so the portal can resolve them."""
    parts: list[str] = []

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}[{k}]" if key else str(k))
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{key}[{i}]")
        else:
            text = "" if value is None else str(value)
            enc = text if text.startswith("$result[") else quote(text, safe="")
            parts.append(f"{quote(key, safe='[]')}={enc}")

    walk(params, prefix)
    return "&".join(parts)


def _command(method: str, *, after: str, flt: dict, select: list[str], extra: dict, item: bool) -> str:
    id_key = "id" if item else "ID"
    params = dict(extra)
    params["order"] = {id_key: "ASC"}
    params["filter"] = {**flt, f">{id_key}": after}
    params["select"] = select
    params["start"] = -1
    return f"{method}?{php_query(params)}"


def fast_list(client: Bitrix24Client, method: str, *, filter: dict | None = None, select: list[str] | None = None,
              after_id: int = 0, extra: dict | None = None, max_requests: int = 1_000_000,
              commands_per_batch: int = 50) -> Iterator[list[dict]]:
    """Yield pages (lists of rows) of ``method`` in ascending ID order, ID > ``after_id``.

    ``method`` is ``crm.lead.list``-style or ``crm.item.list`` (then ``extra`` holds
    ``entityTypeId``, rows come from ``result.items``, and filter/order/select and the rows use
    crm.item's own names — ``id``, a lead's ``stageId``, a company's ``typeId``, ``fm`` only with
    select ``["*"]``: bitrix-tools/b24-rest-docs api-reference/crm/universal/crm-item-list.md and
    object-fields.md). ``max_requests`` bounds the loop.
    """
    item = method == "crm.item.list"
    id_key = "id" if item else "ID"
    flt = dict(filter or {})
    select = list(select or ["*"])
    if select != ["*"] and "*" not in select and id_key not in select:
        select.insert(0, id_key)
    last = str(after_id)
    for _ in range(max_requests):
        cmd: dict[str, str] = {}
        for i in range(commands_per_batch):
            after = last if i == 0 else f"$result[p{i - 1}][{PAGE - 1}][{id_key}]" if not item \
                else f"$result[p{i - 1}][items][{PAGE - 1}][{id_key}]"
            cmd[f"p{i}"] = _command(method, after=after, flt=flt, select=select, extra=extra or {}, item=item)
        res = client.batch(cmd)
        for i in range(commands_per_batch):
            key = f"p{i}"
            if key not in res["result"]:
                # Pages before it are good; later ones hang on it. A limit (OPERATION_TIME_LIMIT on
                # this one command) or a transient error: go on from the last good page; the next
                # request waits the limit out in the client's one retry loop (its first command fails).
                err = client.command_error(cmd, res, key)
                if isinstance(err, TransientError) and i > 0:
                    break
                if isinstance(err, TransientError):  # the client gave it back although nothing ran
                    raise err
                raise FatalError(f"{client.name}: {method} failed in a batch: {err}",
                                 fix="check the filter and the webhook's scopes")
            rows = res["result"][key]
            if item:
                rows = rows.get("items", []) if isinstance(rows, dict) else []
            if rows:
                yield rows
            if len(rows) < PAGE:
                return
            last = str(rows[-1][id_key])
    raise FatalError(f"{client.name}: {method} did not end within {max_requests} requests",
                     fix="raise the request budget if the table is really this big")


def iter_rows(client: Bitrix24Client, method: str, **kw) -> Iterator[dict]:
    """Rows of :func:`fast_list`, one by one."""
    for page in fast_list(client, method, **kw):
        yield from page


def offset_list(client: Bitrix24Client, method: str, *, filter: dict | None = None, select: list[str] | None = None,
                max_requests: int = 1_000_000, deadline: float | None = None) -> Iterator[list[dict]]:
    """Classic paging with ``start=N`` (the portal counts the whole filtered set on every page).
    One page per request, ``next`` tells where to go on. ``deadline`` (monotonic) stops early."""
    start = 0
    for _ in range(max_requests):
        if deadline is not None and time.monotonic() > deadline:
            return
        body = client.call(method, {"filter": filter or {}, "select": select or ["*"], "order": {"ID": "ASC"},
                                    "start": start})
        rows = body.get("result") or []
        if rows:
            yield rows
        if "next" not in body:
            return
        start = int(body["next"])

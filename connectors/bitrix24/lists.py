"""Fast lists: batches of up to 50 list commands chained by ``filter[>ID]=$result[prev][49][ID]``.

Each command asks for ``order[ID]=ASC`` and ``start=-1`` (no count query), so every page costs
the portal one index range scan; 50 chained pages travel in one request (one drop of the leaky
bucket). The first page shorter than 50 ends the list: later commands in that batch reference a
row that does not exist and are ignored, whatever the portal did with them.

Chained pages run one after the other on the portal: a batch of 50 costs 50 × ~0.068 s of
processing (bitrix-tools/b24-rest-docs api-reference/performance/huge-data.md), so one chain sends
a request every ~3.4 s while the plan allows 2 per second. A listing longer than one batch
therefore finds the highest ID and lists the rest as ``chains`` ID ranges in parallel, each range
its own chain, pages still yielded in ID order (see :func:`fast_list`).

:func:`offset_list` is the slow, classic way (``start=0,50,100…`` with a count on every page),
kept for the benchmark.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator
from urllib.parse import quote

from connectors.errors import FatalError, TransientError

from .rest import Bitrix24Client

PAGE = 50
CHAINS = 16  # parallel chains: 16 × 2500 rows per ~3.4 s > the 2 requests/s × 2500 rows the plan allows (and the burst)
RANGE_BATCHES = 4  # one parallel range = this many full batches of IDs
FIRST_BATCH = 5  # pages in the first batch of a listing that may go parallel (short: the chains start sooner)
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
              commands_per_batch: int = 50, chains: int = CHAINS) -> Iterator[list[dict]]:
    """Yield pages (lists of rows) of ``method`` in ascending ID order, ID > ``after_id``.

    ``method`` is ``crm.lead.list``-style or ``crm.item.list`` (then ``extra`` holds
    ``entityTypeId``, rows come from ``result.items``, and filter/order/select and the rows use
    crm.item's own names — ``id``, a lead's ``stageId``, a company's ``typeId``, ``fm`` only with
    select ``["*"]``: bitrix-tools/b24-rest-docs api-reference/crm/universal/crm-item-list.md and
    object-fields.md). ``max_requests`` bounds each chain's loop.

    The first batch (``FIRST_BATCH`` pages when ``chains`` > 1) runs alone; when it was full (more
    rows follow), the IDs up to the highest one are split into ranges listed by ``chains``
    parallel chains (the client's leaky bucket is shared), and rows added meanwhile above it by
    one last chain.
    """
    item = method == "crm.item.list"
    id_key = "id" if item else "ID"
    select = list(select or ["*"])
    if select != ["*"] and "*" not in select and id_key not in select:
        select.insert(0, id_key)
    spec = dict(method=method, flt=dict(filter or {}), select=select, extra=extra or {}, item=item,
                max_requests=max_requests, commands_per_batch=commands_per_batch)
    last = after_id
    # the first batch alone tells whether more rows follow; short, so that a big listing starts
    # its parallel chains soon (each chained page waits for the one before it on the portal)
    first = dict(spec, commands_per_batch=min(commands_per_batch, FIRST_BATCH)) if chains > 1 else spec
    for pages, full in _chain(client, after=after_id, upto=None, one_batch=chains > 1, **first):
        yield from pages
        if not full:
            return
        last = int(pages[-1][-1][id_key])
        if len(pages) < first["commands_per_batch"]:
            # a limit cut the batch short (OPERATION_TIME_LIMIT): the method's budget binds, and
            # parallel chains would only be refused in turn; one chain waits it out
            for more, _ in _chain(client, after=last, upto=None, **spec):
                yield from more
            return
    top = _highest_id(client, method, spec["flt"], extra or {}, item)
    if top > last:
        # every chain busy, and no range longer than RANGE_BATCHES batches (a dense range of one
        # ID short of full batches ends on a short page, without an empty request after it)
        longest = PAGE * commands_per_batch * RANGE_BATCHES - 1
        width = max(1, min(longest, -(-(top - last) // chains)))
        bounds = [(lo, min(lo + width, top)) for lo in range(last, top, width)]
        pool = ThreadPoolExecutor(max_workers=chains, thread_name_prefix="fast-list")
        try:
            for pages in pool.map(lambda b: [p for ps, _ in _chain(client, after=b[0], upto=b[1], **spec) for p in ps],
                                  bounds):
                yield from pages
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # a consumer that stops early
        last = top
    for pages, _ in _chain(client, after=last, upto=None, **spec):
        yield from pages


def _highest_id(client: Bitrix24Client, method: str, flt: dict, extra: dict, item: bool) -> int:
    """The highest ID the filter matches (one page ordered by ID descending, no count), 0 if none."""
    id_key = "id" if item else "ID"
    body = client.call(method, {**extra, "filter": flt, "order": {id_key: "DESC"}, "select": [id_key], "start": -1})
    rows = body.get("result") or []
    if item:
        rows = rows.get("items", []) if isinstance(rows, dict) else []
    return int(rows[0][id_key]) if rows else 0


def _chain(client: Bitrix24Client, *, method: str, after: int, upto: int | None, flt: dict, select: list[str],
           extra: dict, item: bool, max_requests: int, commands_per_batch: int,
           one_batch: bool = False) -> Iterator[tuple[list[list[dict]], bool]]:
    """One chain from ID > ``after`` (to ``upto`` inclusive, if given): per batch sent, (its
    non-empty pages, whether all of them were full so that more rows may follow)."""
    id_key = "id" if item else "ID"
    if upto is not None:
        flt = {**flt, f"<={id_key}": upto}
    last = str(after)
    for _ in range(max_requests):
        cmd: dict[str, str] = {}
        for i in range(commands_per_batch):
            ref = f"$result[p{i - 1}][{PAGE - 1}][{id_key}]" if not item \
                else f"$result[p{i - 1}][items][{PAGE - 1}][{id_key}]"
            cmd[f"p{i}"] = _command(method, after=last if i == 0 else ref, flt=flt, select=select, extra=extra,
                                    item=item)
        res = client.batch(cmd)
        pages: list[list[dict]] = []
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
                pages.append(rows)
            if len(rows) < PAGE:
                yield pages, False
                return
            last = str(rows[-1][id_key])
        yield pages, True
        if one_batch:
            return
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

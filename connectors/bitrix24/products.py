"""Products created in the cloud after the backup, and the product rows of the delta's deals.

Products (``crm.product.*``, api-reference/crm/outdated/products/) have no ORIGINATOR_ID/ORIGIN_ID;
their external code ``XML_ID`` ("Внешний код", crm-product-fields.md) carries the link instead: the
cloud's own XML_ID when it has one (an external system's code names the same product on both
sides), else ``cloud2box:<cloud ID>``. Before writing, the box is searched by those codes, so a
product whose add lost its answer is found, not added twice.

Deal product rows are read for many deals at once with ``crm.item.productrow.list``
(api-reference/crm/universal/product-rows/crm-item-productrow-list.md: ``=ownerType`` ``D`` and
``=ownerId``, which "works with arrays" too; camelCase rows under ``result.productRows``) and written
with ``crm.deal.productrows.set`` (api-reference/crm/deals/crm-deal-productrows-set.md), which
replaces every row of the deal: sending it again is harmless, so a lost answer only needs the next
round's re-read. ``PRODUCT_ID`` is remapped; a product the box does not have becomes a row by name
(``PRODUCT_ID`` 0, "not from the catalogue") and is listed as unresolved.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation

from .lists import iter_rows, php_query
from .model import ORIGINATOR, chunks, parse_date

log = logging.getLogger("cloud2box.bitrix24")

PRODUCT_FIELDS = ("NAME", "PRICE", "CURRENCY_ID", "DESCRIPTION", "DESCRIPTION_TYPE", "ACTIVE", "SORT", "MEASURE",
                  "VAT_ID", "VAT_INCLUDED")
# crm.item.productrow.list's camelCase row (data-types.md, crm_item_product_row) → the name
# crm.deal.productrows.set takes (crm-deal-productrows-set.md, "Список доступных полей").
ROW_NAMES = {"productId": "PRODUCT_ID", "productName": "PRODUCT_NAME", "price": "PRICE",
             "priceExclusive": "PRICE_EXCLUSIVE", "priceNetto": "PRICE_NETTO", "priceBrutto": "PRICE_BRUTTO",
             "quantity": "QUANTITY", "discountTypeId": "DISCOUNT_TYPE_ID", "discountRate": "DISCOUNT_RATE",
             "discountSum": "DISCOUNT_SUM", "taxRate": "TAX_RATE", "taxIncluded": "TAX_INCLUDED",
             "measureCode": "MEASURE_CODE", "measureName": "MEASURE_NAME", "sort": "SORT"}
ROWS_PER_COMMAND = 10  # deals per productrow.list command: most deals hold a few rows, a page 50


def product_code(cloud_id: str, row: dict) -> str:
    """The XML_ID a cloud product carries on the box (see the module doc)."""
    own = str(row.get("XML_ID") or "").strip()
    return own or f"{ORIGINATOR}:{cloud_id}"


def product_fields(cloud_id: str, row: dict) -> dict:
    """What crm.product.add gets for a cloud product."""
    out = {f: row[f] for f in PRODUCT_FIELDS if row.get(f) not in (None, "")}
    out["XML_ID"] = product_code(cloud_id, row)
    return out


def products_on_box(box, codes: Iterable[str]) -> dict[str, list[str]]:
    """Box products carrying one of ``codes`` as XML_ID: code → box IDs, ascending."""
    found: dict[str, list[str]] = {}
    for group in chunks(sorted(set(codes)), 50):
        for row in iter_rows(box, "crm.product.list", filter={"@XML_ID": group}, select=["ID", "XML_ID"],
                             commands_per_batch=5):
            found.setdefault(str(row.get("XML_ID")), []).append(str(row["ID"]))
    return {c: sorted(ids, key=int) for c, ids in found.items()}


def list_products_since(cloud, max_id: int) -> dict[str, dict]:
    """Cloud products created after the backup (IDs above its highest)."""
    return {str(r["ID"]): r for r in iter_rows(cloud, "crm.product.list", select=["*"], after_id=max_id)}


def read_rows(client, deal_ids: Iterable[str]) -> dict[str, list[dict]]:
    """Product rows of ``deal_ids`` (every one in the answer, ``[]`` when it has none), in row ID
    order. Each command reads ``ROWS_PER_COMMAND`` deals; a full page is followed by one reading on
    from its last row ID (``>id``), until every command came back short. Bounded by the rows."""
    ids = sorted({str(d) for d in deal_ids}, key=int)
    out: dict[str, list[dict]] = {d: [] for d in ids}
    pending = {f"r{i}": (group, 0) for i, group in enumerate(chunks(ids, ROWS_PER_COMMAND))}
    for _ in range(1_000_000):  # every round ends a command or moves it past 50 rows
        if not pending:
            return out
        keys = list(pending)[:50]
        cmd = {k: "crm.item.productrow.list?" + php_query(
            {"filter": {"=ownerType": "D", "=ownerId": pending[k][0], ">id": pending[k][1]}, "order": {"id": "ASC"}})
            for k in keys}
        for key, answer in client.batch_each(cmd).items():
            body = answer["result"] if isinstance(answer["result"], dict) else {}
            rows = body.get("productRows") or []
            for r in rows:
                out.setdefault(str(r.get("ownerId")), []).append(r)
            group, _ = pending.pop(key)
            if len(rows) >= 50:
                pending[key] = (group, int(rows[-1]["id"]))
    raise AssertionError("unreachable: the loop above ends with the rows")


def _num(value) -> str:
    """A money or quantity value as a canonical number text ("1200.00" and 1200 are the same)."""
    try:
        return format(Decimal(str(value)).normalize(), "f") if value not in (None, "") else "0"
    except InvalidOperation:
        return str(value)


def row_key(row: dict, product_map: dict[str, str] | None = None) -> tuple[str, str, str]:
    """(product, price, quantity) of a camelCase row, the product in box terms when ``product_map``
    is given; a row without a catalogue product is known by its name."""
    pid = str(row.get("productId") or "0")
    if pid != "0" and product_map is not None:
        pid = product_map.get(pid) or "0"  # not on the box: written as a row by name
    product = f"#{pid}" if pid != "0" else f"name:{str(row.get('productName') or '').strip()}"
    return product, _num(row.get("price")), _num(row.get("quantity"))


def rows_multiset(rows: list[dict], product_map: dict[str, str] | None = None) -> Counter:
    return Counter(row_key(r, product_map) for r in rows)


def set_rows(cloud_rows: list[dict], box_product: dict[str, str | None]) -> tuple[list[dict], list[str]]:
    """crm.deal.productrows.set's ``rows`` for a deal's cloud rows; ``box_product``: cloud product ID
    → box product ID (None: not on the box). Returns the rows and the cloud product IDs not resolved."""
    out, unresolved = [], []
    for r in sorted(cloud_rows, key=lambda x: (int(x.get("sort") or 0), int(x.get("id") or 0))):
        row = {ROW_NAMES[k]: v for k, v in r.items() if k in ROW_NAMES and v is not None}
        pid = str(r.get("productId") or "0")
        if pid != "0":
            box_id = box_product.get(pid)
            if box_id is None:
                unresolved.append(pid)
                row["PRODUCT_ID"] = 0  # a row by name: the catalogue product is not on the box
            else:
                row["PRODUCT_ID"] = int(box_id)
        out.append(row)
    return out, unresolved


def product_marks(box, cutoff_iso: str) -> dict[str, int]:
    """``max_id`` of the box's products created at or before the cutoff, and ``count`` up to it."""
    body = box.call("crm.product.list", {"order": {"ID": "DESC"}, "filter": {"<=DATE_CREATE": cutoff_iso},
                                         "select": ["ID"], "start": -1})
    rows = body.get("result") or []
    max_id = int(rows[0]["ID"]) if rows else 0
    return {"max_id": max_id, "count": _count(box, "crm.product.list", max_id)}


def _count(box, method: str, max_id: int) -> int:
    if max_id <= 0:
        return 0
    body = box.call(method, {"filter": {"<=ID": max_id}, "select": ["ID"], "start": 0})
    return int(body.get("total") or len(body.get("result") or []))


def created_after(row: dict, field: str, cutoff) -> bool:
    created = parse_date(row.get(field))
    return created is not None and created > cutoff


# --- writing -------------------------------------------------------------------------------------

def import_products(ctx, products: dict[str, dict]) -> None:
    """Add the cloud's new products the box does not have yet (found by XML_ID first)."""
    from .importer import _send, _settle
    from .timeline_base import created_by, run_rounds

    rep = ctx.report.entities["product"]
    code_of = {c: product_code(c, r) for c, r in products.items()}

    def mapped_now() -> dict[str, str]:
        found = products_on_box(ctx.box, code_of.values())
        pairs = [(c, found[code][0]) for c, code in code_of.items() if code in found]
        known = ctx.idmap.get("product")
        rep.map_rebuilt += ctx.idmap.repoint("product", [(c, b) for c, b in pairs if known.get(c) != b])
        rep.duplicates_in_box = sorted((c for c, code in code_of.items() if len(found.get(code, ())) > 1), key=int)
        return {c: b for c, b in pairs}

    def step() -> tuple[str, ...]:
        on_box = mapped_now()
        todo = [c for c in sorted(products, key=int) if c not in on_box and c not in ctx.failed.get("product", ())]
        rep.unchanged = len(on_box)
        for group in chunks(todo, 50):
            cmd = {f"p{i}": "crm.product.add?" + php_query({"fields": product_fields(c, products[c])})
                   for i, c in enumerate(group)}
            codes = [code_of[c] for c in group]

            def look(codes=codes):
                found = products_on_box(ctx.box, codes)
                return all(c in found for c in codes), tuple(sorted((k, tuple(v)) for k, v in found.items()))

            res = _send(ctx, "product", cmd, len(group), f"a write of {len(group)} products", look, lambda s: None)
            _ok, unsure = created_by(ctx, "product", cmd, res, [(f"p{i}", cid) for i, cid in enumerate(group)])
            if unsure:
                _settle(ctx, "new products", look)
        return tuple(f"create:{c}" for c in todo)

    run_rounds(ctx, "product", step)


def box_product_map(idmap, product_max_id: int | None) -> dict[str, str | None]:
    """Cloud product ID → box product ID (``.get`` gives None when the box lacks it): moved products
    through the map, products of the backup keep their IDs, others above its highest ID are not there."""
    return _ProductMap(idmap.get("product"), product_max_id)


class _ProductMap(dict):
    def __init__(self, mapped: dict[str, str], max_id: int | None) -> None:
        super().__init__(mapped)
        self.max_id = max_id

    def get(self, key, default=None):  # type: ignore[override]
        key = str(key)
        if key in self:
            return self[key]
        return None if self.max_id is not None and int(key) > self.max_id else key


_SIGNED_NUMBERS = ("price", "quantity", "discountTypeId", "discountRate", "discountSum", "taxRate")


def _row_signature(rows: list[dict]) -> Counter:
    """What must be equal per row, as a multiset (the box's own row IDs, and the prices it derives
    from price, discount and tax, do not count): the product (its name when not from the catalogue),
    price, quantity, discount, tax."""
    out: Counter = Counter()
    for r in rows:
        pid = str(r.get("productId") or "0")
        product = f"#{pid}" if pid != "0" else f"name:{str(r.get('productName') or '').strip()}"
        out[(product, *(_num(r.get(k)) for k in _SIGNED_NUMBERS), str(r.get("taxIncluded") or "N"))] += 1
    return out


def _as_read(rows: list[dict]) -> list[dict]:
    """crm.deal.productrows.set rows in crm.item.productrow.list's names, to compare with a read."""
    back = {v: k for k, v in ROW_NAMES.items()}
    return [{back[k]: v for k, v in r.items() if k in back} for r in rows]


def import_rows(ctx, owners, deal_rows: dict[str, list[dict]], product_max_id: int | None) -> None:
    """Give every delta deal on the box the cloud's rows (crm.deal.productrows.set replaces them)."""
    from .importer import _send, _unwritten
    from .timeline_base import run_rounds

    rep = ctx.report.entities["productrow"]
    box_deal = {c: owners.box_id("deal", c) for c in deal_rows}
    rep.unresolved = [f"deal {c}: not on the box" for c, b in box_deal.items() if b is None]
    pmap = box_product_map(ctx.idmap, product_max_id)

    def step() -> tuple[str, ...]:
        targets = {c: b for c, b in box_deal.items() if b is not None and c not in ctx.failed.get("productrow", ())}
        on_box = read_rows(ctx.box, targets.values())
        plans, unresolved = [], set(rep.unresolved)
        for cid, bid in sorted(targets.items(), key=lambda x: int(x[0])):
            rows, missing = set_rows(deal_rows[cid], pmap)
            unresolved.update(f"deal {cid}: product {p} is not on the box (row kept by name)" for p in missing)
            if _row_signature(_as_read(rows)) != _row_signature(on_box.get(bid, [])):
                plans.append((cid, bid, rows))
        rep.unresolved = sorted(unresolved)
        rep.unchanged = len(targets) - len(plans)
        for group in chunks(plans, 50):
            cmd = {f"s{i}": "crm.deal.productrows.set?" + php_query({"id": bid, "rows": rows})
                   for i, (_c, bid, rows) in enumerate(group)}
            # idempotent by nature: a lost answer is settled by the next round's re-read
            res = _send(ctx, "productrow", cmd, len(group), f"the rows of {len(group)} deals",
                        lambda: (False, None), lambda s: None)
            for i, (cid, bid, _rows) in enumerate(group):
                key = f"s{i}"
                if key in res["result"]:
                    rep.updated += 1
                elif _unwritten(ctx, cmd, res, key) is None:
                    rep.failures.append(f"deal {cid} → box {bid}: rows refused: {res['result_error'].get(key)}")
                    ctx.failed.setdefault("productrow", set()).add(cid)
        return tuple(f"set:{c}" for c, _, _ in plans)

    run_rounds(ctx, "productrow", step)

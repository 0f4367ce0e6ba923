"""How the report shows a step's evidence: a few facts in the steps table, all of it in an appendix.

A step's evidence and counters are JSON of any depth (a download's parts, a reconciliation per
entity). The steps table gets :func:`summary` — the counters and the short top-level facts; the
appendix gets :func:`tree` — the whole evidence as nested key/value tables, where a mapping of
like records (entity → counts) or a list of records becomes one table, a wide record a line of
``key value`` pairs, and only long lists are cut (the journal and steps.csv keep everything).
"""

from __future__ import annotations

import json
import re

from .forecast import human_bytes

SUMMARY_COUNTERS = 6  # counters shown in the steps table
SUMMARY_FACTS = 4  # short top-level evidence values shown in the steps table
SHORT_TEXT = 120  # a top-level text this long or shorter is a "fact"
TABLE_COLUMNS = 8  # records with more (non-empty) fields are shown one per line
MAX_ROWS = 30  # rows of a list shown in the appendix; the rest are counted
MAX_DEPTH = 5
MAX_TEXT = 2000
INLINE_FIELDS = 20  # a flat record this small is one line of "key value" pairs …
INLINE_CHARS = 400  # … when that line is this short
RECORD_CHARS = 2000  # a field of a record in a list
_PIPE_ROW = re.compile(r"^\s*\|.*\|\s*$")


def label(key) -> str:
    return str(key).replace("_", " ")


def _number(key: str, value: float) -> str:
    k = key.lower()
    if "bytes" in k or k.endswith("_bps"):
        return human_bytes(value) + ("/s" if k.endswith(("_per_s", "_bps")) else "")
    if float(value).is_integer():
        return f"{int(value):,}".replace(",", " ")
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}".replace(",", " ")


def _scalar(value) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def cell(value, limit: int = 300) -> str:
    """One value as short text: a list of scalars joined, a flat mapping as ``k: v; …``, empty as —."""
    if value is None or value == "" or value == [] or value == {}:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        text = str(int(value))
    elif isinstance(value, (int, float, str)):
        text = str(value)
    elif isinstance(value, list) and all(_scalar(v) for v in value):
        text = ", ".join(cell(v) for v in value)
    elif isinstance(value, dict) and all(_scalar(v) for v in value.values()):
        text = "; ".join(f"{k}: {cell(v)}" for k, v in value.items())
    elif isinstance(value, list) and all(isinstance(v, dict) and all(_scalar(x) for x in v.values()) for v in value):
        text = " ".join("[" + ", ".join(f"{k}: {cell(x)}" for k, x in v.items()) + "]" for v in value)
    else:
        text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def summary(evidence: dict | None, counters: dict | None) -> list[tuple[str, str]]:
    """The few facts the steps table shows: counters first, then short top-level evidence values."""
    out = []
    for key, value in (counters or {}).items():
        if len(out) >= SUMMARY_COUNTERS:
            break
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append((label(key), _number(key, value)))
    facts = 0
    for key, value in (evidence or {}).items():
        if facts >= SUMMARY_FACTS:
            break
        if _scalar(value) and value not in (None, "") and len(str(value)) <= SHORT_TEXT and "\n" not in str(value):
            out.append((label(key), cell(value)))
            facts += 1
    return out


def has_details(evidence: dict | None, counters: dict | None) -> bool:
    """Whether the appendix shows more than the summary does."""
    shown = {k for k, _ in summary(evidence, counters)}
    return any(label(k) not in shown for k in [*(evidence or {}), *(counters or {})])


# -- the appendix ---------------------------------------------------------------------------------

def _cellable(value) -> bool:
    """A value :func:`cell` shows whole: a scalar, a list or mapping of scalars, a list of such mappings."""
    if _scalar(value):
        return True
    if isinstance(value, dict):
        return all(_scalar(v) for v in value.values())
    return isinstance(value, list) and (all(_scalar(v) for v in value) or all(
        isinstance(v, dict) and all(_scalar(x) for x in v.values()) for v in value))


def _row_like(value) -> bool:
    """A record whose fields fit in table cells: scalars, lists of scalars, flat mappings."""
    return isinstance(value, dict) and all(
        _scalar(v) or (isinstance(v, list) and all(_scalar(x) for x in v))
        or (isinstance(v, dict) and all(_scalar(x) for x in v.values())) for v in value.values())


def _columns(records: list[dict]) -> tuple[list[str], list[str]]:
    """Union of the records' keys in first-seen order, split into (shown, empty in every record)."""
    keys: list[str] = []
    for r in records:
        keys += [k for k in r if k not in keys]
    empty = [k for k in keys if all(cell(r.get(k)) == "—" for r in records)]
    return [k for k in keys if k not in empty], empty


def _table(records: list[dict], names: list[str] | None = None) -> dict | None:
    cols, empty = _columns(records)
    if not cols or len(cols) > TABLE_COLUMNS:
        return None
    shown = records[:MAX_ROWS]
    return {"t": "table", "cols": [str(c) for c in cols], "rows": [[cell(r.get(c)) for c in cols] for r in shown],
            "names": [str(n) for n in names[:MAX_ROWS]] if names else None, "more": len(records) - len(shown),
            "empty": [str(c) for c in empty]}


def _pipe_table(text: str) -> dict | None:
    """A Markdown pipe table (checks' reports) as a table node."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if len(lines) < 2 or not all(_PIPE_ROW.match(line) for line in lines) or not set(lines[1]) <= set("|-: "):
        return None

    def cells(line: str) -> list[str]:
        return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]

    header, body = cells(lines[0]), [cells(line) for line in lines[2:]]
    body = [(r + [""] * len(header))[: len(header)] for r in body]
    keep = [i for i in range(len(header)) if any(r[i] for r in body)]
    return {"t": "table", "cols": [header[i] for i in keep], "rows": [[r[i] for i in keep] for r in body],
            "names": None, "more": 0, "empty": [header[i] for i in range(len(header)) if i not in keep]}


def tree(value, depth: int = 0) -> dict:
    """``value`` as a node for the report's appendix (``t``: text, list, record, records, table or map)."""
    if depth >= MAX_DEPTH:
        return {"t": "text", "v": cell(value, 500), "pre": False}
    if isinstance(value, str):
        table = _pipe_table(value) if value.lstrip().startswith("|") else None
        if table:
            return table
        text = value if len(value) <= MAX_TEXT else value[: MAX_TEXT - 1] + "…"
        return {"t": "text", "v": text or "—", "pre": "\n" in text}
    if _scalar(value) or value == [] or value == {}:
        return {"t": "text", "v": cell(value), "pre": False}
    if isinstance(value, list):
        if all(_scalar(v) for v in value):
            return {"t": "list", "entries": [cell(v) for v in value[:MAX_ROWS]], "more": max(0, len(value) - MAX_ROWS)}
        shown, more = value[:MAX_ROWS], max(0, len(value) - MAX_ROWS)
        if all(isinstance(v, dict) for v in value):
            if all(_row_like(v) for v in value):
                table = _table(value)
                if table:
                    return table
            if all(_cellable(x) for v in value for x in v.values()):
                return {"t": "records", "more": more, "entries": [
                    [(str(k), cell(v, RECORD_CHARS)) for k, v in r.items() if cell(v) != "—"] for r in shown]}
        return {"t": "map", "more": more, "entries": [(f"#{i}", tree(v, depth + 1)) for i, v in enumerate(shown, 1)]}
    # records with the same fields (entity → counts) become one table; a small flat record one line
    # of "key value" pairs; the rest nested key/value pairs
    groups: dict[tuple, list] = {}
    for key, v in value.items():
        if isinstance(v, dict) and v and _row_like(v):
            groups.setdefault(tuple(v), []).append(key)
    tables: dict = {}
    for keys in groups.values():
        table = _table([value[k] for k in keys], keys) if len(keys) >= 2 else None
        tables.update(dict.fromkeys(keys, table) if table else {})
    if not tables and _row_like(value) and len(value) <= INLINE_FIELDS:
        entries = [(str(k), cell(v)) for k, v in value.items() if cell(v) != "—"]
        if sum(len(k) + len(v) for k, v in entries) <= INLINE_CHARS:
            return {"t": "record", "entries": entries, "empty": [str(k) for k, v in value.items() if cell(v) == "—"]}
    items: list[tuple[str, dict]] = []
    for key, v in value.items():
        table = tables.get(key)
        if table is None:
            items.append((str(key), tree(v, depth + 1)))
        elif not any(node is table for _, node in items):
            items.append(("", table))  # where the first of its records was
    return {"t": "map", "entries": items, "more": 0}


__all__ = ["summary", "has_details", "tree", "cell", "label"]

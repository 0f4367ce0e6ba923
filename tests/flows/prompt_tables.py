"""The Markdown tables of a prompt, as the Prefect UI's renderer (GitHub-flavoured Markdown) finds them."""

from __future__ import annotations

import re

_DELIMITER = re.compile(r"^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
_PIPE = re.compile(r"(?<!\\)\|")


def _cells(line: str) -> list[str]:
    inner = line.strip()
    inner = inner[1:] if inner.startswith("|") else inner
    inner = inner[:-1] if inner.endswith("|") and not inner.endswith("\\|") else inner
    return _PIPE.split(inner)


def table_widths(markdown: str) -> list[int]:
    """The number of columns of every table in ``markdown`` (a header row followed by ``|---|…``)."""
    lines = markdown.splitlines()
    return [len(_cells(head)) for head, delim in zip(lines, lines[1:])
            if "|" in head and _DELIMITER.match(delim.strip())]

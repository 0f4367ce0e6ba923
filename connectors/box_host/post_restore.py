"""Step 2.4's shapes: a post-restore fix's result, the box DB's ``sql`` callable, the portal's domain.

The fixes themselves are the platform's (``Platform.restore.post_restore``); each returns
:class:`FixResult` rows, journaled as :func:`evidence`. ``sql(statements) -> results`` runs on the
box's DB (the host agent's ``sql`` op).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Callable
from urllib.parse import urlsplit

from connectors.errors import ConfigError

Sql = Callable[[list[str]], list[list[list[str | None]]]]


@dataclass
class FixResult:
    name: str
    status: str  # ok (nothing to do) | fixed | found (a list for people) | skipped
    before: str
    after: str = ""
    items: list[dict] = field(default_factory=list)


def domain_of(value: str) -> str:
    """``https://crm.example.com/`` → ``crm.example.com``; a bare host stays as it is."""
    host = urlsplit(value).netloc if "://" in value else value
    host = host.strip().strip("/")
    if not re.fullmatch(r"[A-Za-z0-9.-]+(:\d+)?", host or ""):
        raise ConfigError("[post_restore]", [f"domain {value!r} is not a host name"])
    return host


def evidence(results: list[FixResult]) -> list[dict]:
    return [asdict(r) for r in results]

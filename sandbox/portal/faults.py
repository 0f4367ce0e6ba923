"""Faults the sandbox portal can inject, switchable from tests and the command line.

Each fault fires on the next ``times`` matching requests (``method`` = a REST method name, or
None for any), then switches itself off:

- ``QUERY_LIMIT_EXCEEDED`` → 503 (as if the leaky bucket overflowed)
- ``OPERATION_TIME_LIMIT`` → 429 with ``operating_reset_at`` ``reset_in`` seconds ahead; injected for
  a method (not for any), it also fails that method's commands inside a ``batch`` one by one, in
  ``result_error`` (HTTP 200), as the portal does when a method runs out of operating time
- ``INTERNAL_SERVER_ERROR`` → 500 (for a method: also that method's commands inside a ``batch``)
- ``DROP_AFTER_WRITE`` → the request is executed, then the connection is closed without an
  answer (the client cannot know whether its write happened)
- ``HTML_200`` → a 200 HTML page instead of JSON (a proxy's error page)

Data faults are made in the store instead, e.g. ``CrmStore.delete_comment`` for "the box shows
fewer task comments than the cloud" (``--box-missing-comments N`` on the command line).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

KINDS = ("QUERY_LIMIT_EXCEEDED", "OPERATION_TIME_LIMIT", "INTERNAL_SERVER_ERROR", "DROP_AFTER_WRITE", "HTML_200")


@dataclass
class _Fault:
    kind: str
    times: int
    method: str | None
    reset_in: float


class Faults:
    """The switchboard; thread-safe. ``fired`` counts what has fired, per kind."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[_Fault] = []
        self.fired: dict[str, int] = {k: 0 for k in KINDS}

    def inject(self, kind: str, *, times: int = 1, method: str | None = None, reset_in: float = 1.0) -> None:
        """Make the next ``times`` requests (of ``method``) fail with ``kind``."""
        if kind not in KINDS:
            raise ValueError(f"unknown fault {kind!r}; known: {', '.join(KINDS)}")
        with self._lock:
            self._pending.append(_Fault(kind, times, method, reset_in))

    def clear(self) -> None:
        with self._lock:
            self._pending.clear()

    def take(self, method: str, *, kinds: tuple[str, ...] | None = None,
             targeted_only: bool = False) -> _Fault | None:
        """The fault to apply to this request, if any (consumes one shot). ``kinds``: only faults of
        these kinds; ``targeted_only``: only faults injected for this very method (a command inside
        a ``batch``: the portal limits operating time per method, commands in a batch included)."""
        with self._lock:
            for f in self._pending:
                if kinds is not None and f.kind not in kinds:
                    continue
                if (f.method is None and not targeted_only) or f.method == method:
                    f.times -= 1
                    if f.times <= 0:
                        self._pending.remove(f)
                    self.fired[f.kind] += 1
                    return f
        return None

    @staticmethod
    def parse(spec: str) -> tuple[str, int, str | None]:
        """Command-line form ``KIND[:TIMES[:METHOD]]`` → (kind, times, method)."""
        kind, _, rest = spec.partition(":")
        times, _, method = rest.partition(":")
        return kind.upper(), int(times or 1), method or None

"""Hard request budgets for anything that syncs on its own (seed 000: a two-way sync with no
budget echoed one update ~500 times overnight and burned a month of the integration's credits).

A :class:`RequestBudget` caps the HTTP requests of one sweep and of one UTC day. Every request a
platform's CRM client sends with the budget attached — retries too — spends one unit; the request
that would pass a cap is not sent: ``BudgetExhausted`` is raised (a ``FatalError``: never
retried), the sweep stops, and the caller alerts.
"""

from __future__ import annotations

import threading

from connectors.errors import BudgetExhausted


class RequestBudget:
    """At most ``per_sweep`` requests now, and ``per_day`` minus ``used_today`` in the day."""

    def __init__(self, *, per_sweep: int, per_day: int, used_today: int = 0) -> None:
        if per_sweep < 1 or per_day < 1:
            raise ValueError("request budgets must be at least 1")
        self.per_sweep, self.per_day, self.used_today = per_sweep, per_day, used_today
        self.used = 0
        self.exhausted: str | None = None  # which cap stopped it, once one did
        self.cancelled: str | None = None  # why the owner stopped the sweep (see cancel)
        self._lock = threading.Lock()

    def cancel(self, reason: str) -> None:
        """Refuse every further request with ``reason`` (e.g. the users stopped: the pre-sync ends at
        once and the freeze moves on from its last finished pass). A request already sent finishes."""
        with self._lock:
            self.cancelled = reason

    @property
    def left(self) -> int:
        return max(0, min(self.per_sweep - self.used, self.per_day - self.used_today - self.used))

    def spend(self, portal: str, method: str) -> None:
        """Take one request for ``method`` on ``portal``; raise ``BudgetExhausted`` at a cap."""
        with self._lock:
            if self.cancelled:
                self.exhausted = "cancelled"
                raise BudgetExhausted(f"{self.cancelled}; {method} on {portal} was not sent",
                                      fix="nothing to do: what was written stays, and the next step goes on from "
                                          "the last finished pass")
            if self.used_today + self.used >= self.per_day:
                self.exhausted = "day"
                raise BudgetExhausted(
                    f"the daily request budget ({self.per_day}) is spent; {method} on {portal} was not sent",
                    fix="sweeps resume tomorrow (UTC); if the traffic is legitimate, raise [sweeps] "
                        "requests_per_day, else look for a loop (the journal's quarantine and sweep events)")
            if self.used >= self.per_sweep:
                self.exhausted = "sweep"
                raise BudgetExhausted(
                    f"this sweep's request budget ({self.per_sweep}) is spent; {method} on {portal} was not sent",
                    fix="the next sweep continues where this one stopped; if sweeps keep hitting the cap, raise "
                        "[sweeps] requests_per_sweep or look for a loop")
            self.used += 1

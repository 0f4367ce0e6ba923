"""How long to wait before the next attempt: defined once for every bounded retry loop.

A server that says when to come back (``Retry-After``, a limit's reset time: the
:class:`~connectors.errors.RateLimitedError`'s ``retry_after``) is obeyed; otherwise the wait
doubles from ``base`` up to ``cap``, optionally with jitter so that parallel workers spread out.
A wait longer than ``max_wait`` is cut to it, or raises the error itself when the caller would
rather tell the human than wait that long.
"""

from __future__ import annotations

import random
from typing import Callable, Literal

from .errors import RateLimitedError

__all__ = ["backoff_wait", "tenacity_wait"]


def backoff_wait(exc: BaseException | None, attempt: int, *, base: float, cap: float, max_wait: float | None = None,
                 too_long: Literal["cap", "raise"] = "cap", jitter: bool = False, margin: float = 0.0,
                 obey_server: bool = True, uniform: Callable[[float, float], float] | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1 for the first).

    Args:
        exc: the error of that attempt.
        base, cap: the backoff is ``base * 2**(attempt-1)``, at most ``cap``.
        max_wait: the longest wait at all (the server's included); None: no such bound.
        too_long: ``"cap"`` cuts a longer wait to ``max_wait``; ``"raise"`` raises ``exc`` instead.
        jitter: multiply the backoff (not the server's wait) by a uniform factor in [0.5, 1].
        margin: seconds added to the server's wait (its clock and ours differ a little).
        obey_server: use a ``RateLimitedError``'s ``retry_after`` when it has one.
        uniform: the jitter's random source (default :func:`random.uniform`).
    """
    if obey_server and isinstance(exc, RateLimitedError) and exc.retry_after is not None:
        wait = exc.retry_after + margin
    else:
        wait = min(cap, base * 2 ** min(attempt - 1, 64))
        if jitter:
            wait *= (uniform or random.uniform)(0.5, 1.0)
    if max_wait is not None and wait > max_wait:
        if too_long == "raise" and exc is not None:
            raise exc
        wait = max_wait
    return wait


def tenacity_wait(**kw) -> Callable:
    """:func:`backoff_wait` as tenacity's ``wait=`` (same keywords)."""
    def wait(state) -> float:
        return backoff_wait(state.outcome.exception() if state.outcome else None, state.attempt_number, **kw)
    return wait

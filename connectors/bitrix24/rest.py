"""Bitrix24 REST client for incoming webhooks: envelope, error mapping, leaky bucket, retries.

``Bitrix24Client(webhook_url)`` calls ``{webhook}{method}.json`` with a JSON body. The webhook's
code is registered as a secret at construction: it never reaches logs, errors or the journal.

Retries (tenacity, bounded) cover transient errors only. Writes are not idempotent on the portal
(no upsert), so :meth:`call` with ``idempotent=False`` retries only the answers that prove the
request was *not* executed (503 ``QUERY_LIMIT_EXCEEDED``, 429 ``OPERATION_TIME_LIMIT``); any other
transient failure of a write is raised as :class:`AmbiguousWriteError` for the caller to check.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

import requests
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from connectors.errors import AuthError, FatalError, RateLimitedError, TransientError
from connectors.http_errors import classify
from connectors.retry import backoff_wait
from connectors.secrets import redact, register_secret

from .errors import BITRIX24_CODES

log = logging.getLogger("cloud2box.bitrix24")


class AmbiguousWriteError(TransientError):
    """A write failed in a way that does not tell whether the portal executed it."""


class LeakyBucket:
    """Client-side leaky bucket matching the portal's: ``rate`` requests/s drain, ``burst`` size.

    :meth:`acquire` blocks until one more request fits, so the portal never sees an overflow
    from us (its own bucket may still be fuller, e.g. with other integrations: we then obey 503).
    """

    def __init__(self, rate: float = 2.0, burst: int = 50, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate, self.burst = rate, burst
        self._clock, self._sleep = clock, sleep
        self._level = 0.0
        self._at = clock()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Wait for room for one request; returns the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                self._level = max(0.0, self._level - (now - self._at) * self.rate)
                self._at = now
                # A small margin under the portal's burst: both buckets drain on different clocks.
                if self._level + 1 <= self.burst - 0.5 or (self.burst <= 1 and self._level == 0):
                    self._level += 1
                    return waited
                delay = (self._level + 1 - (self.burst - 0.5)) / self.rate
            self._sleep(delay)
            waited += delay

    def penalise(self) -> None:
        """The portal said its bucket is full: treat ours as full too."""
        with self._lock:
            self._level = float(self.burst)
            self._at = self._clock()


class Bitrix24Client:
    """One portal's REST API through an incoming webhook.

    Args:
        webhook_url: ``https://PORTAL/rest/{USER_ID}/{CODE}/`` (the code is a secret).
        session: a ``requests.Session`` (tests and the sandbox plug theirs in).
        rate, burst: the portal plan's leaky bucket (2/s, 50 standard; 5/s, 250 Enterprise).
        timeout: seconds per HTTP request (connect, read).
        max_attempts: bound of the retry loop per call.
        max_wait_s: longest single wait for a limit to reset; longer → the error is raised.
        name: what messages call this portal ("the cloud portal").
        budget: a :class:`~connectors.budget.RequestBudget` every HTTP request (retries
            included) spends from; when it is spent the call raises ``BudgetExhausted``.
    """

    def __init__(self, webhook_url: str, *, session: requests.Session | None = None, rate: float = 2.0,
                 burst: int = 50, timeout: float = 60.0, max_attempts: int = 8, max_wait_s: float = 900.0,
                 name: str = "the portal", sleep: Callable[[float], None] = time.sleep, budget=None) -> None:
        if "/rest/" not in webhook_url:
            raise FatalError(f"{name}: the webhook URL {redact(webhook_url)} is not in the form "
                             "https://PORTAL/rest/USER_ID/CODE/",
                             fix="copy the incoming webhook's URL from the portal (Developer resources)")
        base = webhook_url if webhook_url.endswith("/") else webhook_url + "/"
        parts = base.rstrip("/").split("/")
        register_secret(parts[-1])  # the CODE
        self._base = base
        self.session = session or requests.Session()
        self.bucket = LeakyBucket(rate, burst)
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.max_wait_s = max_wait_s
        self.name = name
        self._sleep = sleep
        self.budget = budget
        self.requests = 0
        self.waited_s = 0.0

    @property
    def display_url(self) -> str:
        """The webhook URL with its code masked."""
        return redact(self._base)

    # --- one HTTP request ---------------------------------------------------------------------
    def _once(self, method: str, params: dict, *, idempotent: bool) -> dict:
        if self.budget is not None:
            self.budget.spend(self.name, method)
        self.waited_s += self.bucket.acquire()
        self.requests += 1
        url = f"{self._base}{method}.json"
        try:
            resp = self.session.post(url, json=params, timeout=self.timeout)
        except requests.Timeout:
            cls = TransientError if idempotent else AmbiguousWriteError
            raise cls(f"{self.name}: {method} timed out after {self.timeout:.0f} s") from None
        except requests.ConnectionError as e:
            cls = TransientError if idempotent else AmbiguousWriteError
            raise cls(f"{self.name}: {method}: connection failed ({type(e).__name__})",
                      fix="check that the portal is reachable") from None
        except requests.RequestException as e:
            # library errors carry the URL, i.e. the code: keep only their type
            raise FatalError(f"{self.name}: {method}: {type(e).__name__}") from None
        body: Any = None
        try:
            body = resp.json()
        except ValueError:
            pass
        if not isinstance(body, dict):
            err = classify(resp.status_code, retry_after=resp.headers.get("Retry-After"), what=self.name,
                           description="answer is not JSON", codes=BITRIX24_CODES)
            if err is None:  # 200 with an HTML page: a proxy or an error page, never a Bitrix24 answer
                err = TransientError(f"{self.name}: {method} answered HTTP {resp.status_code} without JSON "
                                     f"({resp.headers.get('Content-Type', '?')})")
            raise self._ambiguous(err, idempotent)
        code = body.get("error")
        if code or resp.status_code >= 300:
            reset = (body.get("time") or {}).get("operating_reset_at") if isinstance(body.get("time"), dict) else None
            err = classify(resp.status_code, retry_after=resp.headers.get("Retry-After"), error_code=code,
                           description=redact(body.get("error_description", "")), what=f"{self.name} ({method})",
                           reset_at=reset, codes=BITRIX24_CODES)
            if err is None:
                err = FatalError(f"{self.name}: {method} failed: {code}")
            if isinstance(err, AuthError):
                err = AuthError(f"{self.name} refused the webhook ({code}) for {method} at {self.display_url}",
                                fix="the webhook code is wrong, revoked or lacks the crm/user scope: create a new "
                                    "incoming webhook and update the secret it is read from")
            if isinstance(err, RateLimitedError):
                if code == "QUERY_LIMIT_EXCEEDED":
                    self.bucket.penalise()
                    if err.retry_after is None:
                        err.retry_after = 1.0 / self.bucket.rate
                raise err  # the portal refused before executing: safe to retry writes too
            raise self._ambiguous(err, idempotent)
        return body

    @staticmethod
    def _ambiguous(err: Exception, idempotent: bool) -> Exception:
        if not idempotent and isinstance(err, TransientError) and not isinstance(err, RateLimitedError):
            return AmbiguousWriteError(str(err))
        return err

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        # a limit that resets later than we may wait raises: tell the human
        wait = backoff_wait(exc, state.attempt_number, base=0.5, cap=30.0, margin=0.05, max_wait=self.max_wait_s,
                            too_long="raise")
        log.warning("%s: %s; retrying in %.1f s (attempt %d of %d)", self.name, redact(exc), wait,
                    state.attempt_number, self.max_attempts)
        self.waited_s += wait
        return wait

    # --- public calls -------------------------------------------------------------------------
    def call(self, method: str, params: dict | None = None, *, idempotent: bool = True) -> dict:
        """Call ``method``; returns the whole envelope (``result``, ``next``, ``total``, ``time``).

        Raises:
            AuthError: the webhook was refused (no retry).
            RateLimitedError / TransientError: still failing after ``max_attempts``.
            AmbiguousWriteError: a non-idempotent call failed without telling whether it ran.
            FatalError: any other refusal.
        """
        retry_on = TransientError if idempotent else RateLimitedError
        for attempt in Retrying(stop=stop_after_attempt(self.max_attempts), wait=self._wait,
                                retry=retry_if_exception_type(retry_on), reraise=True, sleep=self._sleep):
            with attempt:
                return self._once(method, params or {}, idempotent=idempotent)
        raise AssertionError("unreachable")

    def batch(self, cmd: dict[str, str], *, halt: bool = False, idempotent: bool = True) -> dict:
        """Run up to 50 commands (``"method?query"``) in one request; returns ``result`` of the
        envelope: ``{"result", "result_error", "result_total", "result_next", …}``."""
        if len(cmd) > 50:
            raise ValueError("a batch holds at most 50 commands")
        body = self.call("batch", {"halt": 1 if halt else 0, "cmd": cmd}, idempotent=idempotent)
        res = body.get("result") or {}
        for key in ("result", "result_error", "result_total", "result_next"):
            if isinstance(res.get(key), list):  # PHP sends an empty object as []
                res[key] = {}
            res.setdefault(key, {})
        return res


"""Bitrix24 REST client for incoming webhooks: envelope, error mapping, leaky bucket, retries.

``Bitrix24Client(webhook_url)`` calls ``{webhook}{method}.json`` with a JSON body. The webhook's
code is registered as a secret at construction: it never reaches logs, errors or the journal.

Retries (tenacity, bounded) cover transient errors only. Writes are not idempotent on the portal
(no upsert), so :meth:`call` with ``idempotent=False`` retries only the answers that prove the
request was *not* executed (503 ``QUERY_LIMIT_EXCEEDED``, 429 ``OPERATION_TIME_LIMIT``, a connection
that was never made); any other transient failure of a write is raised as :class:`AmbiguousWriteError`
for the caller to resolve on the portal (the portal may still be executing it).

A ``batch`` answers HTTP 200 even when its commands failed; each failed command's ``result_error``
goes through the same classifier (:meth:`Bitrix24Client.command_error`). A batch none of whose usable
commands ran because of a limit (``OPERATION_TIME_LIMIT``/``QUERY_LIMIT_EXCEEDED`` on one command)
is retried by the same bounded loop as a refused request, after the same wait: one retry loop.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

import requests
from tenacity import RetryCallState, Retrying, retry_if_exception_type

from connectors.errors import AuthError, FatalError, RateLimitedError, TransientError
from connectors.http_errors import classify
from connectors.retry import backoff_wait
from connectors.secrets import redact, register_secret

from .errors import BITRIX24_CODES

log = logging.getLogger("cloud2box.bitrix24")

# OPERATION_TIME_LIMIT and QUERY_LIMIT_EXCEEDED are waited out until the operating reset comes, for up to
# max_wait_s (see Bitrix24Client._stop); this only bounds the loop.
LIMIT_ATTEMPTS = 200


class AmbiguousWriteError(TransientError):
    """A write failed in a way that does not tell whether the portal executed it.

    ``timed_out``: no answer within the client's timeout (the portal may still be executing it);
    otherwise the connection broke or the answer was unusable."""

    def __init__(self, message: str, *, fix: str | None = None, timed_out: bool = False) -> None:
        self.timed_out = timed_out
        super().__init__(message, fix=fix)


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


def _pooled_session() -> requests.Session:
    """A session keeping a connection per parallel listing chain (requests keeps 10 per host by default:
    the 16 chains of :mod:`.lists` would open and drop connections, each a new TCP handshake)."""
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=32)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


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
        self.session = session or _pooled_session()
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
        except requests.ConnectTimeout:  # the request never left: safe to send again, writes too
            raise TransientError(f"{self.name}: {method}: no connection within {self.timeout:.0f} s",
                                 fix="check that the portal is reachable") from None
        except requests.Timeout:
            if idempotent:
                raise TransientError(f"{self.name}: {method} timed out after {self.timeout:.0f} s") from None
            raise AmbiguousWriteError(f"{self.name}: {method} timed out after {self.timeout:.0f} s",
                                      timed_out=True) from None
        except requests.ConnectionError as e:
            cls = TransientError if idempotent or _never_connected(e) else AmbiguousWriteError
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

    def _stop(self, state: RetryCallState) -> bool:
        """Other errors: ``max_attempts`` attempts. A limit (the portal refused before executing)
        is waited out for up to ``max_wait_s`` in all — the operating-time limit may last until its
        window moves on (limits.md) — and at most ``LIMIT_ATTEMPTS`` attempts: bounded either way."""
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RateLimitedError):
            return state.attempt_number >= LIMIT_ATTEMPTS or state.seconds_since_start >= self.max_wait_s
        return state.attempt_number >= self.max_attempts

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        # a limit that resets later than we may wait raises: tell the human
        wait = backoff_wait(exc, state.attempt_number, base=0.5, cap=30.0, margin=0.05, max_wait=self.max_wait_s,
                            too_long="raise")
        if isinstance(exc, RateLimitedError):  # waited out by time (see _stop), not by the attempt count
            log.warning("%s: %s; retrying in %.1f s (limit waited %.0f of at most %.0f s)", self.name, redact(exc),
                        wait, state.seconds_since_start, self.max_wait_s)
        else:
            log.warning("%s: %s; retrying in %.1f s (attempt %d of %d)", self.name, redact(exc), wait,
                        state.attempt_number, self.max_attempts)
        self.waited_s += wait
        return wait

    # --- batch commands -----------------------------------------------------------------------
    def command_error(self, cmd: dict[str, str], res: dict, key: str) -> Exception:
        """What the failed command ``key`` of a batch stands for, decided by the one classifier
        (:func:`connectors.http_errors.classify` with Bitrix24's codes), like a whole answer.

        A command refused by a limit rarely says when the limit resets: the reset time is taken
        from the commands of the same method that ran in the batch (``result_time``), if any.
        """
        err = (res.get("result_error") or {}).get(key)
        method = str(cmd.get(key, "")).partition("?")[0].strip().lower().removesuffix(".json")
        what = f"{self.name} ({method} in a batch)"
        if not isinstance(err, dict):  # not run: a halted batch, or a command the portal skipped
            return TransientError(f"{what}: the command did not run")
        code = str(err.get("error") or "")
        description = redact(str(err.get("error_description") or ""))
        resets = [t.get("operating_reset_at") for k, t in (res.get("result_time") or {}).items()
                  if isinstance(t, dict) and str(cmd.get(k, "")).partition("?")[0].strip().lower() == method]
        resets = [float(r) for r in resets if isinstance(r, (int, float)) and r > time.time()]
        found = classify(200, error_code=code or None, description=description, what=what,
                         reset_at=max(resets) if resets else None, codes=BITRIX24_CODES)
        if found is None or (not code and not description):
            found = FatalError(f"{what} failed: {code or 'error'}: {description or 'no description'}".strip(),
                               fix="see the portal's description")
        return found

    def _check_batch(self, cmd: dict[str, str], body: dict, *, idempotent: bool) -> None:
        """Raise inside the retry loop when a batch must be sent again as it is.

        Reads: when the first command failed with a limit or a transient error (later commands
        usually depend on it: ``$result[...]`` chains). Writes: only when no command ran and every
        refusal is a limit's (nothing was executed, so sending it again cannot duplicate)."""
        res = body.get("result") if isinstance(body.get("result"), dict) else {}
        results = res.get("result") if isinstance(res.get("result"), dict) else {}
        if not cmd or len(results) == len(cmd):
            return
        if idempotent:
            first = next(iter(cmd))
            if first not in results:
                err = self.command_error(cmd, res, first)
                if isinstance(err, TransientError):
                    raise err
            return
        if results:
            return
        errs = [self.command_error(cmd, res, k) for k in cmd if k in (res.get("result_error") or {})]
        if errs and all(isinstance(e, RateLimitedError) for e in errs):
            raise max(errs, key=lambda e: e.retry_after or 0.0)

    # --- public calls -------------------------------------------------------------------------
    def call(self, method: str, params: dict | None = None, *, idempotent: bool = True) -> dict:
        """Call ``method``; returns the whole envelope (``result``, ``next``, ``total``, ``time``).

        Raises:
            AuthError: the webhook was refused (no retry).
            RateLimitedError / TransientError: still failing after ``max_attempts``.
            AmbiguousWriteError: a non-idempotent call failed without telling whether it ran.
            FatalError: any other refusal.
        """
        return self._call(method, params or {}, idempotent=idempotent)

    def _call(self, method: str, params: dict, *, idempotent: bool,
              check: Callable[[dict], None] | None = None) -> dict:
        """The one bounded retry loop: every request, its waits and what is retried."""
        retry_on = TransientError if idempotent else RateLimitedError
        for attempt in Retrying(stop=self._stop, wait=self._wait,
                                retry=retry_if_exception_type(retry_on), reraise=True, sleep=self._sleep):
            with attempt:
                body = self._once(method, params, idempotent=idempotent)
                if check is not None:
                    check(body)
                return body
        raise AssertionError("unreachable")

    def batch(self, cmd: dict[str, str], *, halt: bool = False, idempotent: bool = True) -> dict:
        """Run up to 50 commands (``"method?query"``) in one request; returns ``result`` of the
        envelope: ``{"result", "result_error", "result_total", "result_next", …}``."""
        if len(cmd) > 50:
            raise ValueError("a batch holds at most 50 commands")

        def check(body: dict) -> None:
            _normalise_batch(body)
            self._check_batch(cmd, body, idempotent=idempotent)

        body = self._call("batch", {"halt": 1 if halt else 0, "cmd": cmd}, idempotent=idempotent, check=check)
        return body["result"]

    def batch_each(self, cmd: dict[str, str], *, max_rounds: int | None = None) -> dict[str, dict]:
        """Run independent read commands (no ``$result`` references between them) until each has
        its result; returns ``{key: {"result": …, "total": … or None}}``. A command refused by a
        limit or a transient error is
        sent again in the next request (the portal's reset is waited out by :meth:`batch`'s loop when
        nothing ran); a command that failed for good raises. Bounded: every request completes at
        least one command, or the retry loop raises."""
        pending = dict(cmd)
        out: dict[str, dict] = {}
        for _ in range(max_rounds or len(cmd) + 1):
            if not pending:
                return out
            res = self.batch(pending)
            failed: dict[str, str] = {}
            for key, command in pending.items():
                if key in res["result"]:
                    out[key] = {"result": res["result"][key], "total": res["result_total"].get(key)}
                    continue
                err = self.command_error(pending, res, key)
                if not isinstance(err, TransientError):
                    raise err
                failed[key] = command
            if len(failed) == len(pending):  # nothing ran and it was not retried: give up, bounded
                raise self.command_error(pending, res, next(iter(failed)))
            pending = failed
        if pending:
            raise TransientError(f"{self.name}: {len(pending)} batch command(s) kept failing",
                                 fix="check the portal's limits and health")
        return out


def _normalise_batch(body: dict) -> None:
    """``body["result"]`` with every part a dict (PHP sends an empty object as ``[]``)."""
    res = body.get("result")
    if not isinstance(res, dict):
        res = body["result"] = {}
    for key in ("result", "result_error", "result_total", "result_next", "result_time"):
        if not isinstance(res.get(key), dict):
            res[key] = {}


def _never_connected(exc: requests.ConnectionError) -> bool:
    """The connection was refused or never made, so the request was not sent (writes may be
    sent again); a connection that broke after sending is not this."""
    import urllib3.exceptions

    seen, reason = 0, exc.args[0] if exc.args else None
    while reason is not None and seen < 5:  # requests wraps urllib3's MaxRetryError(reason=…)
        if isinstance(reason, urllib3.exceptions.NewConnectionError):
            return True
        reason = getattr(reason, "reason", None)
        seen += 1
    return False

"""One place decides what an HTTP answer means: success, retry, slow down, or stop.

:func:`classify` looks at the status, ``Retry-After`` and an application error code (when the
body has one and the caller passes its platform's :class:`~connectors.platform.ErrorCodes` hook)
and returns the exception from :mod:`connectors.errors` to raise, or None when the answer is
usable. Connectors call it once per response; retry loops look only at the type.
"""

from __future__ import annotations

import email.utils
import time
from typing import TYPE_CHECKING

from .errors import AuthError, FatalError, MigrationError, RateLimitedError, TransientError

if TYPE_CHECKING:
    from .platform import ErrorCodes

RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


def classify(status: int, *, retry_after: str | None = None, error_code: str | None = None,
             description: str = "", what: str = "the server", reset_at: float | None = None,
             codes: "ErrorCodes | None" = None) -> MigrationError | None:
    """The error an answer stands for, or None when it is a success.

    Args:
        status: HTTP status.
        retry_after: the ``Retry-After`` header, if any.
        error_code: an application error code from the body, if any.
        description: the server's own words (already free of secrets).
        what: names the remote in messages ("the cloud portal").
        reset_at: epoch seconds when a limit resets (from the body), used when there is no ``Retry-After``.
        codes: the platform's hook that says what its error codes mean; None: the code only
            makes a 2xx answer an error (generic HTTP).
    """
    if 200 <= status < 300 and not error_code:
        return None
    detail = f"{error_code}: {description}".strip(": ") if error_code else f"HTTP {status} {description}".strip()
    wait = retry_after_seconds(retry_after)
    kind = codes.kind_of(error_code) if codes is not None and error_code else None
    if kind == "rate" or status == 429:
        if wait is None and reset_at is not None:
            wait = max(0.0, reset_at - time.time())
        return RateLimitedError(f"{what} asks to slow down ({detail})", retry_after=wait,
                                fix="wait; lower the request rate in the config if it keeps happening")
    if status in (401, 403) or kind == "auth":
        return AuthError(f"{what} refused the credentials ({detail})",
                         fix="check the webhook/credentials in [secrets] and the permissions (scopes) it has")
    if status == 503 and wait is not None:
        return RateLimitedError(f"{what} is unavailable ({detail})", retry_after=wait)
    if status in RETRYABLE_STATUS or status >= 500 or kind == "transient":
        return TransientError(f"{what} failed temporarily ({detail})")
    if status == 404 and (error_code is None or kind == "not-found"):
        return FatalError(f"{what} does not know this address or method ({detail})",
                          fix="check the URL and that the portal's edition offers this REST method")
    return FatalError(f"{what} rejected the request ({detail})", fix="see the server's description above")

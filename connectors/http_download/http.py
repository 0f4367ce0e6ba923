"""HTTP at the connector boundary: map requests' errors and classify responses, in one place.

::

    TransientError              retried (bounded) by the downloader
     ├── RateLimitedError       503/429 with Retry-After
     ├── RangeIgnoredError      200 with the whole file for a Range request
     ├── HtmlErrorPage          an HTML page where data was expected (often with status 200)
     └── ShortReadError         the body ended before the promised length
    PartChangedError (Fatal)    the part's size or ETag changed under us: restart it, never splice
"""

from __future__ import annotations

import contextlib
import email.utils
import time
from typing import Iterator

import requests

from connectors.errors import AuthError, FatalError, RateLimitedError, TransientError
from connectors.secrets import redact


class RangeIgnoredError(TransientError):
    """The server answered a Range request with 200 and the whole file."""


class HtmlErrorPage(TransientError):
    """The server sent an HTML page instead of the part's bytes."""


class ShortReadError(TransientError):
    """The body ended before the length the server promised."""


class PartChangedError(FatalError):
    """The part on the server is not the one we started: other size or ETag."""


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date); None when absent/garbled."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@contextlib.contextmanager
def map_requests_errors(what: str) -> Iterator[None]:
    """Convert requests/urllib3/socket errors raised inside into the cloud2box tree, once."""
    try:
        yield
    except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
            ConnectionError, TimeoutError) as exc:
        raise TransientError(f"{what}: connection problem ({type(exc).__name__})",
                             fix="check the network; the download resumes where it stopped") from None
    except requests.RequestException as exc:
        raise FatalError(f"{what}: HTTP request failed: {redact(exc)}") from None


def looks_like_html(content_type: str | None, first_bytes: bytes = b"") -> bool:
    if content_type and "html" in content_type.lower():
        return True
    head = first_bytes.lstrip()[:15].lower()
    return head.startswith((b"<!doctype", b"<html"))


def classify_response(resp: requests.Response, *, what: str) -> None:
    """Raise the right error for a non-2xx response (the body is closed); return on 2xx.

    The one place that decides what is retryable for the downloader and its sources.
    """
    status = resp.status_code
    if 200 <= status < 300:
        return
    resp.close()
    if status in (429, 503):
        after = retry_after_seconds(resp.headers.get("Retry-After"))
        raise RateLimitedError(f"{what}: the server is busy (HTTP {status})", retry_after=after,
                               fix="nothing: cloud2box waits as the server asks")
    if status in (500, 502, 504, 408):
        raise TransientError(f"{what}: server error HTTP {status}", fix="retried automatically; re-run if it persists")
    if status in (401, 403):
        raise AuthError(f"{what}: access denied (HTTP {status})",
                        fix="check the licence key and backup password secrets, or ask the vendor for a new link")
    if status == 404:
        raise FatalError(f"{what}: not found on the server (HTTP 404)",
                         fix="check the part list / URLs; ask the vendor's support whether the backup still exists")
    if status == 416:
        raise PartChangedError(f"{what}: range not satisfiable (HTTP 416): the part is shorter than before",
                               fix="the part is restarted from zero")
    raise FatalError(f"{what}: unexpected HTTP {status}", fix="check the URL and the server")

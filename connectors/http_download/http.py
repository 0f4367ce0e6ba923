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
from typing import Iterator

import requests

from connectors.errors import AuthError, FatalError, TransientError
from connectors.http_errors import classify
from connectors.secrets import redact


class RangeIgnoredError(TransientError):
    """The server answered a Range request with 200 and the whole file."""


class HtmlErrorPage(TransientError):
    """The server sent an HTML page instead of the part's bytes."""


class ShortReadError(TransientError):
    """The body ended before the length the server promised."""


class PartChangedError(FatalError):
    """The part on the server is not the one we started: other size or ETag."""


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

    The project's one classifier (:func:`connectors.http_errors.classify`) decides what is
    retryable; only what is particular to downloading parts is added here.
    """
    status = resp.status_code
    if 200 <= status < 300:
        return
    resp.close()
    if status == 416:
        raise PartChangedError(f"{what}: range not satisfiable (HTTP 416): the part is shorter than before",
                               fix="the part is restarted from zero")
    error = classify(status, retry_after=resp.headers.get("Retry-After"), what=what)
    if isinstance(error, AuthError):
        raise AuthError(error.message, fix="check the licence key and backup password secrets, or ask the vendor "
                                           "for a new link")
    if status == 404:
        raise FatalError(f"{what}: not found on the server (HTTP 404)",
                         fix="check the part list / URLs; ask the vendor's support whether the backup still exists")
    raise error

"""The one HTTP classifier: generic HTTP alone, and a platform's error codes through its hook."""

from __future__ import annotations

import pytest

from connectors.http_errors import classify


class FakeCodes:
    """A platform hook in the shape of :class:`connectors.platform.ErrorCodes`."""

    KINDS = {"SLOW_DOWN": "rate", "BAD_KEY": "auth", "TRY_LATER": "transient", "NO_METHOD": "not-found"}

    def kind_of(self, code: str):
        return self.KINDS.get(code)


@pytest.mark.parametrize("status,code,retry_after,kind", [
    (503, "SLOW_DOWN", None, "RateLimitedError"),
    (200, "SLOW_DOWN", None, "RateLimitedError"),
    (429, None, "7", "RateLimitedError"),
    (503, None, "7", "RateLimitedError"),
    (401, None, None, "AuthError"),
    (400, "BAD_KEY", None, "AuthError"),
    (200, "TRY_LATER", None, "TransientError"),
    (502, None, None, "TransientError"),
    (408, None, None, "TransientError"),
    (404, "NO_METHOD", None, "FatalError"),
    (404, None, None, "FatalError"),
    (400, "UNKNOWN_CODE", None, "FatalError"),
    (200, None, None, None),
])
def test_one_classifier_decides(status, code, retry_after, kind):
    err = classify(status, error_code=code, retry_after=retry_after, codes=FakeCodes())
    assert (type(err).__name__ if err else None) == kind
    if retry_after:
        assert err.retry_after == 7.0


@pytest.mark.parametrize("status,code,kind", [
    (200, "SLOW_DOWN", "FatalError"),  # without the hook a code means nothing more than "an error"
    (400, "BAD_KEY", "FatalError"),
    (500, "SLOW_DOWN", "TransientError"),
    (403, None, "AuthError"),
])
def test_without_a_hook_only_http_counts(status, code, kind):
    err = classify(status, error_code=code)
    assert type(err).__name__ == kind


def test_a_limit_reset_time_becomes_the_wait():
    import time

    err = classify(200, error_code="SLOW_DOWN", codes=FakeCodes(), reset_at=time.time() + 30)
    assert 25 < err.retry_after <= 30
    assert err.fix and "rate" in err.fix

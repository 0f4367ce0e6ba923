"""The one backoff rule, with the parameters each retry loop uses today."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tenacity import RetryCallState, wait_exponential

from connectors.errors import RateLimitedError, TransientError
from connectors.retry import backoff_wait, tenacity_wait


def test_backoff_doubles_up_to_the_cap():
    assert [backoff_wait(TransientError("x"), n, base=0.5, cap=30.0) for n in range(1, 9)] == \
        [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_the_server_wait_is_obeyed_with_the_margin():
    assert backoff_wait(RateLimitedError("slow", retry_after=7.0), 3, base=0.5, cap=30.0, margin=0.05) == 7.05
    assert backoff_wait(RateLimitedError("slow"), 3, base=0.5, cap=30.0) == 2.0  # no retry_after: backoff


def test_a_wait_over_max_wait_raises_or_is_cut():
    exc = RateLimitedError("the limit resets in an hour", retry_after=3600.0)
    with pytest.raises(RateLimitedError):
        backoff_wait(exc, 1, base=0.5, cap=30.0, max_wait=900.0, too_long="raise")
    assert backoff_wait(exc, 1, base=0.5, cap=30.0, max_wait=900.0) == 900.0


def test_jitter_spreads_the_backoff_only():
    waits = {backoff_wait(TransientError("x"), 3, base=1.0, cap=60.0, jitter=True) for _ in range(50)}
    assert all(2.0 <= w <= 4.0 for w in waits) and len(waits) > 1
    assert backoff_wait(RateLimitedError("x", retry_after=5.0), 3, base=1.0, cap=60.0, jitter=True) == 5.0


def _state(attempt: int, exc: BaseException) -> RetryCallState:
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    state.set_exception((type(exc), exc, None))
    return state


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=1, max_value=40))
def test_same_as_the_tenacity_rule_it_replaces(attempt):
    state = _state(attempt, TransientError("x"))
    assert tenacity_wait(base=0.5, cap=10.0, obey_server=False)(state) == wait_exponential(0.5, max=10)(state)

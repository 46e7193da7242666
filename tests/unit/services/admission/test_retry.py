"""decide_retry: a 429 waits as asked (with jitter, inside the deadline) without using up an attempt."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from app.llm import FatalProviderError, TransientProviderError
from app.llm.base import RATE_LIMITED, UPSTREAM_ERROR
from app.services.admission.llm_calls import with_max_tokens
from app.services.admission.retry import JITTER, RetrySettings, decide_retry

SETTINGS = RetrySettings(max_attempts=4, base_s=0.5, cap_s=8.0)


def rate_limited(retry_after: float | None) -> TransientProviderError:
    return TransientProviderError(RATE_LIMITED, "HTTP 429: slow down", status=429, retry_after=retry_after)


def test_a_429_with_retry_after_waits_that_long_and_counts_no_attempt() -> None:
    plan = decide_retry(rate_limited(1.0), attempt=4, rate_limited_waits=10, remaining_s=60, settings=SETTINGS,
                        rng=random.Random(1))
    assert plan.retry and plan.rate_limited and not plan.counts_attempt
    assert 1.0 <= plan.delay_s <= 1.0 * (1 + JITTER)


def test_a_retry_after_longer_than_the_backoff_cap_is_still_honoured() -> None:
    plan = decide_retry(rate_limited(30.0), attempt=1, rate_limited_waits=0, remaining_s=60, settings=SETTINGS)
    assert plan.retry and plan.delay_s >= 30.0


def test_a_retry_after_past_the_deadline_gives_up_at_once() -> None:
    plan = decide_retry(rate_limited(30.0), attempt=1, rate_limited_waits=0, remaining_s=10, settings=SETTINGS)
    assert not plan.retry and "deadline" in plan.reason


def test_a_429_without_retry_after_backs_off_by_its_own_count() -> None:
    first = decide_retry(rate_limited(None), attempt=1, rate_limited_waits=0, remaining_s=60, settings=SETTINGS,
                         rng=random.Random(2))
    fourth = decide_retry(rate_limited(None), attempt=1, rate_limited_waits=3, remaining_s=60, settings=SETTINGS,
                          rng=random.Random(2))
    assert not first.counts_attempt and 0.5 <= first.delay_s <= 0.55
    assert 4.0 <= fourth.delay_s <= 4.4


def test_other_transient_errors_count_attempts_up_to_the_limit() -> None:
    error = TransientProviderError(UPSTREAM_ERROR, "HTTP 503", status=503)
    plan = decide_retry(error, attempt=1, rate_limited_waits=0, remaining_s=60, settings=SETTINGS)
    assert plan.retry and plan.counts_attempt and plan.delay_s == 0.5
    last = decide_retry(error, attempt=4, rate_limited_waits=0, remaining_s=60, settings=SETTINGS)
    assert not last.retry and last.reason == "after 4 attempts"


def test_fatal_errors_are_not_retried() -> None:
    plan = decide_retry(FatalProviderError("auth_failed", "HTTP 401"), attempt=1, rate_limited_waits=0,  # type: ignore[arg-type]
                        remaining_s=60, settings=SETTINGS)
    assert not plan.retry


@given(retry_after=st.floats(min_value=0, max_value=600), remaining=st.floats(min_value=0, max_value=600),
       attempt=st.integers(min_value=1, max_value=100), waits=st.integers(min_value=0, max_value=100))
def test_a_429_never_uses_an_attempt_and_never_waits_past_the_deadline(
    retry_after: float, remaining: float, attempt: int, waits: int
) -> None:
    plan = decide_retry(rate_limited(retry_after), attempt=attempt, rate_limited_waits=waits, remaining_s=remaining,
                        settings=SETTINGS)
    assert not plan.counts_attempt
    assert not plan.retry or plan.delay_s < remaining
    assert plan.delay_s >= retry_after


def test_max_tokens_goes_into_the_provider_options_and_the_smaller_cap_wins() -> None:
    assert with_max_tokens("openai", {"temperature": 0}, 50) == {"temperature": 0, "max_tokens": 50}
    assert with_max_tokens("anthropic", {"max_tokens": 20}, 50) == {"max_tokens": 20}
    assert with_max_tokens("scripted", {}, None) == {}

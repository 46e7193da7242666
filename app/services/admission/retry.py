"""When and whether the LLM step retries a provider error: a 429 waits as asked without using up an attempt."""

from __future__ import annotations

import random
from dataclasses import dataclass

from app.llm import ProviderError, TransientProviderError
from app.llm.base import RATE_LIMITED
from app.services.backoff import retry_delay

JITTER = 0.1  # up to 10% more, so executions told the same Retry-After do not come back in lockstep
MIN_WAIT_S = 0.05  # a "Retry-After: 0" still yields the CPU instead of hammering the provider


@dataclass(frozen=True)
class RetrySettings:
    max_attempts: int
    base_s: float
    cap_s: float


@dataclass(frozen=True)
class RetryPlan:
    """retry False: give up with `reason`; else wait delay_s, and count an attempt only if counts_attempt."""

    retry: bool
    delay_s: float = 0.0
    counts_attempt: bool = True
    rate_limited: bool = False
    reason: str = ""


def is_rate_limited(error: ProviderError) -> bool:
    return error.status == 429 or error.code == RATE_LIMITED


def decide_retry(
    error: ProviderError,
    *,
    attempt: int,
    rate_limited_waits: int,
    remaining_s: float,
    settings: RetrySettings,
    rng: random.Random | None = None,
) -> RetryPlan:
    """A fatal error fails; a 429 waits its Retry-After (or backoff) plus jitter if that ends inside the deadline,
    without counting an attempt; any other transient error counts one, up to settings.max_attempts."""
    if not isinstance(error, TransientProviderError):
        return RetryPlan(retry=False, reason="fatal")
    jitter = 1.0 + JITTER * (rng or random).random()
    if is_rate_limited(error):
        if error.retry_after is not None:
            delay = max(error.retry_after, MIN_WAIT_S) * jitter
        else:
            delay = retry_delay(rate_limited_waits + 1, base_s=settings.base_s, cap_s=settings.cap_s) * jitter
        if delay >= remaining_s:
            return RetryPlan(retry=False, delay_s=delay, counts_attempt=False, rate_limited=True,
                             reason=f"the provider asked to wait {delay:.1f}s, past the execution's deadline")
        return RetryPlan(retry=True, delay_s=delay, counts_attempt=False, rate_limited=True)
    if attempt >= settings.max_attempts:
        return RetryPlan(retry=False, reason=f"after {attempt} attempts")
    delay = retry_delay(attempt, base_s=settings.base_s, cap_s=settings.cap_s, retry_after_s=error.retry_after)
    return RetryPlan(retry=True, delay_s=min(delay, max(0.0, remaining_s)))

"""Retry timing for transient provider errors: capped exponential backoff, honouring Retry-After."""

from __future__ import annotations


def retry_delay(attempt: int, *, base_s: float, cap_s: float, retry_after_s: float | None = None) -> float:
    """Seconds to wait before attempt `attempt + 1`: base * 2^(attempt-1), at most cap; Retry-After wins if longer.

    Deterministic (no jitter): retries of one execution are sequential, and tests can predict the schedule.
    """
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    delay = min(cap_s, base_s * float(2 ** min(attempt - 1, 32)))
    if retry_after_s is not None and retry_after_s > delay:
        delay = min(cap_s, retry_after_s)
    return max(0.0, delay)

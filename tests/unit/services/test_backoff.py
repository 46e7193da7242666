"""Retry delays: exponential, capped, Retry-After honoured within the cap."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.services.backoff import retry_delay


def test_doubles_from_the_base() -> None:
    assert [retry_delay(n, base_s=0.5, cap_s=100) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]


def test_is_capped() -> None:
    assert retry_delay(10, base_s=0.5, cap_s=8) == 8
    assert retry_delay(10_000, base_s=0.5, cap_s=8) == 8


def test_retry_after_wins_when_longer_but_stays_capped() -> None:
    assert retry_delay(1, base_s=0.5, cap_s=8, retry_after_s=3) == 3
    assert retry_delay(1, base_s=0.5, cap_s=8, retry_after_s=120) == 8
    assert retry_delay(3, base_s=0.5, cap_s=8, retry_after_s=0.1) == 2.0


def test_attempt_counts_from_one() -> None:
    with pytest.raises(ValueError):
        retry_delay(0, base_s=1, cap_s=1)


@given(st.integers(min_value=1, max_value=10_000), st.floats(0, 10), st.floats(0, 60),
       st.one_of(st.none(), st.floats(0, 1000)))
def test_never_negative_never_above_cap(attempt: int, base: float, cap: float, retry_after: float | None) -> None:
    delay = retry_delay(attempt, base_s=base, cap_s=cap, retry_after_s=retry_after)
    assert 0 <= delay <= cap

"""Per-key request budget (fixed one-minute windows in Redis); off when RATE_LIMIT_PER_MINUTE is 0."""

from __future__ import annotations

import logging
import time

import redis

from app.services.errors import RateLimited

log = logging.getLogger(__name__)
WINDOW_S = 60


def check(client: redis.Redis, key_id: str, limit: int) -> None:
    """Count this request; over the budget is a 429 with the seconds until the window resets."""
    if limit <= 0:
        return
    window = int(time.time() // WINDOW_S)
    counter = f"ratelimit:{key_id}:{window}"
    try:
        pipe = client.pipeline()
        pipe.incr(counter)
        pipe.expire(counter, WINDOW_S * 2)
        count = int(pipe.execute()[0])
    except redis.RedisError:
        # Failing open: a Redis outage must not take down the whole API with it.
        log.warning("rate limiter unavailable; request allowed")
        return
    if count > limit:
        retry_after = WINDOW_S - int(time.time()) % WINDOW_S
        raise RateLimited(
            f"more than {limit} requests a minute for this key",
            {"limit": limit, "retry_after_s": retry_after},
        )

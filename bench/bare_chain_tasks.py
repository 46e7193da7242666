"""Three no-op tasks for the floor: the same broker, worker and settings as the execution chain, no work."""

from __future__ import annotations

import os

import redis
from celery import shared_task

DONE_KEY = "bench:bare:done"


@shared_task(name="bench.first")
def first(token: str) -> str:
    """Step one of the bare chain."""
    return token


@shared_task(name="bench.second")
def second(token: str) -> str:
    """Step two of the bare chain."""
    return token


_redis: list[redis.Redis] = []


@shared_task(name="bench.last")
def last(token: str) -> str:
    """Step three: count the finished chain, so the bench can see it end (one Redis client per process)."""
    if not _redis:
        _redis.append(redis.Redis.from_url(os.environ["REDIS_URL"]))
    _redis[0].incr(DONE_KEY)
    return token

"""A workspace's daily token budget (UTC day): a Redis counter seeded from the database once a day."""

from __future__ import annotations

from datetime import datetime, time, timedelta

import redis
from sqlalchemy import func, select

from app.extensions import db
from app.models import Execution
from app.services.admission import limits as limits_
from app.services.errors import RateLimited
from app.timeutil import iso, utcnow

DAY_TTL_S = 2 * 86400


def _day_key(workspace_id: str, day: datetime) -> str:
    return f"adm:day:{workspace_id}:{day:%Y%m%d}"


def reset_at(now: datetime) -> datetime:
    """The next UTC midnight."""
    return datetime.combine(now.date() + timedelta(days=1), time.min, tzinfo=now.tzinfo)


def add_tokens(client: redis.Redis, workspace_id: str, tokens: int) -> None:
    """Count tokens a provider call used (only once the day's counter exists: the seed counts persisted ones)."""
    key = _day_key(workspace_id, utcnow())
    if client.exists(key):
        client.incrby(key, tokens)


def used_today(client: redis.Redis, workspace_id: str) -> int:
    """The counter, or (first check of the day, or Redis lost it) the sum of today's executions."""
    now = utcnow()
    key = _day_key(workspace_id, now)
    value = client.get(key)
    if value is not None:
        return int(value)
    start = datetime.combine(now.date(), time.min, tzinfo=now.tzinfo)
    total = db.session.execute(
        select(func.coalesce(func.sum(Execution.prompt_tokens + Execution.completion_tokens), 0))
        .where(Execution.workspace_id == workspace_id, Execution.created_at >= start)
    ).scalar_one()
    client.set(key, int(total), nx=True, ex=DAY_TTL_S)
    return int(client.get(key) or total)


def check(client: redis.Redis, workspace_id: str) -> None:
    """At execute, before anything is recorded: a workspace past tokens_per_day gets 429 until reset_at."""
    limit = limits_.for_execution(workspace_id, None).tokens_per_day
    if limit <= 0:
        return
    used = used_today(client, workspace_id)
    if used >= limit:
        raise RateLimited(
            f"the workspace used its {limit} tokens for today",
            {"limit": "tokens_per_day", "tokens_per_day": limit, "used": used, "reset_at": iso(reset_at(utcnow()))},
        )

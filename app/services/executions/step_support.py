"""What the chain's steps share: their actor, the skip marker they pass on, step records, which errors retry."""

from __future__ import annotations

from typing import Any

import redis
from sqlalchemy import exc as sa_exc

from app.timeutil import iso, utcnow

ACTOR = "worker"
# The database or Redis unreachable (or a deadlock): the step did not happen, and running it again is safe.
# sa_exc.TimeoutError: no pooled connection freed within DATABASE_POOL_TIMEOUT_S (1,000 LLM runs share a few).
INFRASTRUCTURE_ERRORS: tuple[type[Exception], ...] = (
    sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError, redis.ConnectionError, redis.TimeoutError,
)


def is_infrastructure_error(exc: BaseException) -> bool:
    """Also a database error that cost the connection (the server ended the session, say)."""
    return isinstance(exc, INFRASTRUCTURE_ERRORS) or (
        isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated
    )


def skipped(execution_id: str, reason: str) -> dict[str, Any]:
    """What a step returns when there is nothing (more) to do; later steps pass it on."""
    return {"execution_id": execution_id, "skip": reason}


def step_record(name: str, status: str, started: str | None) -> dict[str, Any]:
    """One entry of the execution's `steps`, finished now."""
    return {"name": name, "status": status, "started_at": started, "finished_at": iso(utcnow())}

"""Readiness: can this process reach the database, the broker and Redis right now?"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis
from sqlalchemy import text

from app.extensions import db
from coordination import broker
from coordination.errors import BrokerBlocked, NotConfirmed


def _check_database() -> None:
    db.session.execute(text("SELECT 1"))
    db.session.rollback()


def _check_broker(url: str, timeout_s: float) -> None:
    """Reachable is not enough: during a memory or disk alarm RabbitMQ accepts connections but blocks
    publishers, so the check publishes a probe and needs its confirm (any listed node will do)."""
    outcome = broker.probe(url, timeout_s=timeout_s)
    if outcome == broker.BLOCKED_OUTCOME:
        raise BrokerBlocked("the broker blocks publishers (memory or disk alarm)")
    if outcome != broker.CONFIRMED:
        raise NotConfirmed(f"the broker did not confirm a probe publish within {timeout_s}s")


def _check_redis(url: str, timeout_s: float) -> None:
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        client.ping()
    finally:
        client.close()


def _timed(check: Callable[[], None]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        check()
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"; the type is reported
        failed: dict[str, Any] = {"ok": False, "error": type(exc).__name__,
                                  "ms": round((time.perf_counter() - started) * 1000, 1)}
        if isinstance(exc, BrokerBlocked):
            failed["blocked"] = True
        return failed
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}


def readiness(*, broker_url: str, redis_url: str, timeout_s: float) -> dict[str, Any]:
    """Each dependency's check with its time; `blocked` names the broker while it blocks publishers."""
    checks = {
        "database": _timed(_check_database),
        "broker": _timed(lambda: _check_broker(broker_url, timeout_s)),
        "redis": _timed(lambda: _check_redis(redis_url, timeout_s)),
    }
    status = "ok" if all(check["ok"] for check in checks.values()) else "unavailable"
    report: dict[str, Any] = {"status": status, "checks": checks}
    if checks["broker"].get("blocked"):
        report["blocked"] = ["broker"]
    return report

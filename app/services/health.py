"""Readiness: can this process reach the database, the broker and Redis right now?"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis
from kombu import Connection
from sqlalchemy import text

from app.extensions import db


def _check_database() -> None:
    db.session.execute(text("SELECT 1"))
    db.session.rollback()


def _check_broker(url: str, timeout_s: float) -> None:
    with Connection(url, connect_timeout=timeout_s, transport_options={"max_retries": 0}) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, timeout=timeout_s)


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
        return {"ok": False, "error": type(exc).__name__, "ms": round((time.perf_counter() - started) * 1000, 1)}
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}


def readiness(*, broker_url: str, redis_url: str, timeout_s: float) -> dict[str, Any]:
    checks = {
        "database": _timed(_check_database),
        "broker": _timed(lambda: _check_broker(broker_url, timeout_s)),
        "redis": _timed(lambda: _check_redis(redis_url, timeout_s)),
    }
    status = "ok" if all(check["ok"] for check in checks.values()) else "unavailable"
    return {"status": status, "checks": checks}

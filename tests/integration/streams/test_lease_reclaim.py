"""An LLM run whose lease lapsed while it stalled (a queue for the database pool, a starved thread among 1,000)
takes it back only when nobody else holds it and nothing was emitted since; otherwise it stays fenced out."""

from __future__ import annotations

import uuid

import redis

from app.services.streams import REFUSED_FENCED, EventLog, client

LEASE_MS = 5000


def new_log(redis_url: str) -> tuple[EventLog, str]:
    return EventLog(client(redis_url), max_events=1000, retention_s=60), f"lease-{uuid.uuid4().hex}"


def lapse(redis_url: str, execution_id: str) -> None:
    """What time does to a lease nobody refreshed."""
    redis.Redis.from_url(redis_url).delete(f"exec:{execution_id}:run")


def test_a_lapsed_lease_nobody_took_is_taken_back(redis_url: str) -> None:
    events, execution_id = new_log(redis_url)
    assert events.claim_run(execution_id, "a", LEASE_MS)
    seq = events.emit(execution_id, "delta", {"text": "x"}, run="a")
    lapse(redis_url, execution_id)
    assert events.emit(execution_id, "delta", {"text": "y"}, run="a") == REFUSED_FENCED
    assert events.reclaim_run(execution_id, "a", LEASE_MS, seq)
    assert events.current_run(execution_id) == "a"
    assert events.emit(execution_id, "delta", {"text": "y"}, run="a") == seq + 1
    assert events.reclaim_run(execution_id, "a", LEASE_MS, seq + 1)  # held: a plain refresh


def test_a_lease_another_run_holds_or_used_is_not_taken_back(redis_url: str) -> None:
    events, execution_id = new_log(redis_url)
    assert events.claim_run(execution_id, "a", LEASE_MS)
    seq = events.emit(execution_id, "delta", {"text": "x"}, run="a")
    lapse(redis_url, execution_id)
    assert events.claim_run(execution_id, "b", LEASE_MS)
    assert not events.reclaim_run(execution_id, "a", LEASE_MS, seq)  # b holds it
    events.emit(execution_id, "reset", {"attempt": 2}, run="b")
    lapse(redis_url, execution_id)  # b died too
    assert not events.reclaim_run(execution_id, "a", LEASE_MS, seq)  # b emitted since: a's output is stale
    assert events.current_run(execution_id) is None


def test_no_lease_is_taken_back_after_the_terminal_event(redis_url: str) -> None:
    events, execution_id = new_log(redis_url)
    assert events.claim_run(execution_id, "a", LEASE_MS)
    events.emit(execution_id, "delta", {"text": "x"}, run="a")
    final = events.emit(execution_id, "completed", {"output": "x"})
    assert not events.reclaim_run(execution_id, "a", LEASE_MS, final)

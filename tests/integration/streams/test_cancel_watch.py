"""Cancels reach a process's LLM runs pushed (pub/sub) and with the lease check, so runs need not poll for them;
an accepted event extends its run's lease, so a streaming run needs no refresh round trip (issue 12)."""

from __future__ import annotations

import time
import uuid

import redis

from app.services.cancel_watch import CancelWatch
from app.services.executions.llm_run import Run
from app.services.streams import EventLog, client
from tests.support.polling import wait_for

LEASE_MS = 5000


def new_log(redis_url: str) -> tuple[EventLog, str]:
    return EventLog(client(redis_url), max_events=1000, retention_s=60), f"watch-{uuid.uuid4().hex}"


def test_an_accepted_event_extends_its_runs_lease(redis_url: str) -> None:
    events, execution_id = new_log(redis_url)
    raw = redis.Redis.from_url(redis_url)
    assert events.claim_run(execution_id, "a", 50)
    events.emit_checking_cancel(execution_id, "delta", {"text": "x"}, run="a", lease_ms=LEASE_MS)
    assert int(raw.pttl(f"exec:{execution_id}:run")) > 1000
    events.emit(execution_id, "completed", {"output": "x"})
    assert events.current_run(execution_id) is None  # the terminal event still drops it


def test_the_lease_check_reports_the_cancel_flag(redis_url: str) -> None:
    events, execution_id = new_log(redis_url)
    assert events.claim_run(execution_id, "a", LEASE_MS)
    assert events.reclaim_run_checking_cancel(execution_id, "a", LEASE_MS, 0) == (True, False)
    events.request_cancel(execution_id)
    assert events.reclaim_run_checking_cancel(execution_id, "a", LEASE_MS, 0) == (True, True)
    assert events.reclaim_run_checking_cancel(execution_id, "b", LEASE_MS, 0) == (False, True)


def test_a_run_hears_a_cancel_pushed_to_its_process(redis_url: str) -> None:
    events, execution_id = new_log(redis_url)
    watch = CancelWatch(client(redis_url))
    wait_for(lambda: watch.cancelled(execution_id) is False, 10, "the watch subscribed")
    assert events.claim_run(execution_id, "a", LEASE_MS)
    now = time.monotonic()
    run = Run(execution_id, "a", events, deadline=now + 60, last_refresh=now, last_cancel_check=now, watch=watch)
    assert not run.should_stop()
    events.request_cancel(execution_id)
    wait_for(run.should_stop, 10, "the run told to stop")
    assert run.stop_reason == "cancelled"
    assert watch.cancelled(f"other-{execution_id}") is False

"""The lease keeper: a process's waiting LLM runs keep their leases through one Redis round trip per tick, asked
from each run's own thread, and every answer (held, lost, cancelled, Redis down) reaches its run as its own call
would have."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence

import pytest
import redis

from app.services.executions.lease_keeper import LeaseKeeper
from app.services.executions.llm_run import LEASE_MS, REFRESH_EVERY_S, Run
from app.services.streams import EventLog, cancel_key, client


def new_log(redis_url: str) -> EventLog:
    return EventLog(client(redis_url), max_events=1000, retention_s=60)


class Counted:
    """The event log's batched refresh, counting its round trips (the real call, on the real Redis)."""

    def __init__(self, events: EventLog) -> None:
        self.events = events
        self.calls: list[int] = []
        self.done = threading.Condition()

    def __call__(self, runs: Sequence[tuple[str, str]]) -> list[tuple[bool, bool]]:
        answers = self.events.refresh_runs(runs, LEASE_MS)
        with self.done:
            self.calls.append(len(runs))
            self.done.notify_all()
        return answers

    def wait_for(self, total: int) -> None:
        with self.done:
            assert self.done.wait_for(lambda: sum(self.calls) >= total, timeout=10), self.calls


def running(events: EventLog, keeper: LeaseKeeper | None, execution_id: str | None = None) -> Run:
    """A run holding its lease, last refreshed long enough ago that its next poll asks for a refresh."""
    execution_id = execution_id or f"keeper-{uuid.uuid4().hex}"
    token = uuid.uuid4().hex
    assert events.claim_run(execution_id, token, LEASE_MS)
    return Run(execution_id, token, events, deadline=time.monotonic() + 60,
               last_refresh=time.monotonic() - REFRESH_EVERY_S - 1, keeper=keeper)


def lease_ttl_ms(redis_url: str, execution_id: str) -> int:
    return int(redis.Redis.from_url(redis_url).pttl(f"exec:{execution_id}:run"))


def test_refresh_runs_extends_own_leases_only_and_reports_cancels(redis_url: str) -> None:
    events = new_log(redis_url)
    ours, theirs, gone, cancelled = (f"refresh-{name}-{uuid.uuid4().hex}" for name in ("a", "b", "c", "d"))
    for execution_id in (ours, theirs, cancelled):
        assert events.claim_run(execution_id, "owner", 1000)
    redis.Redis.from_url(redis_url).set(cancel_key(cancelled), "1")
    answers = events.refresh_runs([(ours, "owner"), (theirs, "someone else"), (gone, "owner"),
                                   (cancelled, "owner")], LEASE_MS)
    assert answers == [(True, False), (False, False), (False, False), (True, True)]
    assert lease_ttl_ms(redis_url, ours) > 1000  # extended to the 5 s lease
    assert lease_ttl_ms(redis_url, theirs) <= 1000  # not ours: untouched
    assert events.current_run(gone) is None  # a lapsed lease is never taken back here
    assert events.refresh_runs([], LEASE_MS) == []


def test_runs_asking_in_one_tick_share_one_round_trip(redis_url: str) -> None:
    events = new_log(redis_url)
    refresh = Counted(events)
    keeper = LeaseKeeper(refresh, tick_s=0.2)
    runs = [running(events, keeper) for _ in range(50)]
    for run in runs:
        assert not run.should_stop()  # asks; no round trip of its own
    refresh.wait_for(50)
    assert refresh.calls == [50]
    assert all(lease_ttl_ms(redis_url, run.execution_id) > 4000 for run in runs)
    assert not any(run.should_stop() for run in runs)  # refreshed just now: nothing more to ask


def test_a_cancel_found_by_the_keeper_stops_the_run_at_its_next_poll(redis_url: str) -> None:
    events = new_log(redis_url)
    refresh = Counted(events)
    run = running(events, LeaseKeeper(refresh, tick_s=0.01))
    redis.Redis.from_url(redis_url).set(cancel_key(run.execution_id), "1")
    assert not run.should_stop()
    refresh.wait_for(1)
    assert run.should_stop() and run.stop_reason == "cancelled"


def test_a_lease_taken_over_stops_the_run_and_a_lapsed_one_is_taken_back(redis_url: str) -> None:
    events = new_log(redis_url)
    refresh = Counted(events)
    keeper = LeaseKeeper(refresh, tick_s=0.01)
    replaced, lapsed = running(events, keeper), running(events, keeper)
    store = redis.Redis.from_url(redis_url)
    store.set(f"exec:{replaced.execution_id}:run", "another run")
    store.delete(f"exec:{lapsed.execution_id}:run")  # lapsed while the run stalled; nobody took it
    assert not replaced.should_stop() and not lapsed.should_stop()
    refresh.wait_for(2)
    assert replaced.should_stop() and replaced.stop_reason == "lost"
    assert not lapsed.should_stop()  # its own check took the lease back (nothing was emitted since)
    assert events.current_run(lapsed.execution_id) == lapsed.token


def test_a_failed_refresh_is_raised_in_the_runs_own_thread() -> None:
    broken = EventLog(redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2),
                      max_events=1000, retention_s=60)
    keeper = LeaseKeeper(lambda runs: broken.refresh_runs(runs, LEASE_MS), tick_s=0.01)
    run = Run("keeper-broken", "token", broken, deadline=time.monotonic() + 60,
              last_refresh=time.monotonic() - REFRESH_EVERY_S - 1, keeper=keeper)
    assert not run.should_stop()
    deadline = time.monotonic() + 10
    while run.refresh_error is None and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(redis.ConnectionError):
        run.should_stop()
    assert run.refresh_error is None  # raised once; the step's retry takes it from there


def test_a_run_that_stops_polling_is_not_kept_alive(redis_url: str) -> None:
    events = new_log(redis_url)
    refresh = Counted(events)
    keeper = LeaseKeeper(refresh, tick_s=0.01)
    hung, alive = running(events, keeper), running(events, keeper)
    assert not hung.should_stop()  # asks once, then polls no more (a hung thread)
    refresh.wait_for(1)
    assert not alive.should_stop()
    refresh.wait_for(2)
    assert refresh.calls == [1, 1]  # the later tick carried only the run that asked: the hung one's lease lapses

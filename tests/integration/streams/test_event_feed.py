"""What an SSE client reads through the process's fan-out reader: a follower that joins behind another one of the
same execution still gets every event once, in order."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

from flask import Flask

from app.services.event_feed import open_feed
from app.services.executions.events import event_log
from app.services.streams import Event, EventLog


def emit_deltas(events: EventLog, execution_id: str, first: int, last: int) -> None:
    pipe = events.redis.pipeline(transaction=False)
    for seq in range(first, last + 1):
        events.emit_on(pipe, execution_id, "delta", {"text": f"w{seq} "})
    pipe.execute()


def take(feed: Iterator[Event | None], count: int) -> list[int]:
    ids = []
    for _ in range(count):
        item = next(feed)
        assert item is not None, "a heartbeat: the feed waited a whole interval for an event"
        ids.append(item.id)
    return ids


def test_a_follower_joining_behind_another_gets_every_event_once(pg_app: Flask) -> None:
    with pg_app.app_context():
        events = event_log()
        execution_id = uuid.uuid4().hex
        events.emit(execution_id, "status", {"execution_id": execution_id, "status": "running"})
        ahead = open_feed(execution_id, 0, heartbeat_s=10)
        assert take(ahead, 1) == [1]  # subscribed from 1
        emit_deltas(events, execution_id, 2, 1200)
        assert take(ahead, 1199) == list(range(2, 1201))  # the reader has handed out up to 1200

        # Its backlog read stops at 1,000 events: 1,001..1,200 were handed out before it joined.
        behind = open_feed(execution_id, 0, heartbeat_s=10)
        assert take(behind, 1200) == list(range(1, 1201))
        emit_deltas(events, execution_id, 1201, 1205)
        events.emit(execution_id, "completed", {"execution_id": execution_id, "status": "completed"})
        for feed in (ahead, behind):
            assert [item.id for item in feed if item is not None] == list(range(1201, 1207))

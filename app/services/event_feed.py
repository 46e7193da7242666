"""What an SSE client reads: the execution's Redis Stream from an id on, live, or its row once the stream expired."""

from __future__ import annotations

from collections.abc import Generator, Iterable

from flask import current_app

from app.extensions import db
from app.models import Execution, ExecutionStatus
from app.services.executions.events import emit_terminal, event_log, terminal_event
from app.services.stream_fanout import StreamFanout, fanout
from app.services.streams import Event, EventLog


def replay_from_row(execution: Execution, after: int) -> list[Event]:
    """A finished execution whose stream expired: status, the whole output as one delta, the terminal event."""
    events = [Event(1, "status", {"execution_id": execution.id, "status": execution.status, "replayed": True})]
    if execution.output:
        events.append(Event(2, "delta", {"text": execution.output}))
    name, data = terminal_event(execution)
    events.append(Event(len(events) + 1, name, data))
    return [event for event in events if event.id > after]


def _finished_row(execution_id: str) -> Execution | None:
    """The row if the execution is final; the session is closed again so an idle stream holds no connection."""
    try:
        execution = db.session.get(Execution, execution_id)
        if execution is not None:
            db.session.refresh(execution)
        return execution if execution is not None and ExecutionStatus(execution.status).terminal else None
    finally:
        db.session.close()


def _already_past_the_end(events: EventLog, execution_id: str, after: int) -> bool:
    """The client already has the terminal event: there is nothing left to send."""
    terminal = events.terminal_id(execution_id)
    return terminal is not None and after >= terminal


Feed = Generator[Event | None, None, None]


def open_feed(execution_id: str, after: int, *, heartbeat_s: float) -> Feed:
    """Read the backlog now (so Redis being down is a 503, not a broken stream), then follow lazily.

    Yields events in id order and None when heartbeat_s passed without one; ends after the terminal event.
    Close the feed when the client goes away: that ends its subscription to the process's reader.
    """
    events = event_log()
    if not events.exists(execution_id):
        finished = _finished_row(execution_id)
        if finished is not None:
            return _replay(replay_from_row(finished, after))
    backlog = events.read_after(execution_id, after)
    db.session.close()
    if not backlog and _already_past_the_end(events, execution_id, after):
        return _replay(())
    if backlog and backlog[-1].terminal:
        return _replay(backlog)
    readers = fanout(current_app.config["REDIS_URL"])
    return _follow(events, readers, execution_id, after, backlog, heartbeat_s)


def _replay(stored: Iterable[Event]) -> Feed:
    """Events known up front, as a feed."""
    yield from stored


def _follow(
    events: EventLog, readers: StreamFanout, execution_id: str, after: int, backlog: list[Event], heartbeat_s: float
) -> Feed:
    """Backlog first, then the process's fan-out reader; on each quiet interval, re-check the row (see open_feed).

    The reader hands out what follows the backlog's last id; if it had already handed out more (another follower
    of the stream is ahead), the gap is read here with XRANGE. Ids already sent are skipped.
    """
    with readers.subscribe(execution_id, backlog[-1].id if backlog else after) as subscription:
        last, catch_up_to = after, subscription.catch_up_to
        while True:
            if backlog:
                batch, backlog = backlog, []
            elif last < catch_up_to:
                batch = events.read_after(execution_id, last)
                catch_up_to = catch_up_to if batch else 0
            else:
                batch = subscription.wait(heartbeat_s)
                if not batch:
                    if _already_past_the_end(events, execution_id, last):
                        return
                    finished = _finished_row(execution_id)
                    if finished is not None:
                        # Final in the database but no terminal event (its emit was lost): emit it now, once.
                        emit_terminal(finished)
                    yield None
                    continue
            for event in batch:
                if event.id <= last:
                    continue
                last = event.id
                yield event
                if event.terminal:
                    return

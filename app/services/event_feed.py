"""What an SSE client reads: the execution's Redis Stream from an id on, live, or its row once the stream expired."""

from __future__ import annotations

from collections.abc import Iterator

from app.extensions import db
from app.models import Execution
from app.services.executions import emit_terminal, event_log, is_terminal, terminal_event
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
        return execution if execution is not None and is_terminal(execution.status) else None
    finally:
        db.session.close()


def _already_past_the_end(events: EventLog, execution_id: str, after: int) -> bool:
    """The client already has the terminal event: there is nothing left to send."""
    terminal = events.terminal_id(execution_id)
    return terminal is not None and after >= terminal


def open_feed(execution_id: str, after: int, *, heartbeat_s: float) -> Iterator[Event | None]:
    """Read the backlog now (so Redis being down is a 503, not a broken stream), then follow lazily.

    Yields events in id order and None when heartbeat_s passed without one; ends after the terminal event.
    """
    events = event_log()
    if not events.exists(execution_id):
        finished = _finished_row(execution_id)
        if finished is not None:
            return iter(replay_from_row(finished, after))
    backlog = events.read_after(execution_id, after)
    db.session.close()
    if not backlog and _already_past_the_end(events, execution_id, after):
        return iter(())
    return _follow(events, execution_id, after, backlog, int(heartbeat_s * 1000))


def _follow(
    events: EventLog, execution_id: str, after: int, backlog: list[Event], block_ms: int
) -> Iterator[Event | None]:
    """Backlog first, then XREAD BLOCK; on each quiet interval, re-check the row (see open_feed)."""
    last = after
    while True:
        batch = backlog or events.wait_after(execution_id, last, max(1, block_ms))
        backlog = []
        if not batch:
            if _already_past_the_end(events, execution_id, last):
                return
            finished = _finished_row(execution_id)
            if finished is not None:
                # Final in the database but no terminal event (its emit was lost): emit it now, exactly once.
                emit_terminal(finished)
            yield None
            continue
        for event in batch:
            last = event.id
            yield event
            if event.terminal:
                return

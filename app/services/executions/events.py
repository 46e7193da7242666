"""An execution's events on its Redis Stream: the app's event log, the status events and the one terminal event."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from flask import current_app

from app.models import ExecutionStatus
from app.services import streams
from app.services.streams import EventLog

log = logging.getLogger(__name__)


class Finished(Protocol):
    """What the terminal event is built from: an Execution, or a row an UPDATE ... RETURNING gave back."""

    id: str
    status: str
    output: str | None
    error_code: str | None
    error_message: str | None
    prompt_tokens: int
    completion_tokens: int
    attempts: int


def event_log() -> EventLog:
    """The event log on this app's Redis, with its retention settings."""
    config = current_app.config
    return streams.event_log(config["REDIS_URL"], max_events=int(config["STREAM_MAX_EVENTS"]),
                             retention_s=int(config["STREAM_RETENTION_S"]))


def error_of(execution: Finished) -> dict[str, str] | None:
    if execution.error_code is None:
        return None
    return {"code": execution.error_code, "message": execution.error_message or ""}


def terminal_event(execution: Finished) -> tuple[str, dict[str, Any]]:
    """The one terminal SSE event of a finished execution, built from its row (so a re-emit is identical)."""
    data: dict[str, Any] = {"execution_id": execution.id, "status": execution.status}
    if execution.status == ExecutionStatus.COMPLETED:
        data["output"] = execution.output or ""
        data["usage"] = {"prompt_tokens": execution.prompt_tokens, "completion_tokens": execution.completion_tokens}
        data["attempts"] = execution.attempts
    elif execution.status == ExecutionStatus.DENIED:
        data["reason"] = execution.error_message or "denied"
    else:
        data["error"] = error_of(execution)
        data["attempts"] = execution.attempts
    return execution.status, data


def emit_terminal(execution: Finished) -> None:
    """Emit the terminal event; the stream refuses a second one, so calling this again is harmless."""
    event, data = terminal_event(execution)
    event_log().emit(execution.id, event, data)


def emit_status(execution_id: str, status: ExecutionStatus) -> None:
    event_log().emit(execution_id, "status", {"execution_id": execution_id, "status": status.value})


def emit_quietly(execution_id: str, event: tuple[str, dict[str, Any]]) -> None:
    """Best effort, for events the database can replay anyway (the execution already ended)."""
    try:
        event_log().emit(execution_id, event[0], event[1])
    except Exception:  # noqa: BLE001 - the row is the record; the stream falls back to it
        log.warning("could not emit %s for execution %s", event[0], execution_id)

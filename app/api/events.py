"""Workspace events: publish (confirmed) and follow a topic pattern as server-sent events (thin views)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, current_app, request

from app.api.auth import current_principal
from app.api.docs import api_doc
from app.api.schemas import ErrorOut, EventAccepted, EventPublish
from app.api.sse import HEARTBEAT, sse_response
from app.api.validation import parse_body
from app.services import events
from coordination.errors import CoordinationError

bp = Blueprint("events", __name__)

STREAM_QUERY: dict[str, dict[str, Any]] = {
    "pattern": {"type": "string", "default": "#",
                "description": "topic pattern over event types: words, * (one word), # (any words), e.g. agent.#"},
}


@bp.post("/events")
@api_doc(summary="Publish an event to the workspace's subscribers (202 once the broker confirmed it)",
         body=EventPublish, responses={202: EventAccepted, 413: ErrorOut, 422: ErrorOut, 503: ErrorOut},
         tags=["events"])
def publish_event() -> tuple[dict[str, Any], int]:
    body = parse_body(EventPublish)
    return {"event_id": events.publish(current_principal(), body.event_type, body.data)}, 202


def format_event(event: dict[str, Any]) -> str:
    """Named by its event_type; data {event_id, event_type, data, published_at}."""
    data = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    return f"event: {event['event_type']}\ndata: {data}\n\n"


@bp.get("/events/stream")
@api_doc(summary="Follow the workspace's events matching a pattern; `: subscribed` once bound",
         responses={200: "text/event-stream", 422: ErrorOut, 503: ErrorOut}, query=STREAM_QUERY,
         tags=["events", "streams"])
def stream_events() -> Response:
    principal = current_principal()
    listener = events.listen(principal, request.args.get("pattern", "#"),
                             idle_s=float(current_app.config["SSE_HEARTBEAT_S"]))
    workspace_id = principal.workspace_id

    def generate() -> Iterator[str]:
        try:
            yield ": subscribed\n\n"
            for event in listener:
                yield HEARTBEAT if event is None else format_event(events.public_event(workspace_id, event))
        except CoordinationError:
            yield ": broker connection lost\n\n"  # the client reconnects; events during the gap are not replayed
        finally:
            listener.close()

    return sse_response(generate(), "events", on_close=listener.close)

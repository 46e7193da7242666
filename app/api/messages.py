"""Agent messages: send (confirmed), read the inbox, follow it live, list dead letters (thin views)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, current_app, request

from app.api.auth import current_principal
from app.api.docs import api_doc
from app.api.errors import ApiError
from app.api.schemas import DeadLetterList, ErrorOut, MessageList, MessageSend, MessageSent
from app.api.sse import HEARTBEAT, parse_after, sse_response
from app.api.validation import parse_body
from app.services import messaging, workflows
from app.services.messaging import MessageRequest

bp = Blueprint("messages", __name__)

READ_QUERY: dict[str, dict[str, Any]] = {
    "after": {"type": "integer", "minimum": 0, "description": "return messages with seq greater than this"},
    "limit": {"type": "integer", "minimum": 1, "maximum": messaging.MAX_READ_LIMIT},
}
STREAM_QUERY: dict[str, dict[str, Any]] = {
    "after": {"type": "integer", "minimum": 0, "description": "resume after this seq (or Last-Event-ID)"},
}
DEAD_QUERY: dict[str, dict[str, Any]] = {"limit": {"type": "integer", "minimum": 1, "maximum": 1000}}


def _int_arg(name: str, default: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw.strip() == "":
        return default
    text = raw.strip()
    if not text.isdigit() or len(text) > 18:
        raise ApiError(422, "validation_error", f"{name} must be a non-negative integer", {name: raw})
    return int(text)


@bp.post("/agents/<agent_id>/messages")
@api_doc(summary="Send a message to another agent of the workspace (201 once the broker confirmed it)",
         body=MessageSend, responses={201: MessageSent, 404: ErrorOut, 409: ErrorOut, 413: ErrorOut, 422: ErrorOut,
                                      503: ErrorOut},
         tags=["messages"])
def send_message(agent_id: str) -> tuple[dict[str, Any], int]:
    body = parse_body(MessageSend)
    result = workflows.send_message(
        current_principal(),
        agent_id,
        MessageRequest(to_agent_id=body.to_agent_id, message=body.message, correlation_id=body.correlation_id,
                       message_id=body.message_id, execute=body.execute),
    )
    return result, 201


@bp.get("/agents/<agent_id>/messages")
@api_doc(summary="The agent's inbox after a seq, FIFO (includes every confirmed message)",
         responses={200: MessageList, 404: ErrorOut, 422: ErrorOut, 503: ErrorOut}, query=READ_QUERY,
         tags=["messages"])
def read_messages(agent_id: str) -> dict[str, Any]:
    return messaging.read(current_principal(), agent_id, after=_int_arg("after", 0), limit=_int_arg("limit", 100))


def format_message(row: dict[str, Any]) -> str:
    """One inbox row as an SSE event: `id:` is its seq."""
    return f"id: {row['seq']}\nevent: message\ndata: {json.dumps(row, separators=(',', ':'), ensure_ascii=False)}\n\n"


@bp.get("/agents/<agent_id>/messages/stream")
@api_doc(summary="Follow the inbox: replays after Last-Event-ID / ?after= (default: from the start), then live",
         responses={200: "text/event-stream", 404: ErrorOut, 422: ErrorOut}, query=STREAM_QUERY,
         tags=["messages", "streams"])
def stream_messages(agent_id: str) -> Response:
    after = parse_after(request.args.get("after"), request.headers.get("Last-Event-ID"))
    config = current_app.config
    heartbeat_s = float(config["SSE_HEARTBEAT_S"])
    rows = messaging.follow(current_principal(), agent_id, after=after, poll_s=float(config["MESSAGE_STREAM_POLL_S"]))

    def generate() -> Iterator[str]:
        yield ": following\n\n"
        last_write = time.monotonic()
        for row in rows:
            if row is not None:
                last_write = time.monotonic()
                yield format_message(row)
            elif time.monotonic() - last_write >= heartbeat_s:
                last_write = time.monotonic()
                yield HEARTBEAT

    return sse_response(generate(), "messages")


@bp.get("/agents/<agent_id>/dead-letters")
@api_doc(summary="Messages to this agent that could not be stored and went to agents.dead, newest first",
         responses={200: DeadLetterList, 404: ErrorOut, 422: ErrorOut}, query=DEAD_QUERY, tags=["messages"])
def list_dead_letters(agent_id: str) -> dict[str, Any]:
    return {"items": messaging.dead_letters(current_principal(), agent_id, limit=_int_arg("limit", 100))}

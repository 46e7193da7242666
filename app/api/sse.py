"""Server-sent events: the one response builder, execution event framing, and where a resuming client left off."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import closing

from flask import Response, current_app, stream_with_context

from app.api.errors import ApiError
from app.metrics import track_open_stream
from app.services.event_feed import open_feed
from app.services.streams import Event

HEARTBEAT = ": heartbeat\n\n"


def format_event(event: Event) -> str:
    """id, event and one data line of compact JSON (json.dumps never emits a raw newline)."""
    data = json.dumps(event.data, separators=(",", ":"), ensure_ascii=False)
    return f"id: {event.id}\nevent: {event.event}\ndata: {data}\n\n"


def parse_after(query_after: str | None, last_event_id: str | None) -> int:
    """`?after=N` wins over the Last-Event-ID header; both are the last id the client has; absent means 0."""
    for source, raw in (("after", query_after), ("Last-Event-ID", last_event_id)):
        if raw is None or raw.strip() == "":
            continue
        text = raw.strip()
        if not text.isdigit() or len(text) > 18:
            raise ApiError(422, "validation_error", f"{source} must be a non-negative integer event id",
                           {source: raw})
        return int(text)
    return 0


def sse_response(events: Iterator[str], kind: str, *, on_close: Callable[[], None] | None = None,
                 headers: dict[str, str] | None = None, keep_context: bool = False) -> Response:
    """200 text/event-stream, unbuffered by proxies, counted in sse_open_streams{kind} while it is read.

    The one builder of every SSE answer: execution events, the inbox and the event bus. keep_context keeps the
    request (and app) context for a generator that still reads the database.
    """
    body = track_open_stream(kind, events)
    response = Response(stream_with_context(body) if keep_context else body, mimetype="text/event-stream")
    if on_close is not None:
        response.call_on_close(on_close)  # also when the client left before the first chunk
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def event_stream(execution_id: str, after: int, headers: dict[str, str] | None = None) -> Response:
    """An execution's events: replay after `after`, follow live, heartbeat, close after the terminal event."""
    feed = open_feed(execution_id, after, heartbeat_s=float(current_app.config["SSE_HEARTBEAT_S"]))

    def generate() -> Iterator[str]:
        with closing(feed):  # a client that went away leaves the process's fan-out reader at once
            for item in feed:
                yield HEARTBEAT if item is None else format_event(item)

    return sse_response(generate(), "executions", headers=headers, keep_context=True)

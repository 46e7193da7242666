"""The wire format of agent messages (JSON body, AMQP properties and headers) and its inverse."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from opentelemetry import propagate

from coordination.broker import Outgoing
from coordination.topology import AGENTS_EXCHANGE, validate_agent_id

MAX_ID_LENGTH = 128
MAX_WORKSPACE_ID_LENGTH = 36
CONTENT_TYPE = "application/json"
# Replies get a message_id derived from the message they answer (uuid5 in this namespace), so answering the same
# message twice (a redelivery, a retried task) sends the same message again and the inbox keeps one copy.
_REPLY_NAMESPACE = uuid.UUID("6f1c7f9e-3f5d-4c1a-9a57-2d0c3c1f8b41")


def new_id() -> str:
    """A fresh message or event id (uuid4 hex)."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    """Timezone-aware now, so every stored timestamp is UTC."""
    return datetime.now(UTC)


def iso(value: datetime) -> str:
    """ISO-8601 UTC with a Z suffix; naive values (SQLite) are UTC already."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(timespec="microseconds") + "Z"


def parse_iso(value: str) -> datetime:
    """Inverse of iso(); accepts a trailing Z or an explicit offset."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def dumps(value: Any) -> bytes:
    """Compact JSON bytes; a value JSON cannot hold is the caller's mistake (ValueError)."""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"message is not JSON-serializable: {exc}") from exc


def check_id(name: str, value: str | None) -> str | None:
    """Ids must fit their columns (String(128))."""
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
        raise ValueError(f"{name} must be a non-empty string of at most {MAX_ID_LENGTH} chars")
    return value


def encode_message(
    *,
    from_agent_id: str,
    to_agent_id: str,
    message: Any,
    message_id: str,
    correlation_id: str | None,
    workspace_id: str | None,
    hop: int,
    sent_at: datetime,
) -> Outgoing:
    """A persistent, mandatory publish to agents.direct routed by the receiver's id."""
    validate_agent_id(from_agent_id)
    validate_agent_id(to_agent_id)
    check_id("message_id", message_id)
    check_id("correlation_id", correlation_id)
    headers: dict[str, Any] = {
        "from_agent_id": from_agent_id,
        "to_agent_id": to_agent_id,
        "hop": int(hop),
        "sent_at": iso(sent_at),
    }
    if workspace_id is not None:
        if len(str(workspace_id)) > MAX_WORKSPACE_ID_LENGTH:
            raise ValueError(f"workspace_id must be at most {MAX_WORKSPACE_ID_LENGTH} chars")
        headers["workspace_id"] = str(workspace_id)
    propagate.inject(headers)  # the sender's traceparent (nothing when tracing is off): a reply links to its asker
    properties: dict[str, Any] = {
        "content_type": CONTENT_TYPE,
        "delivery_mode": 2,
        "message_id": message_id,
        "timestamp": int(sent_at.timestamp()),
        "application_headers": headers,
    }
    if correlation_id is not None:
        properties["correlation_id"] = correlation_id
    return Outgoing(AGENTS_EXCHANGE, to_agent_id, dumps(message), properties, mandatory=True)


def _text(value: Any) -> str | None:
    """Header values arrive as str or bytes depending on the publisher's client."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def traceparent_of(msg: Any) -> str | None:
    """The W3C traceparent a message was sent under (the asking span), if its sender traced."""
    headers = msg.properties.get("application_headers") or {}
    return _text(headers.get("traceparent"))


def decode_delivery(agent_id: str, msg: Any, *, delivered_at: datetime | None = None) -> dict[str, Any]:
    """An inbox_messages row from a delivery; raises ValueError for a message that cannot be stored."""
    props = msg.properties
    headers = props.get("application_headers") or {}
    message_id = check_id("message_id", _text(props.get("message_id")))
    if message_id is None:
        raise ValueError("delivery has no message_id")
    from_agent_id = _text(headers.get("from_agent_id"))
    if from_agent_id is None:
        raise ValueError("delivery has no from_agent_id header")
    validate_agent_id(from_agent_id)
    body = msg.body if isinstance(msg.body, bytes | bytearray) else str(msg.body).encode()
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise ValueError(f"body is not JSON: {exc}") from exc
    sent_header = _text(headers.get("sent_at"))
    if sent_header:
        sent_at = parse_iso(sent_header)
    elif isinstance(props.get("timestamp"), int):
        sent_at = datetime.fromtimestamp(props["timestamp"], UTC)
    elif isinstance(props.get("timestamp"), datetime):
        sent_at = props["timestamp"].replace(tzinfo=UTC)
    else:
        sent_at = delivered_at or utcnow()
    workspace_id = _text(headers.get("workspace_id"))
    return {
        "message_id": message_id,
        "workspace_id": workspace_id,
        "from_agent_id": from_agent_id,
        "to_agent_id": agent_id,
        "message": payload,
        "correlation_id": check_id("correlation_id", _text(props.get("correlation_id"))),
        "hop": int(headers.get("hop") or 0),
        "sent_at": sent_at,
        "delivered_at": delivered_at or utcnow(),
    }


def public_row(row: Any) -> dict[str, Any]:
    """The API shape of an inbox row (keys fixed by DESIGN.md, plus hop)."""
    return {
        "seq": int(row.seq),
        "message_id": row.message_id,
        "from_agent_id": row.from_agent_id,
        "to_agent_id": row.to_agent_id,
        "message": row.message,
        "correlation_id": row.correlation_id,
        "sent_at": iso(row.sent_at),
        "delivered_at": iso(row.delivered_at),
        "hop": int(row.hop),
    }


def next_hop(hop: int, max_hops: int) -> int | None:
    """The hop of a reply to a message at `hop`, or None when replying would exceed max_hops (workflows end)."""
    if hop < 0 or max_hops < 0:
        raise ValueError("hop and max_hops must be >= 0")
    return hop + 1 if hop < max_hops else None


def reply_message_id(message_id: str) -> str:
    """A deterministic id for the reply to message_id (idempotent replies)."""
    return uuid.uuid5(_REPLY_NAMESPACE, message_id).hex

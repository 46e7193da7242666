"""Moving agents.dead into the dead_letters table, so an API can list poison messages."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, exists, insert, select

from coordination import schema
from coordination.broker import BrokerSession
from coordination.envelope import iso, utcnow
from coordination.topology import DEAD_QUEUE

log = logging.getLogger(__name__)

DeadLetterHook = Callable[[Connection, dict[str, Any]], None]


def _json_safe(value: Any) -> Any:
    """AMQP headers (x-death holds datetimes, bytes, nested tables) as JSON values."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def dead_letter_row(msg: Any) -> dict[str, Any]:
    """A dead_letters row; x-death names why (rejected, delivery_limit, expired, maxlen)."""
    props = msg.properties
    headers = _json_safe(props.get("application_headers") or {})
    deaths = headers.get("x-death") or []
    first = deaths[0] if deaths and isinstance(deaths[0], dict) else {}
    body = msg.body if isinstance(msg.body, bytes | bytearray) else str(msg.body).encode()
    return {
        "message_id": (str(props["message_id"])[:128] if props.get("message_id") else None),
        "workspace_id": (str(headers["workspace_id"])[:36] if headers.get("workspace_id") else None),
        "from_agent_id": (str(headers["from_agent_id"])[:64] if headers.get("from_agent_id") else None),
        "to_agent_id": (str(headers.get("to_agent_id") or msg.delivery_info.get("routing_key") or "")[:64] or None),
        "body": bytes(body).decode("utf-8", "replace"),
        "headers": json.loads(json.dumps(headers)),
        "reason": str(first.get("reason") or "unknown")[:255],
        "dead_lettered_at": utcnow(),
    }


def drain_dead_letters(
    session: BrokerSession,
    engine: Engine,
    *,
    on_dead_lettered: DeadLetterHook | None = None,
    batch_size: int = 200,
) -> int:
    """Store what sits in agents.dead (one row per message_id), commit, then ack; returns rows written."""
    table = schema.dead_letters
    written = 0
    while True:
        channel = session.channel()
        last_tag: int | None = None
        empty = False
        with engine.begin() as db:
            for _ in range(batch_size):
                msg = channel.basic_get(queue=DEAD_QUEUE, no_ack=False)
                if msg is None:
                    empty = True
                    break
                last_tag = msg.delivery_info["delivery_tag"]
                row = dead_letter_row(msg)
                if (
                    row["message_id"]
                    and db.execute(select(exists().where(table.c.message_id == row["message_id"]))).scalar()
                ):
                    continue  # redelivered after a crash between commit and ack
                row_id = db.execute(insert(table).values(**row).returning(table.c.id)).scalar_one()
                written += 1
                if on_dead_lettered is not None:
                    on_dead_lettered(db, {"id": row_id, **row})
        if last_tag is not None:
            channel.basic_ack(last_tag, multiple=True)
        if empty:
            return written


def list_dead_letters(engine: Engine, *, to_agent_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Dead letters, newest first, for an API listing."""
    table = schema.dead_letters
    query = select(table).order_by(table.c.id.desc()).limit(limit)
    if to_agent_id is not None:
        query = query.where(table.c.to_agent_id == to_agent_id)
    with engine.connect() as db:
        return [
            {
                "id": int(row.id),
                "message_id": row.message_id,
                "workspace_id": row.workspace_id,
                "from_agent_id": row.from_agent_id,
                "to_agent_id": row.to_agent_id,
                "body": row.body,
                "headers": row.headers,
                "reason": row.reason,
                "dead_lettered_at": iso(row.dead_lettered_at),
            }
            for row in db.execute(query)
        ]

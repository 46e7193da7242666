"""Messaging helpers of the fault scenarios: raw publishes, queue depth and the inbox table read without draining."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import amqp
from sqlalchemy import Engine, select

from coordination import schema
from coordination.topology import AGENTS_EXCHANGE, inbox_queue_name
from tests.support.api import ApiClient


def _connection(broker_url: str) -> amqp.Connection:
    parts = urlsplit(broker_url)
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    conn = amqp.Connection(f"{parts.hostname}:{parts.port or 5672}", userid=parts.username or "guest",
                           password=parts.password or "guest", virtual_host=vhost, connect_timeout=5)
    conn.connect()
    return conn


def publish_raw(broker_url: str, agent_id: str, body: bytes, message_id: str, headers: dict[str, object]) -> None:
    """A message that bypasses every validation (a buggy foreign publisher), confirmed by the broker."""
    with _connection(broker_url) as conn:
        channel = conn.channel()
        channel.confirm_select()
        channel.basic_publish(amqp.Message(body, message_id=message_id, delivery_mode=2, application_headers=headers),
                              exchange=AGENTS_EXCHANGE, routing_key=agent_id, mandatory=True)


def queue_depth(broker_url: str, queue: str) -> int:
    """Messages ready in a queue (passive declare)."""
    with _connection(broker_url) as conn:
        return int(conn.channel().queue_declare(queue=queue, passive=True).message_count)


def inbox_depth(broker_url: str, agent_id: str) -> int:
    return queue_depth(broker_url, inbox_queue_name(agent_id))


def stored_ids(engine: Engine, agent_id: str) -> list[str]:
    """message_ids in the agent's inbox table in seq order, read without draining the queue."""
    table = schema.inbox_messages
    with engine.connect() as db:
        query = select(table.c.message_id).where(table.c.to_agent_id == agent_id).order_by(table.c.seq)
        return [row.message_id for row in db.execute(query)]


def inbox_of(api: ApiClient, agent_id: str) -> list[dict[str, Any]]:
    """The whole inbox through the API (which drains the queue first), page by page."""
    rows: list[dict[str, Any]] = []
    after = 0
    while True:
        page = api.get(f"/agents/{agent_id}/messages", query_string={"after": after, "limit": 500}).get_json()
        rows += page["messages"]
        if not page["messages"]:
            return rows
        after = page["next_after"]


def inbox_holding(api: ApiClient, agent_id: str, at_least: int) -> list[dict[str, Any]] | None:
    """The whole inbox once it holds at least `at_least` rows (for wait_for), else None."""
    rows = inbox_of(api, agent_id)
    return rows if len(rows) >= at_least else None

"""The broker topology, declared in one place and used by publishers, drainers and the mailbox.

Exchanges and queues:

- ``agents.direct`` (direct, durable): routing key = receiver agent id.
- ``agent.<agent_id>.inbox`` (durable, one per agent, declared when the agent is created and deleted with
  it): bound to ``agents.direct`` with routing key ``<agent_id>``, dead-letters to ``agents.dlx``.
- ``agents.dlx`` (fanout, durable) -> ``agents.dead`` (durable classic queue): poison messages. Fanout, so a
  dead letter keeps its original routing key (the receiver) and still reaches ``agents.dead``.
- ``events`` (topic, durable): the event bus.
- ``agents.notify`` (fanout, durable): after a send is confirmed, the sender publishes the receiver's id here
  (coordination.notify). ``mailbox.pending`` (durable, declared by the mailbox) and each web process's
  inbox-stream watcher queue are bound to it, so the mailbox drains only inboxes that have work.

Poison messages (a delivery whose store keeps failing):

- Every drainer (``get_messages`` and the mailbox) counts failed store attempts per message_id in memory
  and rejects the message without requeue after ``max_attempts`` failures, so RabbitMQ dead-letters it to
  ``agents.dlx`` -> ``agents.dead``. This works for classic and quorum queues alike.
- Quorum inboxes (QUEUE_TYPE=quorum) also get ``x-delivery-limit`` (same N) and at-least-once
  dead-lettering: the broker counts deliveries itself, so a message that crashes the draining process
  (the in-memory count dies with it) is still dead-lettered after N deliveries. Drainers also read the
  broker's ``x-delivery-count`` header, so the two counts agree.
- Classic inboxes have no broker-side count: a message that kills the process before the store fails
  cleanly is retried forever. Use quorum queues where that matters.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu import Connection, Exchange, Queue

AGENTS_EXCHANGE = "agents.direct"
DLX_EXCHANGE = "agents.dlx"
DEAD_QUEUE = "agents.dead"
EVENTS_EXCHANGE = "events"
NOTIFY_EXCHANGE = "agents.notify"
MAILBOX_QUEUE = "mailbox.pending"
QUEUE_TYPES = ("classic", "quorum")
DEFAULT_MAX_ATTEMPTS = 5
MAX_AGENT_ID_LENGTH = 64

_WHITESPACE = re.compile(r"\s")

agents_exchange = Exchange(AGENTS_EXCHANGE, type="direct", durable=True)
dlx_exchange = Exchange(DLX_EXCHANGE, type="fanout", durable=True)
dead_queue = Queue(DEAD_QUEUE, exchange=dlx_exchange, routing_key="", durable=True, auto_delete=False)
events_exchange = Exchange(EVENTS_EXCHANGE, type="topic", durable=True)
notify_exchange = Exchange(NOTIFY_EXCHANGE, type="fanout", durable=True)


def validate_agent_id(agent_id: str) -> str:
    """Reject ids that cannot be a routing key, a queue name part or an inbox column value."""
    if not isinstance(agent_id, str) or not agent_id or len(agent_id) > MAX_AGENT_ID_LENGTH:
        raise ValueError(f"agent id must be a non-empty string of at most {MAX_AGENT_ID_LENGTH} chars")
    if _WHITESPACE.search(agent_id):
        raise ValueError("agent id must not contain whitespace")
    return agent_id


def validate_queue_type(queue_type: str) -> str:
    """QUEUE_TYPE is classic or quorum; anything else is a configuration mistake."""
    if queue_type not in QUEUE_TYPES:
        raise ValueError(f"queue_type must be one of {QUEUE_TYPES}, not {queue_type!r}")
    return queue_type


def inbox_queue_name(agent_id: str) -> str:
    """The inbox queue's name, so drainers can address it without building a kombu Queue."""
    return f"agent.{validate_agent_id(agent_id)}.inbox"


def inbox_arguments(queue_type: str = "classic", max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> dict[str, Any]:
    """Queue arguments of an inbox; every declaration must pass the same ones (RabbitMQ checks)."""
    args: dict[str, Any] = {
        "x-queue-type": validate_queue_type(queue_type),
        "x-dead-letter-exchange": DLX_EXCHANGE,
    }
    if queue_type == "quorum":
        args["x-delivery-limit"] = max_attempts
        args["x-dead-letter-strategy"] = "at-least-once"
        args["x-overflow"] = "reject-publish"
    return args


def inbox_queue(agent_id: str, queue_type: str = "classic", max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> Queue:
    """The kombu Queue of one agent's inbox (durable, bound by agent id, dead-lettering to agents.dlx)."""
    return Queue(
        inbox_queue_name(agent_id),
        exchange=agents_exchange,
        routing_key=agent_id,
        durable=True,
        auto_delete=False,
        queue_arguments=inbox_arguments(queue_type, max_attempts),
    )


@contextmanager
def _connected(conn_or_url: Connection | str) -> Iterator[Connection]:
    """Use the caller's connection, or open (and close) one for a URL."""
    if isinstance(conn_or_url, Connection):
        yield conn_or_url
        return
    conn = Connection(conn_or_url, connect_timeout=10)
    try:
        conn.connect()
        yield conn
    finally:
        conn.release()


def declare_topology_on(channel: Any) -> None:
    """Declare the shared exchanges and the dead-letter queue on an open channel (idempotent)."""
    for exchange in (agents_exchange, dlx_exchange, events_exchange, notify_exchange):
        exchange(channel).declare()
    dead_queue(channel).declare()


def declare_topology(conn_or_url: Connection | str) -> None:
    """Declare agents.direct, agents.dlx -> agents.dead and events; safe to call any number of times."""
    with _connected(conn_or_url) as conn:
        channel = conn.channel()
        try:
            declare_topology_on(channel)
        finally:
            channel.close()


def declare_agent_inbox(
    conn_or_url: Connection | str,
    agent_id: str,
    *,
    queue_type: str = "classic",
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> str:
    """Create an agent's inbox queue (and the topology it needs) when the agent is created."""
    queue = inbox_queue(agent_id, queue_type, max_attempts)
    with _connected(conn_or_url) as conn:
        channel = conn.channel()
        try:
            declare_topology_on(channel)
            queue(channel).declare()
        finally:
            channel.close()
    return str(queue.name)


def declare_inbox_on(
    channel: Any, agent_id: str, *, queue_type: str = "classic", max_attempts: int = DEFAULT_MAX_ATTEMPTS
) -> str:
    """Declare and bind one inbox in a single round trip on a channel whose topology is already declared.

    The declare goes without waiting (nowait); the bind's reply follows it on the same channel, so it
    confirms both, and a failed declare closes the channel with its error before the bind is answered.
    """
    name = inbox_queue_name(agent_id)
    channel.queue_declare(
        queue=name, durable=True, auto_delete=False, arguments=inbox_arguments(queue_type, max_attempts), nowait=True
    )
    channel.queue_bind(queue=name, exchange=AGENTS_EXCHANGE, routing_key=agent_id)
    return name


def delete_agent_inbox(conn_or_url: Connection | str, agent_id: str) -> None:
    """Remove an agent's inbox when the agent is deleted; later sends to it become unroutable."""
    name = inbox_queue_name(agent_id)
    with _connected(conn_or_url) as conn:
        channel = conn.channel()
        try:
            channel.queue_delete(name)
        finally:
            channel.close()

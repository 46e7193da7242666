"""The broker topology, declared in one place and used by publishers, drainers and the mailbox.

Exchanges and queues:

- ``agents.direct`` (direct, durable): routing key = receiver agent id.
- ``agent.<agent_id>.inbox`` (durable, one per agent, declared when the agent is created and deleted with
  it): bound to ``agents.direct`` with routing key ``<agent_id>``, dead-letters to ``agents.dlx``.
- ``agents.dlx`` (fanout, durable) -> ``agents.dead`` (durable, of QUEUE_TYPE): poison messages. Fanout, so
  a dead letter keeps its original routing key (the receiver) and still reaches ``agents.dead``.
- ``events`` (topic, durable): the event bus.
- ``agents.notify`` (fanout, durable): after a send is confirmed, the sender publishes the receiver's id here
  (coordination.notify). ``mailbox.pending`` (durable, declared by the mailbox) and each web process's
  inbox-stream watcher queue are bound to it, so the mailbox drains only inboxes that have work.
- ``executions`` and ``executions.llm`` (direct exchanges and durable queues of QUEUE_TYPE): Celery's task
  queues (the LLM step has its own, celeryconfig task_routes; celery_app.py takes them from here).

QUEUE_TYPE=quorum makes the inboxes, ``agents.dead``, ``executions``, ``executions.llm`` and new named event
subscriptions (``events.<name>``) quorum queues (replicated over a cluster's nodes: losing one node of three
loses no confirmed message). Quorum queues refuse exclusive queues, priorities and global QoS: the event
bus's anonymous queues stay classic (exclusive, they die with their connection anyway), nothing here uses
priorities, and Celery turns off global QoS when it sees a
quorum queue (worker_detect_quorum_queues). A queue's type is fixed when it is declared: switching
QUEUE_TYPE needs a new vhost (or the queues deleted while empty); RabbitMQ answers PRECONDITION_FAILED for
the inboxes and ``executions``. ``agents.dead`` keeps the type it was created with (it is shared by inboxes
of any type).

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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import amqp
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
events_exchange = Exchange(EVENTS_EXCHANGE, type="topic", durable=True)
notify_exchange = Exchange(NOTIFY_EXCHANGE, type="fanout", durable=True)
EXECUTIONS_QUEUE = "executions"
LLM_QUEUE = "executions.llm"


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


def typed_arguments(queue_type: str) -> dict[str, Any]:
    """x-queue-type for quorum; a classic queue keeps no argument, as it was always declared (no redeclare error)."""
    return {"x-queue-type": "quorum"} if validate_queue_type(queue_type) == "quorum" else {}


def dead_queue(queue_type: str = "classic") -> Queue:
    """agents.dead, bound to agents.dlx; quorum with QUEUE_TYPE=quorum so a dead letter survives a node loss."""
    return Queue(DEAD_QUEUE, exchange=dlx_exchange, routing_key="", durable=True, auto_delete=False,
                 queue_arguments=typed_arguments(queue_type) or None)


def executions_queue(queue_type: str = "classic", name: str = EXECUTIONS_QUEUE) -> Queue:
    """One of Celery's queues of the execution chain (as Celery would create it); quorum with QUEUE_TYPE=quorum."""
    exchange = Exchange(name, type="direct", durable=True)
    return Queue(name, exchange=exchange, routing_key=name, durable=True,
                 auto_delete=False, queue_arguments=typed_arguments(queue_type) or None)


def executions_queues(queue_type: str = "classic") -> list[Queue]:
    """Celery's task_queues: the chain's queue and the LLM step's (celeryconfig task_routes)."""
    return [executions_queue(queue_type, name) for name in (EXECUTIONS_QUEUE, LLM_QUEUE)]


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


def declare_topology_on(channel: Any, queue_type: str | None = "classic") -> None:
    """Declare the shared exchanges, and agents.dead of queue_type unless None (idempotent).

    Publishers that never touch agents.dead (the event bus) pass None: declaring it with the wrong type
    would be refused (PRECONDITION_FAILED) and close the channel.
    """
    for exchange in (agents_exchange, dlx_exchange, events_exchange, notify_exchange):
        exchange(channel).declare()
    if queue_type is not None and not _exists(channel, DEAD_QUEUE):
        dead_queue(queue_type)(channel).declare()


def declare_subscription_queue(channel: Any, name: str, queue_type: str = "classic") -> Any:
    """Declare a named event subscription's durable queue: of queue_type when new, of the type it has if not.

    A quorum queue survives the loss of a node with the events it holds; an existing subscription keeps its
    type (as agents.dead does), so switching QUEUE_TYPE does not make RabbitMQ refuse the next subscribe.
    """
    if _exists(channel, name):
        return channel.queue_declare(queue=name, passive=True)
    return channel.queue_declare(queue=name, durable=True, auto_delete=False,
                                 arguments=typed_arguments(queue_type) or None)


def _exists(channel: Any, queue: str) -> bool:
    """Passive declare on a throwaway channel (a missing queue closes the channel it was asked on).

    agents.dead takes QUEUE_TYPE when it is created and keeps its type after: a vhost that ran classic, or
    inboxes of both types (tests), would otherwise get PRECONDITION_FAILED on every declaration.
    """
    probe = channel.connection.channel()
    try:
        probe.queue_declare(queue=queue, passive=True)
        return True
    except amqp.exceptions.NotFound:
        return False
    finally:
        if probe.is_open:
            probe.close()


def declare_topology(conn_or_url: Connection | str, queue_type: str = "classic") -> None:
    """Declare agents.direct, agents.dlx -> agents.dead and events; safe to call any number of times."""
    with _connected(conn_or_url) as conn:
        channel = conn.channel()
        try:
            declare_topology_on(channel, queue_type)
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
            declare_topology_on(channel, queue_type)
            queue(channel).declare()
        finally:
            channel.close()
    return str(queue.name)


def declare_inbox_on(
    channel: Any, agent_id: str, *, queue_type: str = "classic", max_attempts: int = DEFAULT_MAX_ATTEMPTS
) -> str:
    """Declare and bind one inbox in a single round trip on a channel whose topology is already declared."""
    declare_inboxes_on(channel, [agent_id], queue_type=queue_type, max_attempts=max_attempts)
    return inbox_queue_name(agent_id)


def declare_inboxes_on(
    channel: Any, agent_ids: Sequence[str], *, queue_type: str = "classic", max_attempts: int = DEFAULT_MAX_ATTEMPTS
) -> None:
    """Declare and bind inboxes pipelined, in one round trip, on a channel whose topology is already declared.

    Declares and binds go without waiting (nowait) but the last bind, whose reply follows them all on the same
    channel: it confirms every one, and a failed declare closes the channel with its error before it is answered.
    """
    arguments = inbox_arguments(queue_type, max_attempts)
    for n, agent_id in enumerate(agent_ids, start=1):
        name = inbox_queue_name(agent_id)
        channel.queue_declare(queue=name, durable=True, auto_delete=False, arguments=arguments, nowait=True)
        channel.queue_bind(queue=name, exchange=AGENTS_EXCHANGE, routing_key=agent_id, nowait=n < len(agent_ids))


def delete_agent_inbox(conn_or_url: Connection | str, agent_id: str) -> None:
    """Remove an agent's inbox when the agent is deleted; later sends to it become unroutable."""
    name = inbox_queue_name(agent_id)
    with _connected(conn_or_url) as conn:
        channel = conn.channel()
        try:
            channel.queue_delete(name)
        finally:
            channel.close()

"""Each agent's inbox queue lives and dies with the agent."""

from __future__ import annotations

import logging

from flask import current_app
from kombu.exceptions import OperationalError as KombuOperationalError

from app.services import coordination_clients
from app.services.errors import Unavailable
from coordination import broker, topology

log = logging.getLogger(__name__)

BROKER_ERRORS: tuple[type[BaseException], ...] = (
    KombuOperationalError, OSError, ConnectionError, *broker.CONNECTION_ERRORS, *broker.CHANNEL_ERRORS,
)


def declare(agent_id: str) -> None:
    """Declare the inbox on a pooled broker session (topology declared once per connection): one round trip.

    No broker, no agent (503, nothing changed). A pooled connection that the broker dropped (restart) only shows
    it is dead when used, so one failure is retried on a fresh connection; without that, each stale pooled
    connection cost a client one 503.
    """
    pool = coordination_clients.social().pool
    for attempt in (1, 2):
        try:
            with pool.session() as session:
                topology.declare_inbox_on(
                    session.channel(),
                    agent_id,
                    queue_type=current_app.config["QUEUE_TYPE"],
                    max_attempts=current_app.config["MAILBOX_MAX_ATTEMPTS"],
                )
            return
        except BROKER_ERRORS as exc:
            if attempt == 2:
                raise Unavailable("message broker unavailable", {"dependency": "broker"}) from exc


def declare_many(agent_ids: list[str], *, chunk: int = 100) -> None:
    """Declare many inboxes pipelined: declares and binds go without waiting, one round trip per chunk.

    A failed declare closes the channel, so the chunk's closing synchronous call raises its error: 503.
    """
    config = current_app.config
    arguments = topology.inbox_arguments(config["QUEUE_TYPE"], config["MAILBOX_MAX_ATTEMPTS"])
    try:
        with coordination_clients.social().pool.session() as session:
            for start in range(0, len(agent_ids), chunk):
                channel = session.channel()
                part = agent_ids[start:start + chunk]
                for agent_id in part:
                    name = topology.inbox_queue_name(agent_id)
                    channel.queue_declare(queue=name, durable=True, auto_delete=False, arguments=arguments,
                                          nowait=True)
                    channel.queue_bind(queue=name, exchange=topology.AGENTS_EXCHANGE, routing_key=agent_id,
                                       nowait=True)
                channel.queue_declare(queue=topology.inbox_queue_name(part[-1]), passive=True)
    except BROKER_ERRORS as exc:
        raise Unavailable("message broker unavailable", {"dependency": "broker"}) from exc


def delete(agent_id: str) -> None:
    """Best effort after the delete commits: a leftover queue is harmless, sends to a deleted agent are 404."""
    try:
        with coordination_clients.social().pool.session() as session:
            session.channel().queue_delete(topology.inbox_queue_name(agent_id))
    except BROKER_ERRORS:
        log.warning("could not delete the inbox of agent %s; it stays until the next delete", agent_id,
                    extra={"agent_id": agent_id})

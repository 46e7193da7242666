"""Each agent's inbox queue lives and dies with the agent."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from flask import current_app
from kombu import Connection, pools
from kombu.exceptions import OperationalError as KombuOperationalError

from app.services.errors import Unavailable
from coordination import topology

log = logging.getLogger(__name__)

BROKER_ERRORS: tuple[type[BaseException], ...] = (KombuOperationalError, OSError, ConnectionError)


@contextmanager
def _pooled_connection() -> Iterator[Connection]:
    """A pooled connection, one per thread or greenlet at a time (kombu #566, #1248)."""
    url = current_app.config["BROKER_URL"]
    with pools.connections[Connection(url, connect_timeout=5)].acquire(block=True, timeout=10) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, timeout=5)
        try:
            yield conn
        except BROKER_ERRORS:
            conn.collect()  # a dead socket (broker restarted) must not go back to the pool as "connected"
            raise


def declare(agent_id: str) -> None:
    """Declare before the agent's row commits: no broker, no agent (503, nothing changed).

    A pooled connection that the broker dropped (restart) only shows it is dead when used, so one failure is
    retried on a fresh connection; without that, each stale pooled connection cost a client one 503.
    """
    for attempt in (1, 2):
        try:
            with _pooled_connection() as conn:
                topology.declare_agent_inbox(
                    conn,
                    agent_id,
                    queue_type=current_app.config["QUEUE_TYPE"],
                    max_attempts=current_app.config["MAILBOX_MAX_ATTEMPTS"],
                )
            return
        except BROKER_ERRORS as exc:
            if attempt == 2:
                raise Unavailable("message broker unavailable", {"dependency": "broker"}) from exc


def delete(agent_id: str) -> None:
    """Best effort after the delete commits: a leftover queue is harmless, sends to a deleted agent are 404."""
    try:
        with _pooled_connection() as conn:
            topology.delete_agent_inbox(conn, agent_id)
    except BROKER_ERRORS:
        log.warning("could not delete the inbox of agent %s; it stays until the next delete", agent_id,
                    extra={"agent_id": agent_id})

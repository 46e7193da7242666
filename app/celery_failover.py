"""Celery's connections leave a broker node that stops answering (frozen: sockets open, nothing answered).

A SIGSTOPped or hung node keeps its TCP connections open, so nothing fails: every wait without a deadline
(Celery's own confirms, close handshakes) waited for ever. BROKER_SOCKET_TIMEOUT_S bounds each socket read
(celery_app.py); here what follows a read that ran into it:
- FailoverConnection (every Celery broker connection, pooled ones too) forgets its socket at once, without
  the close handshake, and it and the connections built after it skip that node for a while. Without it,
  Celery's retry of a chain's next step republished on the same frozen connection, then reconnected to the
  same node, until it gave up, and the execution was stranded.
- FailoverDispatcher (the worker's task and heartbeat events) takes a new channel after a failed publish;
  Celery only buffered the event and kept the channel, so every later event waited the timeout again, in the
  loop that consumes tasks and ticks the AMQP heartbeat.
"""

from __future__ import annotations

import time
from typing import Any

from celery.app.amqp import AMQP
from celery.app.events import Events
from celery.events.dispatcher import EventDispatcher
from kombu import Connection
from kombu.asynchronous import get_event_loop
from kombu.connection import ConnectionPool, PooledConnection

SILENT_FOR_S = 30.0  # how long a node that left a read or a handshake unanswered is skipped by new connections
_silent: dict[str, float] = {}  # host:port -> when (monotonic) it last left one unanswered, for this process


def drop_and_fail_over(connection: Any, hub: Any = None) -> None:
    """Forget the socket without the close handshake and point at the next node; new connections skip this one."""
    _silent[connection.host] = time.monotonic()
    raw = connection._connection  # not .connection, which would connect again  # noqa: SLF001
    if hub is not None and raw is not None and raw.sock is not None:
        hub.remove(raw.sock)  # the worker's hub reads this socket (server heartbeats); a new one may reuse its fd
    connection.collect()
    connection.maybe_switch_next()


_KombuConnection: Any = Connection  # partly annotated: its methods would count as untyped calls of ours


class FailoverConnection(_KombuConnection):  # type: ignore[misc]
    """Gives up its socket when the node leaves a read unanswered, and skips silent nodes when it (re)connects.

    Pooled connections are built anew from the first listed node, and kombu gives up a connect whose one
    handshake used up the connect timeout without trying the next node: hence the skip.
    """

    def _establish_connection(self) -> Any:
        self._skip_silent()
        try:
            raw = super()._establish_connection()
        except TimeoutError:  # TCP accepted (the kernel does that for a frozen process), handshake unanswered
            _silent[self.host] = time.monotonic()
            raise
        read = raw.blocking_read

        def blocking_read(timeout: float | None = None) -> Any:
            try:
                return read(timeout)
            except TimeoutError:
                if timeout is None:  # the socket's own timeout (a caller's poll passes one): the node is silent
                    _silent[self.host] = time.monotonic()
                    self.collect()  # no close handshake; the next use connects again, to another node
                raise

        raw.blocking_read = blocking_read
        return raw

    def _skip_silent(self) -> None:
        """Move to the next listed node while this one was silent within SILENT_FOR_S (all silent: stay)."""
        for _ in range(len(self.alt or ()) - 1):
            since = _silent.get(self.host)
            if since is None or time.monotonic() - since > SILENT_FOR_S:
                return
            self.maybe_switch_next()

    def Pool(self, limit: int | None = None, **kwargs: Any) -> Any:  # noqa: N802 - kombu's name
        pool: Any = FailoverConnectionPool  # kombu's __init__ is unannotated
        return pool(self, limit=limit, **kwargs)


class PooledFailoverConnection(FailoverConnection, PooledConnection):
    """What the pools hand out (Celery's producers, the enqueue): a FailoverConnection."""


class FailoverConnectionPool(ConnectionPool):
    """kombu's connection pool, building PooledFailoverConnection."""

    def new(self) -> Any:
        pooled: Any = PooledFailoverConnection  # kombu's __init__ is unannotated
        return pooled(self, **dict(self.connection._info(resolve=False)))  # noqa: SLF001


class FailoverAMQP(AMQP):  # type: ignore[misc]
    """Celery's AMQP helpers, building FailoverConnection for every broker connection."""

    Connection = FailoverConnection


class FailoverDispatcher(EventDispatcher):  # type: ignore[misc]
    """An EventDispatcher whose own connection is replaced after a publish on it fails."""

    def _publish(self, event: Any, producer: Any, routing_key: str, *args: Any, **kwargs: Any) -> Any:
        buffered = len(self._outbound_buffer)
        try:
            return super()._publish(event, producer, routing_key, *args, **kwargs)
        except Exception:
            self._fail_over(producer)
            raise
        finally:
            if len(self._outbound_buffer) > buffered:  # the publish failed and Celery kept the event for later
                self._fail_over(producer)

    def _fail_over(self, producer: Any) -> None:
        if producer is None or producer is not self.producer or self.connection is None:
            return  # a caller's own producer (task-sent on the enqueue's connection) is the caller's to handle
        drop_and_fail_over(self.connection, hub=get_event_loop())
        producer.revive(self.connection)  # its channel is taken from the connection again at the next publish


class FailoverEvents(Events):  # type: ignore[misc]
    """Celery's events app with the failing-over dispatcher."""

    dispatcher_cls = f"{__name__}:FailoverDispatcher"

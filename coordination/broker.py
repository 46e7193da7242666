"""Broker sessions: one connection with a confirm-mode channel, used by one thread at a time, pooled.

Why not kombu's Producer with confirm_publish: py-amqp's basic_publish_confirm waits for each confirm on
its own and raises on basic.return without waiting for the ack that follows it, which leaves a stray ack
that the next publish would take as its own. Here every publish gets the delivery tag the broker will
confirm, basic.return is matched to its tag (RabbitMQ sends it before the basic.ack), and a batch is
published first and confirmed afterwards (pipelined). A session is never used by two threads or greenlets
at once (kombu #566, #1248): callers check one out of a SessionPool and give it back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import amqp
import kombu.exceptions
from kombu import Connection

from coordination.topology import declare_topology_on

log = logging.getLogger(__name__)

CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    amqp.exceptions.ConnectionError,
    OSError,
    kombu.exceptions.OperationalError,
)
CHANNEL_ERRORS: tuple[type[BaseException], ...] = (amqp.exceptions.ChannelError,)

# Outcomes of one publish.
CONFIRMED = "confirmed"
UNROUTABLE = "unroutable"
NACKED = "nacked"
TIMEOUT = "not_confirmed"
CONNECTION_LOST = "connection_lost"
CHANNEL_CLOSED = "channel_closed"


def connect(broker_url: str, *, timeout_s: float) -> Connection:
    """Open a kombu connection whose socket reads and writes never block longer than timeout_s."""
    conn = Connection(
        broker_url,
        connect_timeout=timeout_s,
        transport_options={"read_timeout": timeout_s, "write_timeout": timeout_s},
    )
    # kombu's connect() sleeps 2 s before its one retry; callers retry on their own terms.
    conn.ensure_connection(max_retries=0, interval_start=0, interval_step=0, interval_max=0)
    return conn


def raw_connection(conn: Connection) -> amqp.Connection:
    """The py-amqp connection under a kombu one (drain_events with a timeout, raw channels)."""
    return conn.connection


@dataclass
class Outgoing:
    """One message to publish: where, what and its AMQP properties."""

    exchange: str
    routing_key: str
    body: bytes
    properties: dict[str, Any]
    mandatory: bool = True


@dataclass
class _Tracking:
    """Confirm bookkeeping of one channel: tag -> message_id until the broker answers."""

    next_tag: int = 1
    pending: dict[int, str] = field(default_factory=dict)
    returned: set[int] = field(default_factory=set)
    outcome: dict[int, str] = field(default_factory=dict)


class BrokerSession:
    """A connection with a confirm channel and a plain channel, for one thread at a time."""

    def __init__(self, broker_url: str, *, timeout_s: float = 5.0, declare_topology: bool = True) -> None:
        self.timeout_s = timeout_s
        self.connection = connect(broker_url, timeout_s=timeout_s)
        self.broken = False
        self._raw = raw_connection(self.connection)
        self._confirm: Any = None
        self._plain: Any = None
        self._tracking = _Tracking()
        if declare_topology:
            declare_topology_on(self.channel())

    def channel(self) -> Any:
        """A plain (non-confirm) channel for basic_get, acks and declarations; reopened after an error."""
        if self._plain is None or not self._plain.is_open:
            self._plain = self._raw.channel()
        return self._plain

    def reset_channel(self) -> None:
        """Drop the plain channel after the broker closed it (e.g. a passive declare of a missing queue)."""
        channel, self._plain = self._plain, None
        if channel is not None and channel.is_open:
            try:
                channel.close()
            except Exception:  # noqa: BLE001 - best effort on a channel we are abandoning
                pass

    def _confirm_channel(self) -> Any:
        """The confirm-mode channel, opened on first publish with ack/nack/return handlers."""
        if self._confirm is None or not self._confirm.is_open:
            channel = self._raw.channel()
            channel.confirm_select()
            channel.events["basic_ack"].add(self._on_ack)
            channel.events["basic_nack"].add(self._on_nack)
            channel.events["basic_return"].add(self._on_return)
            self._confirm = channel
            self._tracking = _Tracking()
        return self._confirm

    def _resolve(self, tag: int, multiple: bool, status: str) -> None:
        """Record the broker's answer for one tag or every pending tag up to it."""
        track = self._tracking
        if multiple:
            tags = []
            for t in track.pending:  # insertion order is tag order
                if t > tag:
                    break
                tags.append(t)
        else:
            tags = [tag]
        for t in tags:
            if track.pending.pop(t, None) is None:
                continue
            if status == CONFIRMED and t in track.returned:
                track.outcome[t] = UNROUTABLE
            else:
                track.outcome[t] = status
            track.returned.discard(t)

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        self._resolve(delivery_tag, multiple, CONFIRMED)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        self._resolve(delivery_tag, multiple, NACKED)

    def _on_return(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        """Mark the oldest pending publish with this message_id as returned (its ack follows)."""
        message_id = message.properties.get("message_id")
        track = self._tracking
        for tag, pending_id in track.pending.items():
            if pending_id == message_id and tag not in track.returned:
                track.returned.add(tag)
                return
        log.warning("basic.return for unknown message %s (%s)", message_id, exc)

    def publish(self, items: Sequence[Outgoing], *, timeout_s: float | None = None) -> list[str]:
        """Publish every item, then wait for all confirms; one outcome string per item, never raises."""
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        tags: list[int] = []
        failure: str | None = None
        try:
            channel = self._confirm_channel()
            track = self._tracking
            for item in items:
                message = amqp.Message(item.body, **item.properties)
                tag = track.next_tag
                track.next_tag += 1
                track.pending[tag] = item.properties.get("message_id", "")
                tags.append(tag)
                channel.basic_publish(
                    message, exchange=item.exchange, routing_key=item.routing_key, mandatory=item.mandatory
                )
            while track.pending:  # only this call's tags: a failed call marks the session broken
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    failure = TIMEOUT
                    break
                self._raw.drain_events(timeout=remaining)
        except TimeoutError:
            failure = TIMEOUT
        except CHANNEL_ERRORS as exc:
            log.warning("confirm channel closed by the broker: %s", exc)
            failure = CHANNEL_CLOSED
        except CONNECTION_ERRORS as exc:
            log.warning("broker connection lost while publishing: %s", exc)
            failure = CONNECTION_LOST
        if failure is not None:
            # Late confirms would land on the next caller's tags: this session is done.
            self.broken = True
        outcome = self._tracking.outcome
        results = [outcome.pop(t, failure or TIMEOUT) for t in tags]
        results.extend([failure or TIMEOUT] * (len(items) - len(tags)))
        return results

    def close(self) -> None:
        """Close the connection, ignoring errors on an already dead socket."""
        try:
            self.connection.release()
        except Exception:  # noqa: BLE001 - closing a dead connection must not raise
            pass


class SessionPool:
    """Hands each thread or greenlet a session of its own; keeps a few idle ones for reuse."""

    def __init__(
        self,
        broker_url: str,
        *,
        timeout_s: float = 5.0,
        max_idle: int = 8,
        factory: Callable[[], BrokerSession] | None = None,
    ) -> None:
        self.broker_url = broker_url
        self.timeout_s = timeout_s
        self.max_idle = max_idle
        self._factory = factory or (lambda: BrokerSession(broker_url, timeout_s=timeout_s))
        self._idle: list[BrokerSession] = []
        self._lock = threading.Lock()

    def new_session(self) -> BrokerSession:
        """Open a fresh session (raises the connection error if the broker is unreachable)."""
        return self._factory()

    def _take(self) -> BrokerSession:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self.new_session()

    def give_back(self, session: BrokerSession) -> None:
        """Return a healthy session to the pool, or close a broken one."""
        if session.broken:
            session.close()
            return
        with self._lock:
            if len(self._idle) < self.max_idle:
                self._idle.append(session)
                return
        session.close()

    @contextmanager
    def session(self) -> Iterator[BrokerSession]:
        """Check out a session for the duration of the block; errors inside mark it broken."""
        session = self._take()
        try:
            yield session
        except BaseException:
            session.broken = True
            raise
        finally:
            self.give_back(session)

    def close(self) -> None:
        """Close every idle session (sessions checked out are closed when given back)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for session in idle:
            session.close()

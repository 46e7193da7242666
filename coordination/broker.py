"""Broker sessions: one connection with a confirm-mode channel, used by one thread at a time, pooled.

Why not kombu's Producer with confirm_publish: py-amqp's basic_publish_confirm waits for each confirm on
its own and raises on basic.return without waiting for the ack that follows it, which leaves a stray ack
that the next publish would take as its own. Here every publish gets the delivery tag the broker will
confirm, basic.return is matched to its tag (RabbitMQ sends it before the basic.ack), and a batch is
published first and confirmed afterwards (pipelined). A session is never used by two threads or greenlets
at once (kombu #566, #1248): callers check one out of a SessionPool (coordination/session_pool.py)
and give it back.

Flow control: every session's connection is watched for connection.blocked (coordination/flow.py). A
publish on a blocked connection sends nothing and answers BLOCKED at once; a block heard while waiting for
confirms ends the wait (BLOCKED, the session is dropped). A blocked or broken session is dropped without the
close handshake, which RabbitMQ would not read until the alarm clears.

Failover: BROKER_URL may list several nodes separated by ';' (kombu alternates); connect() tries each once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import amqp
import kombu.exceptions
from kombu import Connection

from coordination.flow import FLOW
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
BLOCKED_OUTCOME = "blocked"

# The readiness probe publishes here: the default exchange drops it (no such queue), and still confirms it.
PROBE_ROUTING_KEY = "agentrt.readiness-probe"


def node_count(broker_url: str) -> int:
    """How many nodes a BROKER_URL lists (';'-separated, kombu's alternates)."""
    return max(1, len([part for part in broker_url.split(";") if part.strip()]))


def connect(broker_url: str, *, timeout_s: float) -> Connection:
    """Open a kombu connection whose socket reads and writes never block longer than timeout_s.

    With several nodes listed, each is tried once in turn (kombu's round-robin failover) without sleeping;
    the connection's blocked state is watched from the start.
    """
    conn = Connection(
        broker_url,
        connect_timeout=timeout_s,
        transport_options={"read_timeout": timeout_s, "write_timeout": timeout_s},
    )
    # kombu's connect() sleeps 2 s before its one retry; callers retry on their own terms.
    conn.ensure_connection(
        max_retries=node_count(broker_url) - 1, interval_start=0, interval_step=0, interval_max=0
    )
    FLOW.watch(conn.connection, broker_url)
    return conn


def drop(conn: Connection) -> None:
    """Close without the close handshake: a blocked broker does not read it, and a dead one cannot answer."""
    raw = conn.connection if conn.connected else None
    try:
        conn.collect()
    except Exception:  # noqa: BLE001 - the socket may already be gone
        pass
    if raw is not None:
        FLOW.forget(raw)


def probe(broker_url: str, *, timeout_s: float) -> str:
    """Can this broker take a publish right now? CONFIRMED, BLOCKED_OUTCOME, TIMEOUT (connect errors raise).

    RabbitMQ tells a connection it is blocked only once it publishes, so the probe publishes a message that
    the default exchange drops and waits for its confirm or for connection.blocked, whichever comes first.
    """
    deadline = time.monotonic() + timeout_s
    conn = connect(broker_url, timeout_s=timeout_s)
    raw = raw_connection(conn)
    outcome = TIMEOUT
    try:
        channel = raw.channel()
        channel.confirm_select()
        acked: list[bool] = []
        channel.events["basic_ack"].add(lambda *_: acked.append(True))
        channel.basic_publish(amqp.Message(b""), exchange="", routing_key=PROBE_ROUTING_KEY)
        while not acked and FLOW.connection_state(raw) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                raw.drain_events(timeout=min(remaining, 0.25))
            except TimeoutError:
                continue
        if acked:
            outcome = CONFIRMED
            FLOW.clear(broker_url)
        elif FLOW.connection_state(raw) is not None:
            outcome = BLOCKED_OUTCOME
    finally:
        drop(conn)
    return outcome


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

    def __init__(self, broker_url: str, *, timeout_s: float = 5.0, declare_topology: bool = True,
                 queue_type: str | None = "classic") -> None:
        self.timeout_s = timeout_s
        self.broker_url = broker_url
        self.connection = connect(broker_url, timeout_s=timeout_s)
        self.broken = False
        self._raw = raw_connection(self.connection)
        self._confirm: Any = None
        self._plain: Any = None
        self._tracking = _Tracking()
        if declare_topology:
            declare_topology_on(self.channel(), queue_type)

    @property
    def blocked(self) -> bool:
        """RabbitMQ told this connection it is blocked (memory or disk alarm) and has not unblocked it yet."""
        return FLOW.connection_state(self._raw) is not None

    def _still_blocked(self, deadline: float) -> bool:
        """Read what the broker sent (an unblock may be waiting) for a moment; True if still blocked."""
        if not self.blocked:
            return False
        try:
            self._raw.drain_events(timeout=max(0.001, min(0.05, deadline - time.monotonic())))
        except TimeoutError:
            pass
        return self.blocked

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

    def _reopen_confirm_channel(self) -> None:
        """After a nack, publish on a fresh channel: a channel keeps nacking for a quorum queue whose leader it
        knew died (measured on RabbitMQ 3.10: 20 s and more), while a new channel finds the new leader."""
        channel, self._confirm = self._confirm, None
        if channel is not None and channel.is_open and not self._tracking.pending:
            try:
                channel.close()
            except Exception:  # noqa: BLE001 - best effort on a channel we are abandoning
                self.broken = True

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
            if self._still_blocked(deadline):
                return [BLOCKED_OUTCOME] * len(items)  # nothing sent: the session stays usable
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
                if self.blocked:  # the alarm may last minutes: answer now, the caller retries
                    failure = BLOCKED_OUTCOME
                    break
                try:
                    self._raw.drain_events(timeout=min(remaining, 0.25))
                except TimeoutError:
                    continue
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
        if CONFIRMED in results:
            FLOW.clear(self.broker_url)  # the broker takes publishes again: fail-fast publishers may try
        if NACKED in results and failure is None:
            self._reopen_confirm_channel()
        results.extend([failure or TIMEOUT] * (len(items) - len(tags)))
        return results

    def close(self) -> None:
        """Close the connection, ignoring errors on an already dead socket; no handshake if broken or blocked."""
        if self.broken or self.blocked:
            drop(self.connection)
            return
        try:
            self.connection.release()
        except Exception:  # noqa: BLE001 - closing a dead connection must not raise
            pass

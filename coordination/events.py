"""EventBus: confirmed publishes on the `events` topic exchange; subscriptions bound before they return.

- Anonymous subscriptions (and listen()) get an exclusive, auto-delete, server-named queue: events reach
  them from the moment the queue is bound until the connection closes.
- Named subscriptions get a durable queue ``events.<name>`` that keeps events while nobody consumes it;
  with queue_type="quorum" a new one is a quorum queue (an existing one keeps its type).
  Its bindings persist too: reuse a name only with the same pattern (RabbitMQ keeps old bindings).
  Two live subscribers of one name share the queue's events (competing consumers).
- A handler runs in the subscription's own thread; the delivery is acked after it returns. A handler
  that raises is logged and the event acked (a broken handler must not block the queue forever).
"""

from __future__ import annotations

import collections
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from coordination import broker
from coordination.broker import Outgoing, connect, raw_connection
from coordination.envelope import dumps, iso, new_id, utcnow
from coordination.errors import BrokerBlocked, BrokerUnavailable, Nacked, NotConfirmed
from coordination.session_pool import SessionPool
from coordination.topology import EVENTS_EXCHANGE, declare_subscription_queue, declare_topology_on, validate_queue_type

log = logging.getLogger(__name__)

EventHandler = Callable[[dict[str, Any]], None]
_EVENT_TYPE = re.compile(r"[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*")
_PATTERN = re.compile(r"([A-Za-z0-9_\-]+|\*|#)(\.([A-Za-z0-9_\-]+|\*|#))*")
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,200}")


def validate_event_type(event_type: str) -> str:
    """Dot-separated words, no wildcards: what a publish routes by."""
    if not isinstance(event_type, str) or len(event_type) > 255 or not _EVENT_TYPE.fullmatch(event_type):
        raise ValueError("event_type must be dot-separated words of [A-Za-z0-9_-] (max 255 chars)")
    return event_type


def validate_pattern(pattern: str) -> str:
    """A topic binding pattern: words, * (one word) and # (zero or more words)."""
    if not isinstance(pattern, str) or len(pattern) > 255 or not _PATTERN.fullmatch(pattern):
        raise ValueError("pattern must be dot-separated words, '*' or '#' (e.g. agent.#)")
    return pattern


def decode_event(body: bytes | str) -> dict[str, Any]:
    """The event dict {event_id, event_type, data, published_at} from a message body."""
    event = json.loads(body)
    if not isinstance(event, dict):
        raise ValueError("event body is not an object")
    return event


class _Consumer:
    """A connection with one queue bound to a pattern and a consumer on it (one thread uses it)."""

    def __init__(self, broker_url: str, pattern: str, name: str | None, timeout_s: float, prefetch: int,
                 queue_type: str = "classic") -> None:
        self.connection = connect(broker_url, timeout_s=timeout_s)
        self.raw = raw_connection(self.connection)
        try:
            self.channel = self.raw.channel()
            declare_topology_on(self.channel, None)  # the event bus never touches agents.dead
            if name is None:
                declared = self.channel.queue_declare(queue="", exclusive=True, auto_delete=True)
            else:
                declared = declare_subscription_queue(self.channel, f"events.{name}", queue_type)
            self.queue = declared.queue
            self.channel.queue_bind(queue=self.queue, exchange=EVENTS_EXCHANGE, routing_key=pattern)
            self.channel.basic_qos(0, prefetch, False)
        except BaseException:
            self.close()
            raise

    def consume(self, callback: Callable[[Any], None], *, no_ack: bool) -> None:
        """Start pushing deliveries to callback (called from drain())."""
        self.channel.basic_consume(queue=self.queue, callback=callback, no_ack=no_ack)

    def drain(self, timeout_s: float) -> None:
        """Dispatch what arrives within timeout_s; returns quietly on a quiet period."""
        try:
            self.raw.drain_events(timeout=timeout_s)
        except TimeoutError:
            pass

    def close(self) -> None:
        """Close the connection (an anonymous queue disappears with it)."""
        try:
            self.connection.release()
        except Exception:  # noqa: BLE001 - closing a dead connection must not raise
            pass


class Subscription:
    """A handler fed by a background thread; bound before the constructor returns; close() stops it."""

    def __init__(
        self,
        broker_url: str,
        pattern: str,
        handler: EventHandler,
        *,
        name: str | None = None,
        timeout_s: float = 5.0,
        prefetch: int = 100,
        queue_type: str = "classic",
    ) -> None:
        self.pattern = validate_pattern(pattern)
        if name is not None and not _NAME.fullmatch(name):
            raise ValueError("subscription name must be 1-200 chars of [A-Za-z0-9_.-]")
        self.name = name
        self.handler = handler
        self.broker_url = broker_url
        self.timeout_s = timeout_s
        self.prefetch = prefetch
        self.queue_type = validate_queue_type(queue_type)
        self._stop = threading.Event()
        # Bind in the caller's thread, so every event published after subscribe() returns is delivered.
        try:
            self._consumer: _Consumer | None = _Consumer(broker_url, pattern, name, timeout_s, prefetch,
                                                         self.queue_type)
        except broker.CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"cannot subscribe to {pattern!r}: {exc}") from exc
        self.queue = self._consumer.queue
        self._thread = threading.Thread(target=self._run, name=f"events-{name or 'anon'}", daemon=True)
        self._thread.start()

    def _on_message(self, message: Any) -> None:
        """Run the handler, then ack."""
        try:
            self.handler(decode_event(message.body))
        except Exception:  # noqa: BLE001 - a handler bug must not kill the subscription
            log.exception("event handler failed for %s", message.properties.get("message_id"))
        message.channel.basic_ack(message.delivery_tag)

    def _run(self) -> None:
        """Consume until closed; reconnect after a broker outage (anonymous queues lose the gap)."""
        failures = 0
        while not self._stop.is_set():
            consumer = self._consumer
            try:
                if consumer is None:
                    consumer = self._consumer = _Consumer(
                        self.broker_url, self.pattern, self.name, self.timeout_s, self.prefetch, self.queue_type
                    )
                    log.warning("subscription %s reconnected; queue %s", self.name or "anon", consumer.queue)
                consumer.consume(self._on_message, no_ack=False)
                failures = 0
                while not self._stop.is_set():
                    consumer.drain(0.1)
            except Exception as exc:  # noqa: BLE001 - outages are waited out
                failures += 1
                log.warning("subscription %s lost its connection: %s", self.name or "anon", exc)
                self._stop.wait(min(5.0, 0.2 * 2**failures))
            finally:
                if consumer is not None:
                    consumer.close()
                self._consumer = None

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop consuming (waiting up to timeout_s); a named queue keeps collecting events for the next one."""
        self._stop.set()
        if timeout_s > 0 and threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)

    @property
    def closed(self) -> bool:
        """True once the consumer thread has finished (its connection is closed)."""
        return not self._thread.is_alive()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventListener:
    """Iterator over events for SSE: bound on creation; yields None after each idle `timeout` period."""

    def __init__(
        self, broker_url: str, pattern: str, *, timeout: float | None = None, connect_timeout_s: float = 5.0
    ) -> None:
        validate_pattern(pattern)
        self.timeout = timeout
        self._events: collections.deque[dict[str, Any]] = collections.deque()
        try:
            self._consumer = _Consumer(broker_url, pattern, None, connect_timeout_s, prefetch=0)
            self._consumer.consume(self._on_message, no_ack=True)
        except broker.CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"cannot listen to {pattern!r}: {exc}") from exc
        self.closed = False

    def _on_message(self, message: Any) -> None:
        try:
            self._events.append(decode_event(message.body))
        except ValueError:
            log.warning("dropping an event that is not JSON: %r", message.body[:200])

    def get(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next event, or None if none arrived within timeout seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._events and not self.closed:
            remaining = 1.0 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                self._consumer.drain(min(remaining, 1.0))
            except broker.CONNECTION_ERRORS as exc:
                raise BrokerUnavailable(f"event stream lost: {exc}") from exc
        return self._events.popleft() if self._events else None

    def __iter__(self) -> Iterator[dict[str, Any] | None]:
        while not self.closed:
            yield self.get(self.timeout)

    def close(self) -> None:
        """Close the connection; the exclusive queue goes with it."""
        self.closed = True
        self._consumer.close()

    def __enter__(self) -> EventListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    """Publish events with confirms; subscribe handlers or iterate a listener."""

    def __init__(self, broker_url: str, *, confirm_timeout_s: float = 5.0, pool: SessionPool | None = None,
                 queue_type: str = "classic") -> None:
        self.broker_url = broker_url
        self.confirm_timeout_s = confirm_timeout_s
        self.queue_type = validate_queue_type(queue_type)  # of new named subscriptions' queues
        # No agents.dead declaration: the bus does not know QUEUE_TYPE, and a wrong type would be refused.
        self.pool = pool or SessionPool(broker_url, timeout_s=confirm_timeout_s, queue_type=None)

    def publish(self, *, event_type: str, data: Mapping[str, Any] | Any, event_id: str | None = None) -> str:
        """Publish one event (persistent, confirmed) and return its event_id; DeliveryError if unconfirmed."""
        validate_event_type(event_type)
        event_id = event_id or new_id()
        event = {"event_id": event_id, "event_type": event_type, "data": data, "published_at": iso(utcnow())}
        outgoing = Outgoing(
            EVENTS_EXCHANGE,
            event_type,
            dumps(event),
            {
                "content_type": "application/json",
                "delivery_mode": 2,
                "message_id": event_id,
                "type": event_type,
                "timestamp": int(time.time()),
            },
            mandatory=False,  # an event nobody subscribed to is not an error
        )
        outcome = broker.CONNECTION_LOST
        for _ in range(2):  # one reconnect after a dead pooled connection
            try:
                with self.pool.session() as session:
                    (outcome,) = session.publish([outgoing])
            except broker.CONNECTION_ERRORS:
                outcome = broker.CONNECTION_LOST
            if outcome not in (broker.CONNECTION_LOST, broker.CHANNEL_CLOSED):
                break
        if outcome == broker.CONFIRMED:
            return event_id
        if outcome == broker.NACKED:
            raise Nacked(f"broker nacked event {event_id}", message_id=event_id)
        if outcome == broker.BLOCKED_OUTCOME:
            raise BrokerBlocked(f"the broker blocks publishers (alarm): event {event_id} not confirmed",
                                message_id=event_id)
        if outcome == broker.TIMEOUT:
            raise NotConfirmed(f"no publisher confirm for event {event_id} in time", message_id=event_id)
        raise BrokerUnavailable(f"broker unavailable publishing event {event_id}", message_id=event_id)

    def subscribe(self, *, event_type: str, handler: EventHandler, name: str | None = None) -> Subscription:
        """Bind a queue to the pattern (before returning) and feed handler from a background thread."""
        return Subscription(self.broker_url, event_type, handler, name=name, timeout_s=self.confirm_timeout_s,
                            queue_type=self.queue_type)

    def listen(self, pattern: str, timeout: float | None = None) -> EventListener:
        """An iterator of events matching pattern, bound now; yields None after each idle `timeout`."""
        return EventListener(self.broker_url, pattern, timeout=timeout, connect_timeout_s=self.confirm_timeout_s)

    def close(self) -> None:
        """Close pooled publisher connections."""
        self.pool.close()

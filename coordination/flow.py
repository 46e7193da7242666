"""Broker flow control: which brokers and connections of this process RabbitMQ has blocked (connection.blocked).

During a memory or disk alarm RabbitMQ stops reading from every connection that publishes and tells it so
with connection.blocked (then connection.unblocked when the alarm clears). It refuses nothing: a publisher
that ignores the notification waits for a confirm that only comes after the alarm (celery #9259, #2689).

Two levels are tracked, both fed by the same callbacks:
- per connection (held weakly, so one dropped while blocked is forgotten with it): a session publishing on
  a blocked connection sends nothing and fails at once;
- per broker (keyed by the BROKER_URL string, since alarms are cluster-wide): the last block any connection
  to it heard and no unblock has cleared since. Publishers that cannot see their connection (Celery's
  apply_async) fail fast while it is fresh and re-check it with a probe (coordination.broker.probe) after.
An idle connection is never told: RabbitMQ blocks a connection when it first publishes.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from coordination.forksafe import ForkSafeLock


@dataclass(frozen=True)
class Blocked:
    """Why and since when RabbitMQ blocks a connection or a broker."""

    reason: str
    since: float  # time.monotonic()

    @property
    def age_s(self) -> float:
        return time.monotonic() - self.since


class FlowControl:
    """The blocked state of this process's watched connections and of each broker they belong to."""

    def __init__(self) -> None:
        self._lock = ForkSafeLock()
        self._connections: weakref.WeakKeyDictionary[Any, Blocked] = weakref.WeakKeyDictionary()
        self._brokers: dict[str, Blocked] = {}

    def callbacks(self, broker_url: str, raw: Any = None) -> dict[str, Callable[..., None]]:
        """on_blocked / on_unblocked for py-amqp (also as kombu transport_options, then without `raw`)."""
        ref = weakref.ref(raw) if raw is not None else None  # never keep a dropped connection alive

        def on_blocked(reason: str = "connection blocked") -> None:
            state = Blocked(reason=reason, since=time.monotonic())
            conn = ref() if ref is not None else None
            with self._lock:
                self._brokers[broker_url] = state
                if conn is not None:
                    self._connections[conn] = state

        def on_unblocked() -> None:
            conn = ref() if ref is not None else None
            with self._lock:
                self._brokers.pop(broker_url, None)
                if conn is not None:
                    self._connections.pop(conn, None)

        return {"on_blocked": on_blocked, "on_unblocked": on_unblocked}

    def watch(self, raw: Any, broker_url: str) -> Any:
        """Install the callbacks on one py-amqp connection; returns it."""
        for name, callback in self.callbacks(broker_url, raw).items():
            setattr(raw, name, callback)
        return raw

    def forget(self, raw: Any) -> None:
        """The connection is being dropped."""
        with self._lock:
            self._connections.pop(raw, None)

    def connection_state(self, raw: Any) -> Blocked | None:
        """The connection's blocked state, None if it may publish."""
        with self._lock:
            return self._connections.get(raw)

    def broker_state(self, broker_url: str) -> Blocked | None:
        """The last block heard from this broker that no unblock or successful probe has cleared."""
        with self._lock:
            return self._brokers.get(broker_url)

    def mark(self, broker_url: str, reason: str) -> None:
        """A probe saw the broker blocked (or not confirming)."""
        with self._lock:
            self._brokers[broker_url] = Blocked(reason=reason, since=time.monotonic())

    def clear(self, broker_url: str) -> None:
        """A publish to this broker was confirmed: it takes publishes again."""
        with self._lock:
            self._brokers.pop(broker_url, None)


# One registry per process: readiness and every publisher of the process share what any connection heard.
FLOW = FlowControl()

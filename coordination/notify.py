"""Inbox notifications: after a confirmed send, the receiver's id goes to ``agents.notify`` (fanout).

The notice is published only after the broker confirmed the message itself, so whoever receives it finds the
message already in the inbox queue (or already stored by a reader). It is sent without waiting for a confirm
of its own (no extra round trip) on a channel of its own, so a failure there never closes the channel that
drains use. A lost notice (a connection dying right after the confirm, a foreign publisher) only delays the
background store until the mailbox's sweep: reads drain the queue themselves.

Consumers: the mailbox (durable ``mailbox.pending``) and InboxWatcher below, which wakes inbox-stream
followers of this process (an exclusive queue per process, only while somebody follows).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import amqp

from coordination import broker
from coordination.broker import BrokerSession, connect, raw_connection
from coordination.topology import NOTIFY_EXCHANGE, declare_topology_on

log = logging.getLogger(__name__)

_channels: weakref.WeakKeyDictionary[BrokerSession, Any] = weakref.WeakKeyDictionary()


def _notify_channel(session: BrokerSession) -> Any:
    """A session's notification channel, opened on first use and reopened if the broker closed it."""
    channel = _channels.get(session)
    if channel is None or not channel.is_open:
        channel = _channels[session] = session.connection.channel()
    return channel


def notify(session: BrokerSession, agent_ids: Iterable[str]) -> None:
    """Publish one notice per distinct receiver, fire and forget; never raises (the sweep is the fallback)."""
    try:
        channel = _notify_channel(session)
        for agent_id in dict.fromkeys(agent_ids):
            channel.basic_publish(
                amqp.Message(agent_id.encode(), delivery_mode=2), exchange=NOTIFY_EXCHANGE, routing_key=agent_id
            )
    except (*broker.CONNECTION_ERRORS, *broker.CHANNEL_ERRORS) as exc:
        log.warning("inbox notification not sent (%s); the mailbox's sweep will find the message", exc)
        session.broken = True


def decode_notice(message: Any) -> str | None:
    """The receiver's agent id of a notice, or None for a body that is not one."""
    try:
        agent_id = bytes(message.body).decode() if not isinstance(message.body, str) else message.body
    except UnicodeDecodeError:
        return None
    return agent_id if agent_id and len(agent_id) <= 64 and not any(c.isspace() for c in agent_id) else None


class Watch:
    """One follower's wake-up flag: set by the watcher when a notice for its agent arrives.

    Clear it before each read and wait after it: a notice that lands during the read keeps the flag set, so
    the next wait returns at once and no wake-up is lost.
    """

    def __init__(self, agent_id: str) -> None:
        self.agent_id = agent_id
        self.event = threading.Event()

    def clear(self) -> None:
        """Call before reading the inbox."""
        self.event.clear()

    def wait(self, timeout_s: float) -> bool:
        """Block until woken (since the last clear) or timeout_s passed; True if woken."""
        return self.event.wait(timeout_s)


class InboxWatcher:
    """Per process: one connection and exclusive queue on agents.notify, fanned out to local followers.

    The consumer thread (a greenlet under gevent) exists only while somebody watches. After every
    (re)connect it wakes every follower once, since notices published while it was away are gone.
    """

    def __init__(self, broker_url: str, *, timeout_s: float = 5.0, idle_close_s: float = 30.0) -> None:
        self.broker_url = broker_url
        self.timeout_s = timeout_s
        self.idle_close_s = idle_close_s
        self._lock = threading.Lock()
        self._watches: dict[str, set[Watch]] = {}
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop = threading.Event()

    @contextmanager
    def watch(self, agent_id: str) -> Iterator[Watch]:
        """Register a follower; waits (up to timeout_s) until the queue is bound, so no later notice is missed."""
        watch = Watch(agent_id)
        with self._lock:
            self._watches.setdefault(agent_id, set()).add(watch)
            if self._thread is None or not self._thread.is_alive():
                self._ready.clear()
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="inbox-watcher", daemon=True)
                self._thread.start()
        self._ready.wait(self.timeout_s)
        try:
            yield watch
        finally:
            with self._lock:
                group = self._watches.get(agent_id)
                if group is not None:
                    group.discard(watch)
                    if not group:
                        del self._watches[agent_id]

    def _on_notice(self, message: Any) -> None:
        agent_id = decode_notice(message)
        if agent_id is None:
            return
        with self._lock:
            watches = list(self._watches.get(agent_id, ()))
        for watch in watches:
            watch.event.set()

    def _wake_all(self) -> None:
        with self._lock:
            watches = [watch for group in self._watches.values() for watch in group]
        for watch in watches:
            watch.event.set()

    def _idle(self) -> bool:
        with self._lock:
            return not self._watches

    def _run(self) -> None:
        """Consume notices until nobody has watched for idle_close_s; reconnect after broker failures."""
        failures = 0
        idle_since: float | None = None
        while not self._stop.is_set():
            conn = None
            try:
                conn = connect(self.broker_url, timeout_s=self.timeout_s)
                raw = raw_connection(conn)
                channel = raw.channel()
                declare_topology_on(channel)
                queue = channel.queue_declare(queue="", exclusive=True, auto_delete=True).queue
                channel.queue_bind(queue=queue, exchange=NOTIFY_EXCHANGE, routing_key="")
                channel.basic_consume(queue=queue, callback=self._on_notice, no_ack=True)
                failures = 0
                self._ready.set()
                self._wake_all()
                while not self._stop.is_set():
                    try:
                        raw.drain_events(timeout=1.0)
                    except TimeoutError:
                        pass
                    if not self._idle():
                        idle_since = None
                        continue
                    idle_since = idle_since or time.monotonic()
                    if time.monotonic() - idle_since >= self.idle_close_s:
                        with self._lock:
                            if not self._watches:
                                self._thread = None
                                return
            except Exception as exc:  # noqa: BLE001 - outages are waited out; followers fall back to re-reads
                failures += 1
                log.warning("inbox watcher lost its connection: %s", exc)
                self._ready.clear()
                self._wake_all()
                self._stop.wait(min(5.0, 0.2 * 2**failures))
            finally:
                if conn is not None:
                    try:
                        conn.release()
                    except Exception:  # noqa: BLE001 - closing a dead connection must not raise
                        pass

    def close(self) -> None:
        """Stop the consumer thread (tests; processes just exit)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)

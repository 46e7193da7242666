"""The mailbox process: moves queued agent messages into their inbox tables, at a cost that follows messages.

It drains an inbox with the same locked basic_get drain as SocialLayer.get_messages (coordination.inbox), so
the two never interleave; a push consumer on the inboxes would hold prefetched deliveries outside the
per-agent lock. Which inboxes have work comes from notices instead of asking every queue: after each
confirmed send, the sender publishes the receiver's id to ``agents.notify`` (coordination.notify), and the
mailbox consumes them from its durable queue ``mailbox.pending``. Each batch of notices names the inboxes to
drain (several notices of one inbox cost one drain); the notices are acked after those drains committed, so
a killed mailbox leaves them for the next one. An idle inbox costs nothing per pass.

A safety sweep covers notices that never came (a sender's connection dying right after the confirm, a
foreign publisher, a broker restart losing them): it asks the listed agents' queues for their depth (passive
queue.declare) at most ``sweep_rate`` per second, one full round at most every ``sweep_interval_s``. After
every (re)connect the first round runs unthrottled. Inboxes whose drain failed for one message (not yet
dead-lettered) are drained again after ``poll_interval_s``. It also moves ``agents.dead`` into dead_letters.

The process around it (entry points, environment, signals): coordination/mailbox_process.py.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import amqp
from sqlalchemy import Engine

from coordination.broker import BrokerSession
from coordination.deadletters import DeadLetterHook, drain_dead_letters
from coordination.inbox import AttemptTracker, StoredHook, drain_inbox
from coordination.locks import InboxLock, lock_for
from coordination.notify import decode_notice
from coordination.topology import (
    DEFAULT_MAX_ATTEMPTS,
    MAILBOX_QUEUE,
    NOTIFY_EXCHANGE,
    inbox_queue_name,
    validate_queue_type,
)

log = logging.getLogger(__name__)

AgentLister = Callable[[], Iterable[str]]
NOTICE_PREFETCH = 2000
SWEEP_CHUNK = 1000  # queues asked per pass at most, so notices keep flowing during an unthrottled round
DEAD_LETTER_INTERVAL_S = 1.0


@dataclass
class PassStats:
    """What one pass did (for tests and logs)."""

    notified: int = 0
    swept: int = 0
    drained: int = 0
    stored: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    dead_letter_rows: int = 0


@dataclass
class _Sweep:
    """One round of the safety sweep over the listed agents."""

    agents: list[str]
    started: float
    throttled: bool
    position: int = 0
    credit: float = 0.0
    clock: float = 0.0


class Mailbox:
    """Drains the inboxes named by notices, plus a throttled safety sweep and agents.dead; run() blocks."""

    def __init__(
        self,
        broker_url: str,
        engine: Engine,
        *,
        list_agent_ids: AgentLister,
        queue_type: str = "classic",
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        poll_interval_s: float = 0.2,
        sweep_interval_s: float = 60.0,
        sweep_rate: float = 100.0,
        lock: InboxLock | None = None,
        on_stored: StoredHook | None = None,
        on_dead_lettered: DeadLetterHook | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        self.broker_url = broker_url
        self.engine = engine
        self.list_agent_ids = list_agent_ids
        self.queue_type = validate_queue_type(queue_type)
        self.max_attempts = max_attempts
        self.poll_interval_s = poll_interval_s
        self.sweep_interval_s = sweep_interval_s
        self.sweep_rate = sweep_rate
        self.lock = lock or lock_for(engine)
        self.on_stored = on_stored
        self.on_dead_lettered = on_dead_lettered
        self.timeout_s = timeout_s
        self.stop_event = threading.Event()
        self._attempts = AttemptTracker()
        self._session: BrokerSession | None = None
        self._notices: Any = None
        self._pending: dict[str, None] = {}
        self._last_tag = 0
        self._acked_tag = 0
        self._retry: dict[str, float] = {}
        self._sweep: _Sweep | None = None
        self._next_sweep = 0.0
        self._next_dead_letters = 0.0
        self._thread: threading.Thread | None = None

    # -- broker session ----------------------------------------------------------------------------------

    def _ensure_session(self) -> BrokerSession:
        """Connect, bind mailbox.pending to agents.notify and consume it; a new session starts a fast sweep."""
        if self._session is None or self._session.broken:
            self._close_session()
            session = BrokerSession(self.broker_url, timeout_s=self.timeout_s, queue_type=self.queue_type)
            try:
                channel = session.connection.channel()  # not the drains' channel: delivery tags and acks differ
                channel.queue_declare(
                    queue=MAILBOX_QUEUE, durable=True, auto_delete=False, arguments={"x-queue-type": self.queue_type}
                )
                channel.queue_bind(queue=MAILBOX_QUEUE, exchange=NOTIFY_EXCHANGE, routing_key="")
                channel.basic_qos(0, NOTICE_PREFETCH, False)
                channel.basic_consume(queue=MAILBOX_QUEUE, callback=self._on_notice, no_ack=False)
            except BaseException:
                session.close()
                raise
            self._session, self._notices = session, channel
            self._pending.clear()
            self._last_tag = self._acked_tag = 0  # delivery tags are per channel
            self._sweep = None
            self._next_sweep = 0.0  # notices may have been lost while we were away
        return self._session

    def _close_session(self) -> None:
        """Close the connection; RabbitMQ requeues every notice and message taken but not acked."""
        if self._session is not None:
            self._session.close()
        self._session, self._notices = None, None

    def _on_notice(self, message: Any) -> None:
        """Remember which inbox has work; the notice is acked after that inbox was drained."""
        agent_id = decode_notice(message)
        if agent_id is not None:
            self._pending[agent_id] = None
        self._last_tag = max(self._last_tag, int(message.delivery_tag))

    def _receive(self, session: BrokerSession, wait_s: float) -> None:
        """Take the notices that arrive within wait_s (all that are buffered, if some are)."""
        timeout = max(wait_s, 0.001)
        while True:
            try:
                session.connection.connection.drain_events(timeout=timeout)
            except TimeoutError:
                return
            timeout = 0.001

    def _ready_count(self, session: BrokerSession, agent_id: str) -> int | None:
        """Ready messages in the agent's inbox, or None if the queue does not exist (agent deleted)."""
        try:
            ok = session.channel().queue_declare(queue=inbox_queue_name(agent_id), passive=True)
        except amqp.exceptions.NotFound:
            session.reset_channel()
            return None
        return int(ok.message_count)

    # -- the sweep ---------------------------------------------------------------------------------------

    def _sweep_step(self, session: BrokerSession, now: float) -> tuple[list[str], int]:
        """Ask the next slice of the sweep's agents for their depth; the non-empty ones and how many were asked."""
        if self._sweep is None:
            if now < self._next_sweep:
                return [], 0
            throttled = self._next_sweep > 0.0
            self._sweep = _Sweep(list(dict.fromkeys(self.list_agent_ids())), now, throttled, clock=now)
        sweep = self._sweep
        if sweep.throttled:
            sweep.credit = min(sweep.credit + (now - sweep.clock) * self.sweep_rate, float(SWEEP_CHUNK))
            sweep.clock = now
            count = int(sweep.credit) if sweep.position else max(1, int(sweep.credit))
        else:
            count = SWEEP_CHUNK
        chunk = sweep.agents[sweep.position:sweep.position + count]
        sweep.position += len(chunk)
        sweep.credit = max(0.0, sweep.credit - len(chunk))
        found = [agent_id for agent_id in chunk if self._ready_count(session, agent_id)]
        if sweep.position >= len(sweep.agents):
            log.log(logging.DEBUG if sweep.throttled else logging.INFO, "sweep round done: %d inboxes in %.1fs",
                    len(sweep.agents), time.monotonic() - sweep.started)
            self._sweep = None
            self._next_sweep = max(sweep.started + self.sweep_interval_s, now + 1e-3)
        return found, len(chunk)

    # -- one pass ----------------------------------------------------------------------------------------

    def run_once(self, wait_s: float = 0.0) -> PassStats:
        """Wait up to wait_s for notices, drain every inbox named, due for a retry or found by the sweep."""
        session = self._ensure_session()
        if self._sweep is not None and not self._sweep.throttled:
            wait_s = 0.0
        elif self._retry:
            wait_s = min(wait_s, max(0.0, min(self._retry.values()) - time.monotonic()))
        self._receive(session, wait_s)
        notified, last_tag = list(self._pending), self._last_tag
        self._pending.clear()
        now = time.monotonic()
        due = [agent_id for agent_id, at in self._retry.items() if at <= now]
        found, swept = self._sweep_step(session, now)
        stats = PassStats(notified=len(notified), swept=swept)
        for agent_id in dict.fromkeys([*notified, *due, *found]):
            if self.stop_event.is_set():
                break
            result = drain_inbox(
                session,
                self.engine,
                agent_id,
                lock=self.lock,
                attempts=self._attempts,
                max_attempts=self.max_attempts,
                on_stored=self.on_stored,
            )
            stats.drained += 1
            stats.stored += result.stored
            stats.duplicates += result.duplicates
            stats.dead_lettered += result.dead_lettered
            if result.failures > result.dead_lettered and not result.missing:
                self._retry[agent_id] = time.monotonic() + self.poll_interval_s
            else:
                self._retry.pop(agent_id, None)
        else:
            if last_tag > self._acked_tag and self._notices is not None:
                self._notices.basic_ack(last_tag, multiple=True)  # every notice up to it was drained
                self._acked_tag = last_tag
        if stats.dead_lettered or time.monotonic() >= self._next_dead_letters:
            stats.dead_letter_rows = drain_dead_letters(session, self.engine, on_dead_lettered=self.on_dead_lettered)
            self._next_dead_letters = time.monotonic() + DEAD_LETTER_INTERVAL_S
        return stats

    # -- the loop ----------------------------------------------------------------------------------------

    def run(self) -> None:
        """Pass after pass until stop_event is set; broker and database outages are waited out, never fatal."""
        failures = 0
        log.info("mailbox started (notices on %s, sweep %.0f queues/s)", MAILBOX_QUEUE, self.sweep_rate)
        try:
            while not self.stop_event.is_set():
                try:
                    self.run_once(wait_s=self.poll_interval_s)
                    failures = 0
                except Exception as exc:  # noqa: BLE001 - the loop outlives broker, DB and hook failures
                    failures += 1
                    delay = min(5.0, 0.2 * 2**failures)
                    log.warning("mailbox pass failed (%s); retrying in %.1fs", exc, delay)
                    self._close_session()
                    self.stop_event.wait(delay)
        finally:
            self._close_session()
            log.info("mailbox stopped")

    def start(self) -> threading.Thread:
        """Run in a daemon thread (in-process use: tests, a single-process deployment)."""
        self.stop_event.clear()
        self._thread = threading.Thread(target=self.run, name="coordination-mailbox", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the loop to finish its current drain and wait for the thread."""
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None


if __name__ == "__main__":  # `python -m coordination.mailbox` keeps working
    from coordination.mailbox_process import main

    main()

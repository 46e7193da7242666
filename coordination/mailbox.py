"""The mailbox process: moves every agent's queued messages into its inbox table in the background.

It drains each inbox with the same locked basic_get drain as SocialLayer.get_messages (coordination.inbox),
so the two never interleave: a push consumer (basic.consume) would hold prefetched deliveries outside the
per-agent lock, and a concurrent get_messages would then store later messages first. Instead the mailbox
polls: every ``poll_interval_s`` it asks each known inbox for its ready count (passive queue.declare, one
cheap round trip) and drains the non-empty ones. Which agents exist comes from ``list_agent_ids()``,
re-read every ``refresh_interval_s`` and at once when an ``agent.created`` / ``agent.deleted`` event is
published on the events exchange. It also moves ``agents.dead`` into the dead_letters table.

Run it as ``python -m coordination.mailbox``; environment:

- BROKER_URL (amqp://guest:guest@127.0.0.1:5672//), DATABASE_URL (sqlite:///instance/app.db)
- QUEUE_TYPE (classic | quorum; validated, the mailbox never declares inboxes)
- MAILBOX_MAX_ATTEMPTS (5): failed stores of one message before it is dead-lettered
- MAILBOX_POLL_INTERVAL (0.2 s), MAILBOX_REFRESH_INTERVAL (2 s)
- RABBITMQ_MANAGEMENT_URL (http://guest:guest@127.0.0.1:15672): lists the vhost's ``agent.*.inbox``
  queues when no lister is configured
- MAILBOX_HOOKS (optional ``module:callable``): returns extra run_mailbox keyword arguments, e.g.
  ``list_agent_ids``, ``on_stored``, ``on_dead_lettered``; how the app plugs in without an import here.

SIGTERM or SIGINT stops it after the drain in progress has committed and acked.
"""

from __future__ import annotations

import base64
import importlib
import json
import logging
import os
import re
import signal
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import amqp
from kombu import Connection
from sqlalchemy import Engine, create_engine

from coordination.broker import BrokerSession
from coordination.deadletters import DeadLetterHook, drain_dead_letters
from coordination.inbox import AttemptTracker, StoredHook, drain_inbox
from coordination.locks import InboxLock, lock_for
from coordination.topology import DEFAULT_MAX_ATTEMPTS, EVENTS_EXCHANGE, inbox_queue_name, validate_queue_type

log = logging.getLogger(__name__)

AgentLister = Callable[[], Iterable[str]]
WAKE_EVENTS = ("agent.created", "agent.deleted")
_INBOX_RE = re.compile(r"agent\.(.+)\.inbox")


@dataclass
class PassStats:
    """What one polling pass did (for tests and logs)."""

    agents: int = 0
    stored: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    dead_letter_rows: int = 0


class Mailbox:
    """The polling drainer of every listed agent inbox plus agents.dead; run() blocks, start() threads."""

    def __init__(
        self,
        broker_url: str,
        engine: Engine,
        *,
        list_agent_ids: AgentLister,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        poll_interval_s: float = 0.2,
        refresh_interval_s: float = 2.0,
        lock: InboxLock | None = None,
        on_stored: StoredHook | None = None,
        on_dead_lettered: DeadLetterHook | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        self.broker_url = broker_url
        self.engine = engine
        self.list_agent_ids = list_agent_ids
        self.max_attempts = max_attempts
        self.poll_interval_s = poll_interval_s
        self.refresh_interval_s = refresh_interval_s
        self.lock = lock or lock_for(engine)
        self.on_stored = on_stored
        self.on_dead_lettered = on_dead_lettered
        self.timeout_s = timeout_s
        self.stop_event = threading.Event()
        self._attempts = AttemptTracker()
        self._session: BrokerSession | None = None
        self._wake_queue: str | None = None
        self._agents: list[str] = []
        self._next_refresh = 0.0
        self._thread: threading.Thread | None = None

    # -- one pass --------------------------------------------------------------------------------------

    def _ensure_session(self) -> BrokerSession:
        """Connect (and bind the wake-up queue) if there is no live session."""
        if self._session is None or self._session.broken:
            self._close_session()
            session = BrokerSession(self.broker_url, timeout_s=self.timeout_s)
            channel = session.channel()
            declared = channel.queue_declare(queue="", exclusive=True, auto_delete=True)
            for event_type in WAKE_EVENTS:
                channel.queue_bind(queue=declared.queue, exchange=EVENTS_EXCHANGE, routing_key=event_type)
            self._session, self._wake_queue = session, declared.queue
            self._next_refresh = 0.0
        return self._session

    def _close_session(self) -> None:
        """Close the connection; RabbitMQ requeues anything taken but not acked."""
        if self._session is not None:
            self._session.close()
        self._session, self._wake_queue = None, None

    def _woken(self, session: BrokerSession) -> bool:
        """True if an agent.created/deleted event arrived since the last pass."""
        woken = False
        while self._wake_queue and session.channel().basic_get(queue=self._wake_queue, no_ack=True):
            woken = True
        return woken

    def _ready_count(self, session: BrokerSession, agent_id: str) -> int | None:
        """Ready messages in the agent's inbox, or None if the queue does not exist (agent deleted)."""
        try:
            ok = session.channel().queue_declare(queue=inbox_queue_name(agent_id), passive=True)
        except amqp.exceptions.NotFound:
            session.reset_channel()
            return None
        return int(ok.message_count)

    def run_once(self) -> PassStats:
        """Refresh the agent list if due, drain every non-empty inbox, then agents.dead."""
        session = self._ensure_session()
        if self._woken(session) or time.monotonic() >= self._next_refresh:
            self._agents = list(dict.fromkeys(self.list_agent_ids()))
            self._next_refresh = time.monotonic() + self.refresh_interval_s
        stats = PassStats(agents=len(self._agents))
        for agent_id in self._agents:
            if self.stop_event.is_set():
                break
            if not self._ready_count(session, agent_id):
                continue
            result = drain_inbox(
                session,
                self.engine,
                agent_id,
                lock=self.lock,
                attempts=self._attempts,
                max_attempts=self.max_attempts,
                on_stored=self.on_stored,
            )
            stats.stored += result.stored
            stats.duplicates += result.duplicates
            stats.dead_lettered += result.dead_lettered
        stats.dead_letter_rows = drain_dead_letters(session, self.engine, on_dead_lettered=self.on_dead_lettered)
        return stats

    # -- the loop --------------------------------------------------------------------------------------

    def run(self) -> None:
        """Poll until stop_event is set; broker and database outages are waited out, never fatal."""
        failures = 0
        log.info("mailbox started (poll every %.2fs)", self.poll_interval_s)
        try:
            while not self.stop_event.is_set():
                try:
                    self.run_once()
                    failures = 0
                    delay = self.poll_interval_s
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


def management_agent_lister(broker_url: str, management_url: str) -> AgentLister:
    """Agents = the vhost's agent.<id>.inbox queues, read from the RabbitMQ management API."""
    vhost = Connection(broker_url).virtual_host or "/"
    parts = urlsplit(management_url)
    base = f"{parts.scheme}://{parts.hostname}:{parts.port or 15672}{parts.path.rstrip('/')}"
    user, password = unquote(parts.username or "guest"), unquote(parts.password or "guest")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    url = f"{base}/api/queues/{quote(vhost, safe='')}?columns=name"

    def list_agent_ids() -> list[str]:
        """Names of the inbox queues that exist right now."""
        req = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - configured http(s) URL
            queues = json.load(resp)
        return [m.group(1) for q in queues if (m := _INBOX_RE.fullmatch(q["name"]))]

    return list_agent_ids


def run_mailbox(
    broker_url: str,
    database_url: str,
    *,
    list_agent_ids: AgentLister | None = None,
    management_url: str = "http://guest:guest@127.0.0.1:15672",
    queue_type: str = "classic",
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    poll_interval_s: float = 0.2,
    refresh_interval_s: float = 2.0,
    on_stored: StoredHook | None = None,
    on_dead_lettered: DeadLetterHook | None = None,
    engine: Engine | None = None,
    handle_signals: bool = True,
) -> None:
    """Build the engine and mailbox from URLs and run until SIGTERM/SIGINT (blocking)."""
    validate_queue_type(queue_type)
    own_engine = engine is None
    engine = engine or create_engine(database_url, pool_pre_ping=True)
    mailbox = Mailbox(
        broker_url,
        engine,
        list_agent_ids=list_agent_ids or management_agent_lister(broker_url, management_url),
        max_attempts=max_attempts,
        poll_interval_s=poll_interval_s,
        refresh_interval_s=refresh_interval_s,
        on_stored=on_stored,
        on_dead_lettered=on_dead_lettered,
    )
    if handle_signals and threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: mailbox.stop_event.set())
    try:
        mailbox.run()
    finally:
        if own_engine:
            engine.dispose()


def _load_hooks(spec: str) -> dict[str, Any]:
    """MAILBOX_HOOKS=module:callable -> the keyword arguments it returns."""
    module_name, _, attr = spec.partition(":")
    factory = getattr(importlib.import_module(module_name), attr)
    return dict(factory())


def main() -> None:
    """Entry point of `python -m coordination.mailbox` (the Procfile's mailbox process)."""
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    hooks = _load_hooks(os.environ["MAILBOX_HOOKS"]) if os.environ.get("MAILBOX_HOOKS") else {}
    run_mailbox(
        os.environ.get("BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"),
        os.environ.get("DATABASE_URL", "sqlite:///instance/app.db"),
        management_url=os.environ.get("RABBITMQ_MANAGEMENT_URL", "http://guest:guest@127.0.0.1:15672"),
        queue_type=os.environ.get("QUEUE_TYPE", "classic"),
        max_attempts=int(os.environ.get("MAILBOX_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS)),
        poll_interval_s=float(os.environ.get("MAILBOX_POLL_INTERVAL", "0.2")),
        refresh_interval_s=float(os.environ.get("MAILBOX_REFRESH_INTERVAL", "2.0")),
        **hooks,
    )


if __name__ == "__main__":
    main()

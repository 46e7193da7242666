"""The mailbox as a process: `flask --app wsgi mailbox run` or `python -m coordination.mailbox`.

Start it with ``flask --app wsgi mailbox run`` (the Procfile's mailbox: the app's database, live agents and
audit hooks), or bare as ``python -m coordination.mailbox``; environment:

- BROKER_URL (amqp://guest:guest@127.0.0.1:5672//), DATABASE_URL (the app's default,
  sqlite:///<project>/instance/agent_runtime.db)
- QUEUE_TYPE (classic | quorum): also the type of ``mailbox.pending``
- MAILBOX_MAX_ATTEMPTS (5): failed stores of one message before it is dead-lettered
- MAILBOX_POLL_INTERVAL (0.2 s): longest wait for notices in one pass; retry delay of failed drains
- MAILBOX_SWEEP_INTERVAL (60 s), MAILBOX_SWEEP_RATE (100 queues/s): the safety sweep
- RABBITMQ_MANAGEMENT_URL (http://guest:guest@127.0.0.1:15672): lists the vhost's ``agent.*.inbox``
  queues for the sweep when no lister is configured
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
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from kombu import Connection
from sqlalchemy import Engine, create_engine

from coordination.deadletters import DeadLetterHook
from coordination.inbox import StoredHook
from coordination.mailbox import AgentLister, Mailbox
from coordination.topology import DEFAULT_MAX_ATTEMPTS

log = logging.getLogger(__name__)

# The app's default database (app/config.py), so a bare mailbox and the app agree without configuration.
DEFAULT_DATABASE_URL = f"sqlite:///{Path(__file__).resolve().parent.parent / 'instance' / 'agent_runtime.db'}"
INBOX_RE = re.compile(r"agent\.(.+)\.inbox")


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
        return [m.group(1) for q in queues if (m := INBOX_RE.fullmatch(q["name"]))]

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
    sweep_interval_s: float = 60.0,
    sweep_rate: float = 100.0,
    on_stored: StoredHook | None = None,
    on_dead_lettered: DeadLetterHook | None = None,
    engine: Engine | None = None,
    handle_signals: bool = True,
) -> None:
    """Build the engine and mailbox from URLs and run until SIGTERM/SIGINT (blocking)."""
    own_engine = engine is None
    engine = engine or create_engine(database_url, pool_pre_ping=True)
    mailbox = Mailbox(
        broker_url,
        engine,
        list_agent_ids=list_agent_ids or management_agent_lister(broker_url, management_url),
        queue_type=queue_type,
        max_attempts=max_attempts,
        poll_interval_s=poll_interval_s,
        sweep_interval_s=sweep_interval_s,
        sweep_rate=sweep_rate,
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
        os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL),
        management_url=os.environ.get("RABBITMQ_MANAGEMENT_URL", "http://guest:guest@127.0.0.1:15672"),
        queue_type=os.environ.get("QUEUE_TYPE", "classic"),
        max_attempts=int(os.environ.get("MAILBOX_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS)),
        poll_interval_s=float(os.environ.get("MAILBOX_POLL_INTERVAL", "0.2")),
        sweep_interval_s=float(os.environ.get("MAILBOX_SWEEP_INTERVAL", "60")),
        sweep_rate=float(os.environ.get("MAILBOX_SWEEP_RATE", "100")),
        **hooks,
    )


if __name__ == "__main__":
    main()

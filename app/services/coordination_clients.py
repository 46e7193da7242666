"""One SocialLayer and one EventBus per app and process, built on first use, plus the store hooks both drainers share.

Built lazily (not in create_app) so the CLI, migrations and the OpenAPI build never touch the broker, and
re-built after a fork (gunicorn, prefork Celery): broker connections must never cross a fork.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app
from sqlalchemy import Connection, Engine, select, update

from app.extensions import db
from app.metrics import INBOX_LAG, MESSAGES
from app.models import Agent
from app.services import audit
from app.timeutil import utcnow
from coordination.events import EventBus
from coordination.forksafe import ForkSafeLock
from coordination.notify import InboxWatcher
from coordination.social import SocialLayer

log = logging.getLogger(__name__)

EXTENSION = "coordination_clients"
STORE_ACTOR = "inbox"
_build_lock = ForkSafeLock()


@dataclass
class Clients:
    """The process's broker clients for one app (tests run several apps on different vhosts)."""

    social: SocialLayer
    bus: EventBus
    watcher: InboxWatcher
    pid: int

    def close(self) -> None:
        """Close pooled broker connections and the inbox watcher."""
        self.social.close()
        self.bus.close()
        self.watcher.close()


def on_stored(conn: Connection, row: dict[str, Any]) -> None:
    """Runs inside the store transaction: the `message.stored` audit row commits with the inbox row."""
    workspace_id = row.get("workspace_id")
    if workspace_id:
        audit.record(
            conn=conn,
            workspace_id=workspace_id,
            actor=STORE_ACTOR,
            agent_id=row["to_agent_id"],
            action="message.stored",
            details={
                "message_id": row["message_id"],
                "seq": row["seq"],
                "from_agent_id": row["from_agent_id"],
                "correlation_id": row.get("correlation_id"),
                "hop": row.get("hop", 0),
            },
        )
    MESSAGES.labels("stored").inc()
    INBOX_LAG.observe(max(0.0, (row["delivered_at"] - row["sent_at"]).total_seconds()))


def on_dead_lettered(conn: Connection, row: dict[str, Any]) -> None:
    """Runs inside the dead-letter store transaction: a poison message leaves an audit trail."""
    workspace_id = row.get("workspace_id")
    if workspace_id:
        audit.record(
            conn=conn,
            workspace_id=workspace_id,
            actor=STORE_ACTOR,
            agent_id=row.get("to_agent_id"),
            action="message.dead_lettered",
            result="error",
            details={"message_id": row.get("message_id"), "from_agent_id": row.get("from_agent_id"),
                     "reason": row.get("reason")},
        )
    MESSAGES.labels("dead_lettered").inc()


def live_agent_ids(engine: Engine) -> list[str]:
    """Every non-deleted agent whose inbox queue was declared: the inboxes the mailbox's sweep asks."""
    query = select(Agent.id).where(Agent.deleted_at.is_(None), Agent.inbox_declared_at.is_not(None))
    with engine.connect() as conn:
        return list(conn.execute(query).scalars())


def claim_inboxes(engine: Engine, agent_ids: list[str]) -> list[str]:
    """The live agents among `agent_ids`, each marked as having its inbox queue declared (committed before the
    caller declares and publishes, so the sweep and readers know of the queue before any message is in it)."""
    table = Agent.__table__
    live = (table.c.id.in_(agent_ids)) & (table.c.deleted_at.is_(None))
    with engine.begin() as conn:
        conn.execute(update(table).where(live, table.c.inbox_declared_at.is_(None)).values(inbox_declared_at=utcnow()))
        return list(conn.execute(select(table.c.id).where(live)).scalars())


def _build(app: Flask) -> Clients:
    config = app.config
    timeout_s = float(config["CONFIRM_TIMEOUT_S"])
    social = SocialLayer(
        config["BROKER_URL"],
        db.engine,
        queue_type=config["QUEUE_TYPE"],
        confirm_timeout_s=timeout_s,
        max_hops=int(config["MAX_HOPS"]),
        max_attempts=int(config["MAILBOX_MAX_ATTEMPTS"]),
        on_stored=on_stored,
        inbox_owner=lambda agent_ids: claim_inboxes(db.engine, agent_ids),
    )
    return Clients(
        social=social,
        bus=EventBus(config["BROKER_URL"], confirm_timeout_s=timeout_s, queue_type=config["QUEUE_TYPE"]),
        watcher=InboxWatcher(config["BROKER_URL"], timeout_s=timeout_s),
        pid=os.getpid(),
    )


def clients() -> Clients:
    """This app's clients in this process, built on first use (needs an app context)."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    existing: Clients | None = app.extensions.get(EXTENSION)
    if existing is not None and existing.pid == os.getpid():
        return existing
    with _build_lock:
        existing = app.extensions.get(EXTENSION)
        if existing is None or existing.pid != os.getpid():
            existing = app.extensions[EXTENSION] = _build(app)
        return existing


def social() -> SocialLayer:
    """The app's SocialLayer (agent messaging)."""
    return clients().social


def bus() -> EventBus:
    """The app's EventBus (topic exchange `events`)."""
    return clients().bus


def watcher() -> InboxWatcher:
    """The app's inbox watcher: wakes inbox-stream followers of this process when a message is sent."""
    return clients().watcher

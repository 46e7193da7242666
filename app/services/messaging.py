"""Agent messaging for the API and the workers: tenancy, confirmed sends with audit rows, inbox reads and streams."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select

from app.extensions import db
from app.logs import log_context
from app.metrics import MESSAGES, PUBLISH_CONFIRM
from app.models import Agent
from app.services import agents, audit
from app.services.auth import Principal
from app.services.coordination_clients import social, watcher
from app.services.errors import Conflict, Unavailable, ValidationFailed
from app.services.events import check_size
from coordination import schema
from coordination.deadletters import list_dead_letters
from coordination.errors import CoordinationError, DeliveryError, HopLimitExceeded
from coordination.social import SocialLayer

log = logging.getLogger(__name__)

MAX_READ_LIMIT = 1000
STREAM_RECHECK_S = 5.0  # a follower re-reads this often even without a notice (one lost with a connection)


@dataclass(frozen=True)
class MessageRequest:
    """A validated POST /agents/{id}/messages body."""

    to_agent_id: str
    message: Any
    correlation_id: str | None = None
    message_id: str | None = None
    execute: bool = False


def receiver_of(principal: Principal, from_agent_id: str, to_agent_id: str) -> tuple[Agent, Agent]:
    """Both agents must exist, be live and belong to the caller's workspace (404 otherwise)."""
    return agents.get(principal, from_agent_id), agents.get(principal, to_agent_id)


def _check_reuse(principal: Principal, sender: Agent, receiver: Agent, message_id: str | None) -> None:
    """A client's message_id is global in the inbox: reusing one for another message would drop it (409)."""
    if message_id is None:
        return
    table = schema.inbox_messages
    row = db.session.execute(
        select(table.c.workspace_id, table.c.from_agent_id, table.c.to_agent_id).where(table.c.message_id == message_id)
    ).first()
    if row is not None and (row.workspace_id, row.from_agent_id, row.to_agent_id) != (
        principal.workspace_id, sender.id, receiver.id,
    ):
        raise Conflict("message_id is already used by another message", {"message_id": message_id})


def deliver(
    *,
    workspace_id: str,
    actor: str,
    from_agent_id: str,
    to_agent_id: str,
    message: Any,
    correlation_id: str | None = None,
    message_id: str | None = None,
    hop: int = 0,
    execution_id: str | None = None,
) -> dict[str, Any]:
    """Publish and wait for the confirm (503 otherwise), then audit `message.sent` in the workspace chain."""
    db.session.commit()  # hold no transaction (SQLite: no write lock) while waiting for the broker
    started = time.perf_counter()
    try:
        sent = social().send_message(
            from_agent_id=from_agent_id,
            to_agent_id=to_agent_id,
            message=message,
            correlation_id=correlation_id,
            message_id=message_id,
            workspace_id=workspace_id,
            hop=hop,
        )
    except HopLimitExceeded as exc:
        raise ValidationFailed(str(exc), {"hop": hop}) from exc
    except DeliveryError as exc:
        log.warning("message %s not confirmed: %s", exc.message_id, exc, extra={"message_id": exc.message_id})
        raise Unavailable(
            "the message could not be confirmed by the broker; retry with the same message_id",
            {"dependency": "broker", "reason": type(exc).__name__, "message_id": exc.message_id},
        ) from exc
    except ValueError as exc:
        raise ValidationFailed(str(exc)) from exc
    PUBLISH_CONFIRM.labels("message").observe(time.perf_counter() - started)
    MESSAGES.labels("sent").inc()
    with log_context(message_id=sent["message_id"]):
        audit.record(
            workspace_id=workspace_id,
            actor=actor,
            agent_id=from_agent_id,
            execution_id=execution_id,
            action="message.sent",
            details={"message_id": sent["message_id"], "to_agent_id": to_agent_id,
                     "correlation_id": correlation_id, "hop": hop},
        )
        db.session.commit()
        log.info("message sent to %s (hop %d)", to_agent_id, hop)
    return sent


def send(principal: Principal, from_agent_id: str, request: MessageRequest) -> tuple[Agent, dict[str, Any]]:
    """Tenancy, size and reuse checks, then a confirmed send at hop 0; returns the receiver and {message_id, status}."""
    sender, receiver = receiver_of(principal, from_agent_id, request.to_agent_id)
    check_size(request.message, "message")
    _check_reuse(principal, sender, receiver, request.message_id)
    sent = deliver(
        workspace_id=principal.workspace_id,
        actor=principal.actor,
        from_agent_id=sender.id,
        to_agent_id=receiver.id,
        message=request.message,
        correlation_id=request.correlation_id,
        message_id=request.message_id,
    )
    return receiver, sent


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_READ_LIMIT:
        raise ValidationFailed(f"limit must be between 1 and {MAX_READ_LIMIT}", {"limit": limit})


def _inbox(layer: SocialLayer, agent_id: str, after: int, limit: int, drain: bool) -> list[dict[str, Any]]:
    try:
        return layer.get_messages(agent_id=agent_id, after=after, limit=limit, drain=drain)
    except CoordinationError as exc:
        raise Unavailable("the inbox cannot be drained: the broker is unavailable", {"dependency": "broker"}) from exc


def read(principal: Principal, agent_id: str, *, after: int = 0, limit: int = 100) -> dict[str, Any]:
    """FIFO page of the inbox after `after`; drains the queue first, so every confirmed send is included."""
    _check_limit(limit)
    agent = agents.get(principal, agent_id)
    target, has_queue = agent.id, agent.inbox_declared_at is not None  # no queue until a first send declares it
    db.session.commit()  # the drain takes the inbox lock on another connection (SQLite: the write lock)
    messages = _inbox(social(), target, after, limit, drain=has_queue)
    return {"messages": messages, "next_after": messages[-1]["seq"] if messages else after}


def follow(principal: Principal, agent_id: str, *, after: int, poll_s: float) -> Iterator[dict[str, Any] | None]:
    """Inbox rows after `after`, then live ones as they are sent; None after each quiet `poll_s` (for heartbeats).

    A follower wakes on the sender's notice (coordination.notify, one watcher per process), then drains and
    reads; while nothing is sent it touches neither the broker nor the database, except for a re-read every
    STREAM_RECHECK_S in case a notice was lost. Checks tenancy now and then needs neither the request nor the
    session (it runs after the response starts).
    """
    agent = agents.get(principal, agent_id)
    target, declared = agent.id, agent.inbox_declared_at is not None
    db.session.commit()  # read before: a commit expires the row, and a refresh would open a transaction again
    layer = social()
    inbox_watcher = watcher()
    engine = db.engine

    def rows() -> Iterator[dict[str, Any] | None]:
        has_queue = declared
        with inbox_watcher.watch(target) as watch:  # bound before the first read: no notice falls in between
            position = after
            while True:
                watch.clear()
                has_queue = has_queue or _inbox_declared(engine, target)  # until a first send, nothing to drain
                try:
                    batch = layer.get_messages(agent_id=target, after=position, limit=100, drain=has_queue)
                except CoordinationError:  # broker blip: serve what is stored, drain again on the next wake
                    batch = layer.get_messages(agent_id=target, after=position, limit=100, drain=False)
                yield from batch
                if batch:
                    position = batch[-1]["seq"]
                if len(batch) == 100:
                    continue
                quiet_since = time.monotonic()
                while not watch.wait(poll_s):
                    yield None
                    if time.monotonic() - quiet_since >= STREAM_RECHECK_S:
                        break

    return rows()


def _inbox_declared(engine: Engine, agent_id: str) -> bool:
    """Whether a send declared the agent's inbox queue yet (agents.inbox_declared_at, set before it exists)."""
    with engine.connect() as conn:
        return conn.execute(select(Agent.inbox_declared_at).where(Agent.id == agent_id)).scalar() is not None


def dead_letters(principal: Principal, agent_id: str, *, limit: int = 100) -> list[dict[str, Any]]:
    """Dead-lettered messages addressed to one of the workspace's agents, newest first."""
    _check_limit(limit)
    target = agents.get(principal, agent_id).id
    db.session.commit()  # the listing reads on another connection (SQLite: our open transaction holds the lock)
    rows = list_dead_letters(db.engine, to_agent_id=target, limit=limit)
    return [
        {key: row[key] for key in ("id", "message_id", "from_agent_id", "to_agent_id", "body", "reason",
                                   "dead_lettered_at")}
        for row in rows
        if row["workspace_id"] in (None, principal.workspace_id)
    ]

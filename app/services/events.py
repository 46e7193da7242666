"""Workspace-scoped events on the `events` topic exchange: publish, listen, and agent lifecycle announcements.

A workspace's event `<type>` travels with routing key `ws.<workspace_id>.<type>` and a subscription's pattern
`<p>` binds as `ws.<workspace_id>.<p>`, so no pattern a client can send reaches another workspace's events.
Unprefixed keys are reserved for system events; clients cannot publish or bind them.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from app.extensions import db
from app.metrics import PUBLISH_CONFIRM
from app.models import Agent
from app.services import audit
from app.services.auth import Principal
from app.services.coordination_clients import bus
from app.services.errors import ServiceError, Unavailable, ValidationFailed
from coordination.errors import CoordinationError, DeliveryError
from coordination.events import EventListener, validate_event_type, validate_pattern

log = logging.getLogger(__name__)

SCOPE = "ws"
MAX_EVENT_BYTES = 256 * 1024


class PayloadTooLarge(ServiceError):
    status = 413
    code = "payload_too_large"


def scoped(workspace_id: str, name: str) -> str:
    """The routing key (or binding pattern) of a workspace's event type (or pattern)."""
    return f"{SCOPE}.{workspace_id}.{name}"


def unscoped(workspace_id: str, routing_key: str) -> str:
    """The event type a client published, from the routing key it travelled with."""
    prefix = scoped(workspace_id, "")
    return routing_key[len(prefix):] if routing_key.startswith(prefix) else routing_key


def check_size(value: Any, what: str) -> None:
    """Messages and event data are capped at 256 KiB of serialized JSON."""
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_EVENT_BYTES:
        raise PayloadTooLarge(f"{what} is {size} bytes serialized; the limit is {MAX_EVENT_BYTES}",
                              {"limit": MAX_EVENT_BYTES, "size": size})


def publish(principal: Principal, event_type: str, data: Any) -> str:
    """Publish with a confirm (503 otherwise), then audit `event.published`; returns the event_id."""
    try:
        validate_event_type(event_type)
    except ValueError as exc:
        raise ValidationFailed(str(exc), {"event_type": event_type}) from exc
    check_size(data, "data")
    db.session.commit()  # hold no transaction (SQLite: no write lock) while waiting for the broker
    started = time.perf_counter()
    try:
        event_id = bus().publish(event_type=scoped(principal.workspace_id, event_type), data=data)
    except DeliveryError as exc:
        raise Unavailable("the event could not be confirmed by the broker; retry later",
                          {"dependency": "broker", "reason": type(exc).__name__}) from exc
    PUBLISH_CONFIRM.labels("event").observe(time.perf_counter() - started)
    audit.record(workspace_id=principal.workspace_id, actor=principal.actor, action="event.published",
                 details={"event_id": event_id, "event_type": event_type})
    db.session.commit()
    return event_id


def listen(principal: Principal, pattern: str, *, idle_s: float) -> EventListener:
    """A listener bound to the workspace's pattern before this returns (events after it are all delivered)."""
    try:
        validate_pattern(pattern)
    except ValueError as exc:
        raise ValidationFailed(str(exc), {"pattern": pattern}) from exc
    db.session.commit()
    try:
        return bus().listen(scoped(principal.workspace_id, pattern), timeout=idle_s)
    except CoordinationError as exc:
        raise Unavailable("cannot subscribe: the broker is unavailable", {"dependency": "broker"}) from exc


def public_event(workspace_id: str, event: dict[str, Any]) -> dict[str, Any]:
    """The client's view of an event: its own event_type, without the workspace scope."""
    return {
        "event_id": event.get("event_id"),
        "event_type": unscoped(workspace_id, str(event.get("event_type", ""))),
        "data": event.get("data"),
        "published_at": event.get("published_at"),
    }


def announce_agent(agent: Agent, kind: str) -> None:
    """Best effort after commit: tell the workspace's subscribers (the mailbox needs no event: sends notify it)."""
    data = {"agent_id": agent.id, "name": agent.name}
    try:
        bus().publish(event_type=scoped(agent.workspace_id, f"agent.{kind}"), data=data)
    except Exception as exc:  # noqa: BLE001 - an announcement is not worth failing the request
        log.warning("could not announce agent.%s for %s: %s", kind, agent.id, exc, extra={"agent_id": agent.id})

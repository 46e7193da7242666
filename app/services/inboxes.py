"""Each agent's inbox queue: declared by the first send to the agent (coordination.social), deleted with it."""

from __future__ import annotations

import logging

from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy import select

from app.extensions import db
from app.models import Agent
from app.services import coordination_clients
from app.services.errors import Unavailable
from coordination import broker, topology
from coordination.errors import DeliveryError

log = logging.getLogger(__name__)

BROKER_ERRORS: tuple[type[BaseException], ...] = (
    KombuOperationalError, OSError, ConnectionError, *broker.CONNECTION_ERRORS, *broker.CHANNEL_ERRORS,
)

INBOX_ERRORS: tuple[type[BaseException], ...] = (DeliveryError, *BROKER_ERRORS)


def declare_undeclared(*, chunk: int = 1000) -> int:
    """Declare the inbox of every live agent that has none yet (`flask agents declare-inboxes`): for operators
    whose foreign publishers send to agents.direct directly. Returns how many were declared."""
    table = Agent.__table__
    undeclared = select(table.c.id).where(table.c.deleted_at.is_(None), table.c.inbox_declared_at.is_(None))
    declared, last = 0, ""
    while True:
        page = undeclared.where(table.c.id > last).order_by(table.c.id).limit(chunk)
        ids = list(db.session.execute(page).scalars())
        db.session.commit()
        if not ids:
            return declared
        try:
            coordination_clients.social().declare_inboxes(ids)
        except INBOX_ERRORS as exc:
            raise Unavailable("message broker unavailable", {"dependency": "broker"}) from exc
        declared, last = declared + len(ids), ids[-1]


def delete(agent_id: str) -> None:
    """Best effort after the delete commits: a leftover queue is harmless, sends to a deleted agent are 404."""
    try:
        with coordination_clients.social().pool.session() as session:
            session.channel().queue_delete(topology.inbox_queue_name(agent_id))
    except BROKER_ERRORS:
        log.warning("could not delete the inbox of agent %s; it stays until the next delete", agent_id,
                    extra={"agent_id": agent_id})

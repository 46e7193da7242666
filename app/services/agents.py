"""Agent registry: create, read, update and soft-delete agents inside one workspace."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, insert, select

from app.extensions import db
from app.llm import DEFAULT_PROVIDER
from app.models import Agent
from app.models.types import new_id
from app.services import audit, events, inboxes
from app.services.auth import Principal
from app.services.errors import NotFound
from app.services.pagination import newest_first
from app.services.tools.registration import prepare_tools
from app.timeutil import iso, utcnow


def serialize(agent: Agent) -> dict[str, Any]:
    return {
        "id": agent.id,
        "name": agent.name,
        "maturity_level": agent.maturity_level,
        "confidence_score": agent.confidence_score,
        "status": agent.status,
        "system_prompt": agent.system_prompt,
        "llm": agent.llm or {"provider": DEFAULT_PROVIDER},
        "auto_reply": agent.auto_reply,
        "tools": agent.tools or [],
        "created_at": iso(agent.created_at),
        "updated_at": iso(agent.updated_at),
    }


def get(principal: Principal, agent_id: str) -> Agent:
    """Another workspace's agent is indistinguishable from a missing one."""
    agent = db.session.get(Agent, agent_id)
    if agent is None or agent.workspace_id != principal.workspace_id or agent.deleted_at is not None:
        raise NotFound(f"agent {agent_id} not found", {"agent_id": agent_id})
    return agent


@dataclass(frozen=True)
class RunSettings:
    """What starting an execution reads of its agent (governance, the LLM config check, admission)."""

    id: str
    status: str
    maturity_level: str
    llm: dict[str, Any] | None
    system_prompt: str | None


# Built once per process, on the table (Core: no ORM object, identity map or loading step on POST /execute).
_AGENTS = Agent.__table__
_RUN_SETTINGS = select(_AGENTS.c.id, _AGENTS.c.status, _AGENTS.c.maturity_level, _AGENTS.c.llm,
                       _AGENTS.c.system_prompt).where(_AGENTS.c.id == bindparam("agent_id"),
                                                      _AGENTS.c.workspace_id == bindparam("workspace_id"),
                                                      _AGENTS.c.deleted_at.is_(None))


def run_settings(principal: Principal, agent_id: str) -> RunSettings:
    """The agent's run settings, with `get`'s answer for another workspace's or a deleted agent (404)."""
    row = db.session.execute(_RUN_SETTINGS, {"agent_id": agent_id,
                                             "workspace_id": principal.workspace_id}).one_or_none()
    if row is None:
        raise NotFound(f"agent {agent_id} not found", {"agent_id": agent_id})
    return RunSettings(row.id, row.status, row.maturity_level, row.llm, row.system_prompt)


_INSERT_AGENTS = insert(_AGENTS)


def _new_row(workspace_id: str, fields: dict[str, Any]) -> dict[str, Any]:
    """Every column of a new agent, its model defaults filled in here (a Core insert applies no ORM defaults)."""
    now = utcnow()
    row: dict[str, Any] = {"id": new_id(), "workspace_id": workspace_id, "created_at": now, "updated_at": now}
    for column in Agent.__table__.columns:
        if column.name not in row and column.default is not None and column.default.is_scalar:
            row[column.name] = column.default.arg
    return {"llm": {}, "system_prompt": None, "deleted_at": None, "inbox_declared_at": None, **row, **fields}


def _insert(principal: Principal, rows: list[dict[str, Any]]) -> None:
    """Insert agent rows and their `agent.created` audit rows (Core, no ORM flush) in the current transaction."""
    # One row as a plain execute: psycopg runs an executemany in pipeline mode, which costs more for a single row.
    db.session.execute(_INSERT_AGENTS, rows[0] if len(rows) == 1 else rows)
    audit.record_many([
        audit.Entry(principal.workspace_id, principal.actor, "agent.created", agent_id=row["id"],
                    details={"name": row["name"], "maturity_level": row["maturity_level"]})
        for row in rows
    ])


def create(principal: Principal, fields: dict[str, Any]) -> Agent:
    """Insert, audit and commit; the broker is not asked: the agent's inbox queue is declared by the first send
    to it (coordination.social), so registering agents costs the broker nothing. The returned agent is built
    from the inserted row (not loaded back)."""
    fields["tools"] = prepare_tools(principal.workspace_id, fields.get("tools"))
    row = _new_row(principal.workspace_id, fields)
    _insert(principal, [row])
    db.session.commit()
    agent = Agent(**row)
    events.announce_agent(agent, "created")
    return agent


def create_many(principal: Principal, rows: list[dict[str, Any]]) -> list[str]:
    """Bulk registration (`flask agents import`): one transaction for the rows and their `agent.created` audit
    rows; returns the new ids in order. No workspace announcements (they would cost one confirmed publish each)."""
    new_rows = [_new_row(principal.workspace_id, fields) for fields in rows]
    if not new_rows:
        return []
    _insert(principal, new_rows)
    db.session.commit()
    return [row["id"] for row in new_rows]


def update(principal: Principal, agent_id: str, changes: dict[str, Any]) -> Agent:
    agent = get(principal, agent_id)
    if "tools" in changes:
        changes["tools"] = prepare_tools(principal.workspace_id, changes["tools"])
    before = {name: getattr(agent, name) for name in changes}
    for name, value in changes.items():
        setattr(agent, name, value)
    agent.updated_at = utcnow()
    changed = {name: {"from": before[name], "to": value} for name, value in changes.items() if before[name] != value}
    audit.record(
        workspace_id=principal.workspace_id,
        actor=principal.actor,
        agent_id=agent.id,
        action="agent.updated",
        details={"changes": changed},
    )
    db.session.commit()
    return agent


def delete(principal: Principal, agent_id: str) -> None:
    """Soft delete keeps executions and audit rows pointing at a real agent."""
    agent = get(principal, agent_id)
    agent.deleted_at = utcnow()
    audit.record(
        workspace_id=principal.workspace_id,
        actor=principal.actor,
        agent_id=agent.id,
        action="agent.deleted",
        details={"name": agent.name},
    )
    had_inbox = agent.inbox_declared_at is not None
    db.session.commit()
    if had_inbox:  # else no send ever declared one (one racing this delete leaves a queue: harmless, as below)
        inboxes.delete(agent.id)
    events.announce_agent(agent, "deleted")


def list_agents(principal: Principal, *, limit: int, cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """Newest first, keyset-paginated by (created_at, id)."""
    query = select(Agent).where(Agent.workspace_id == principal.workspace_id, Agent.deleted_at.is_(None))
    rows, next_cursor = newest_first(query, Agent, limit=limit, cursor=cursor)
    return [serialize(agent) for agent in rows], next_cursor

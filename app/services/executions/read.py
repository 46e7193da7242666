"""Reading executions: one by id (in the key's workspace), an agent's list, and their JSON shapes."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, select

from app.extensions import db
from app.models import Execution, ExecutionStatus
from app.services import admission, agents
from app.services.auth import Principal
from app.services.errors import NotFound, ValidationFailed
from app.services.executions.events import error_of
from app.services.pagination import newest_first
from app.services.tools.view import execution_fields as tool_fields
from app.timeutil import iso


def serialize(execution: Execution) -> dict[str, Any]:
    return {
        "execution_id": execution.id,
        "agent_id": execution.agent_id,
        "status": execution.status,
        "action": execution.action,
        "message": execution.message,
        "output": execution.output,
        "error": error_of(execution),
        "usage": {"prompt_tokens": execution.prompt_tokens, "completion_tokens": execution.completion_tokens},
        "attempts": execution.attempts,
        "steps": execution.steps or [],
        "metadata": execution.meta,
        "timeout_s": execution.timeout_s,
        "max_tokens": execution.max_tokens,
        "queued": admission.queued_of(execution),
        "created_at": iso(execution.created_at),
        "started_at": iso(execution.started_at),
        "finished_at": iso(execution.finished_at),
        **tool_fields(execution),
    }


def accepted(execution: Execution) -> dict[str, Any]:
    """The answer to POST /agents/{id}/execute with stream false."""
    return {
        "execution_id": execution.id,
        "agent_id": execution.agent_id,
        "status": execution.status,
        "stream_url": f"/executions/{execution.id}/events",
        "created_at": iso(execution.created_at),
    }


def get(principal: Principal, execution_id: str) -> Execution:
    """Another workspace's execution is indistinguishable from a missing one."""
    execution = db.session.get(Execution, execution_id)
    if execution is None or execution.workspace_id != principal.workspace_id:
        raise NotFound(f"execution {execution_id} not found", {"execution_id": execution_id})
    return execution


# Built once per process, on the table (Core: no ORM object, identity map or loading step for a follower's GET).
_EXECUTIONS = Execution.__table__
_ID_IN_WORKSPACE = select(_EXECUTIONS.c.id).where(_EXECUTIONS.c.id == bindparam("execution_id"),
                                                  _EXECUTIONS.c.workspace_id == bindparam("workspace_id"))


def require(principal: Principal, execution_id: str) -> str:
    """The execution's id if it exists in the key's workspace (as `get`, without loading the row)."""
    found = db.session.execute(_ID_IN_WORKSPACE, {"execution_id": execution_id,
                                                  "workspace_id": principal.workspace_id}).scalar_one_or_none()
    if found is None:
        raise NotFound(f"execution {execution_id} not found", {"execution_id": execution_id})
    return str(found)


def list_for_agent(
    principal: Principal, agent_id: str, *, status: str | None, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """Newest first, keyset-paginated by (created_at, id)."""
    agents.get(principal, agent_id)
    if status is not None and status not in {s.value for s in ExecutionStatus}:
        raise ValidationFailed("unknown status", {"status": status,
                                                  "allowed": [s.value for s in ExecutionStatus]})
    query = select(Execution).where(Execution.workspace_id == principal.workspace_id,
                                    Execution.agent_id == agent_id)
    if status:
        query = query.where(Execution.status == status)
    rows, next_cursor = newest_first(query, Execution, limit=limit, cursor=cursor)
    return [serialize(row) for row in rows], next_cursor

"""Agents resource: thin views over app.services.agents."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request

from app.api.auth import current_principal
from app.api.docs import api_doc
from app.api.schemas import AgentCreate, AgentList, AgentOut, AgentUpdate, ErrorOut
from app.api.validation import parse_body
from app.llm import DEFAULT_PROVIDER
from app.services import agents
from app.services.pagination import parse_limit

bp = Blueprint("agents", __name__, url_prefix="/agents")

LIST_QUERY: dict[str, dict[str, Any]] = {
    "limit": {"type": "integer", "minimum": 1, "maximum": 200},
    "cursor": {"type": "string"},
}


def _agent_fields(model: AgentCreate | AgentUpdate) -> dict[str, Any]:
    fields = model.model_dump(exclude_unset=True)
    if "llm" in fields and fields["llm"] is not None:
        fields["llm"] = model.llm.model_dump(exclude_none=True) if model.llm else {}
    return fields


def create_fields(body: AgentCreate) -> dict[str, Any]:
    """The model fields of a validated POST /agents body (also used by `flask agents import`)."""
    fields = _agent_fields(body)
    fields["llm"] = fields.get("llm") or {"provider": DEFAULT_PROVIDER}
    return fields


@bp.post("")
@api_doc(summary="Register an agent", body=AgentCreate, responses={201: AgentOut, 422: ErrorOut, 503: ErrorOut},
         tags=["agents"])
def create_agent() -> tuple[dict[str, Any], int]:
    agent = agents.create(current_principal(), create_fields(parse_body(AgentCreate)))
    return agents.serialize(agent), 201


@bp.get("")
@api_doc(summary="List agents, newest first", responses={200: AgentList}, query=LIST_QUERY, tags=["agents"])
def list_agents() -> dict[str, Any]:
    items, next_cursor = agents.list_agents(
        current_principal(), limit=parse_limit(request.args.get("limit")), cursor=request.args.get("cursor")
    )
    return {"items": items, "next_cursor": next_cursor}


@bp.get("/<agent_id>")
@api_doc(summary="Get one agent", responses={200: AgentOut, 404: ErrorOut}, tags=["agents"])
def get_agent(agent_id: str) -> dict[str, Any]:
    return agents.serialize(agents.get(current_principal(), agent_id))


@bp.patch("/<agent_id>")
@api_doc(summary="Change an agent", body=AgentUpdate, responses={200: AgentOut, 404: ErrorOut, 422: ErrorOut},
         tags=["agents"])
def update_agent(agent_id: str) -> dict[str, Any]:
    body = parse_body(AgentUpdate)
    changes = {name: value for name, value in _agent_fields(body).items() if value is not None}
    agent = agents.update(current_principal(), agent_id, changes)
    return agents.serialize(agent)


@bp.delete("/<agent_id>")
@api_doc(summary="Delete an agent (its history stays)", responses={204: None, 404: ErrorOut}, tags=["agents"])
def delete_agent(agent_id: str) -> tuple[str, int]:
    agents.delete(current_principal(), agent_id)
    return "", 204

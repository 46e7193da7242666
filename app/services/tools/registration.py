"""The agent registry's hook: check declared tools against this workspace and this deployment's settings."""

from __future__ import annotations

from typing import Any

from flask import current_app

from app.extensions import db
from app.models import Agent
from app.services.tools.declarations import check_tools


def prepare_tools(workspace_id: str, tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Checked, normalised declarations for an agent of `workspace_id` (ValidationFailed -> 422, nothing stored)."""

    def agent_exists(agent_id: str) -> bool:
        agent = db.session.get(Agent, agent_id)
        return agent is not None and agent.workspace_id == workspace_id and agent.deleted_at is None

    return check_tools(tools or [], allowed_hosts=current_app.config.get("WEBHOOK_ALLOWED_HOSTS"),
                       agent_exists=agent_exists)

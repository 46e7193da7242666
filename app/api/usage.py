"""Token usage of the caller's workspace (thin view)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request
from pydantic import BaseModel

from app.api.auth import current_principal
from app.api.docs import api_doc
from app.api.schemas import ErrorOut
from app.services import usage

bp = Blueprint("usage", __name__, url_prefix="/usage")

USAGE_QUERY: dict[str, dict[str, Any]] = {
    "from": {"type": "string", "description": "ISO 8601 date or date-time, inclusive (default: 30 days before to)"},
    "to": {"type": "string", "description": "ISO 8601 date or date-time, exclusive (default: now)"},
    "group_by": {"type": "string", "enum": list(usage.GROUPS)},
}


class UsageItem(BaseModel):
    key: str
    executions: int
    prompt_tokens: int
    completion_tokens: int


class UsageOut(BaseModel):
    items: list[UsageItem]


@bp.get("")
@api_doc(summary="Executions and tokens of this workspace, grouped by agent, model or UTC day",
         responses={200: UsageOut, 422: ErrorOut}, query=USAGE_QUERY, tags=["usage"])
def get_usage() -> dict[str, Any]:
    items = usage.summarize(current_principal().workspace_id, group_by=request.args.get("group_by"),
                            raw_from=request.args.get("from"), raw_to=request.args.get("to"))
    return {"items": items}

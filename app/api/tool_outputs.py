"""POST /executions/{id}/tool_outputs: the client's results for the client-kind tool calls it was asked to run."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from app.api.auth import current_principal
from app.api.docs import api_doc
from app.api.execution_schemas import ExecutionOut, ToolOutputsRequest
from app.api.schemas import ErrorOut
from app.api.validation import parse_body

bp = Blueprint("tool_outputs", __name__)


@bp.post("/executions/<execution_id>/tool_outputs")
@api_doc(summary="Answer every tool call of an execution paused requires_action", body=ToolOutputsRequest,
         responses={200: ExecutionOut, 404: ErrorOut, 409: ErrorOut, 422: ErrorOut}, tags=["executions"])
def submit_tool_outputs(execution_id: str) -> dict[str, Any]:
    from app.services.executions import read
    from app.services.tools import resume

    body = parse_body(ToolOutputsRequest)
    principal = current_principal()
    execution = read.get(principal, execution_id)
    outputs = [item.model_dump() for item in body.tool_outputs]
    return read.serialize(resume.submit_outputs(principal, execution, outputs))

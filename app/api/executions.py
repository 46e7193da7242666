"""Executions resource: execute, read, list, follow events, cancel, approve, reject (thin views)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from app.api.auth import current_principal
from app.api.docs import api_doc
from app.api.errors import ApiError
from app.api.execution_schemas import CancelAccepted, ExecuteRequest, ExecutionAccepted, ExecutionList, ExecutionOut
from app.api.schemas import ErrorOut
from app.api.sse import event_stream, parse_after
from app.api.validation import parse_body
from app.services.executions import control, read, requests
from app.services.executions.requests import ExecutionRequest
from app.services.idempotency import MAX_KEY_LENGTH
from app.services.pagination import parse_limit

bp = Blueprint("executions", __name__)

EVENTS_DOC = "text/event-stream: `id:` 1, 2, 3 ...; `event:` status|delta|reset|completed|failed|cancelled|" \
    "timed_out|denied; `data:` JSON"
LIST_QUERY: dict[str, dict[str, Any]] = {
    "status": {"type": "string", "enum": ["pending", "awaiting_approval", "running", "completed", "failed",
                                          "cancelled", "timed_out", "denied"]},
    "limit": {"type": "integer", "minimum": 1, "maximum": 200},
    "cursor": {"type": "string"},
}
EVENTS_QUERY: dict[str, dict[str, Any]] = {
    "after": {"type": "integer", "minimum": 0, "description": "resume after this event id (or Last-Event-ID)"},
}


def _idempotency_key() -> str | None:
    raw = request.headers.get("Idempotency-Key")
    if raw is None:
        return None
    key = raw.strip()
    if not key or len(key) > MAX_KEY_LENGTH:
        raise ApiError(422, "validation_error", f"Idempotency-Key must be 1..{MAX_KEY_LENGTH} characters",
                       {"header": "Idempotency-Key"})
    return key


@bp.post("/agents/<agent_id>/execute")
@api_doc(summary="Run an agent on a message (stream true answers text/event-stream)", body=ExecuteRequest,
         responses={200: ExecutionAccepted, 403: ErrorOut, 404: ErrorOut, 409: ErrorOut, 422: ErrorOut,
                    429: ErrorOut, 503: ErrorOut},
         tags=["executions"])
def execute(agent_id: str) -> Response | dict[str, Any]:
    body = parse_body(ExecuteRequest)
    execution = requests.request(
        current_principal(),
        agent_id,
        ExecutionRequest(body.message, body.stream, body.action, body.timeout_s, body.metadata,
                         max_tokens=body.max_tokens, max_turns=body.max_turns, wait_timeout_s=body.wait_timeout_s),
        idempotency_key=_idempotency_key(),
    )
    if body.stream:
        return event_stream(execution.id, 0, headers={"X-Execution-Id": execution.id})
    return read.accepted(execution)


@bp.get("/executions/<execution_id>")
@api_doc(summary="One execution with output, usage, attempts and steps",
         responses={200: ExecutionOut, 404: ErrorOut}, tags=["executions"])
def get_execution(execution_id: str) -> dict[str, Any]:
    return read.serialize(read.get(current_principal(), execution_id))


@bp.get("/agents/<agent_id>/executions")
@api_doc(summary="An agent's executions, newest first", responses={200: ExecutionList, 404: ErrorOut},
         query=LIST_QUERY, tags=["executions"])
def list_executions(agent_id: str) -> dict[str, Any]:
    items, next_cursor = read.list_for_agent(
        current_principal(),
        agent_id,
        status=request.args.get("status") or None,
        limit=parse_limit(request.args.get("limit")),
        cursor=request.args.get("cursor"),
    )
    return {"items": items, "next_cursor": next_cursor}


@bp.get("/executions/<execution_id>/events")
@api_doc(summary="Server-sent events of an execution; resumable with Last-Event-ID or ?after=",
         responses={200: EVENTS_DOC, 404: ErrorOut, 422: ErrorOut, 503: ErrorOut}, query=EVENTS_QUERY,
         tags=["executions"])
def execution_events(execution_id: str) -> Response:
    found = read.require(current_principal(), execution_id)
    after = parse_after(request.args.get("after"), request.headers.get("Last-Event-ID"))
    return event_stream(found, after)


@bp.post("/executions/<execution_id>/cancel")
@api_doc(summary="Cancel: a queued execution ends now, a running one within one chunk",
         responses={202: CancelAccepted, 404: ErrorOut, 409: ErrorOut}, tags=["executions"])
def cancel_execution(execution_id: str) -> tuple[dict[str, Any], int]:
    execution = control.cancel(current_principal(), execution_id)
    return {"execution_id": execution.id, "status": execution.status, "cancel_requested": True}, 202


@bp.post("/executions/<execution_id>/approve")
@api_doc(summary="Approve an execution awaiting approval; its chain is enqueued",
         responses={202: ExecutionOut, 404: ErrorOut, 409: ErrorOut, 503: ErrorOut}, tags=["executions"])
def approve_execution(execution_id: str) -> tuple[dict[str, Any], int]:
    return read.serialize(control.approve(current_principal(), execution_id)), 202


@bp.post("/executions/<execution_id>/reject")
@api_doc(summary="Reject an execution awaiting approval; it ends denied",
         responses={200: ExecutionOut, 404: ErrorOut, 409: ErrorOut}, tags=["executions"])
def reject_execution(execution_id: str) -> dict[str, Any]:
    return read.serialize(control.reject(current_principal(), execution_id))

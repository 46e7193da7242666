"""Audit log: filtered listing and chain verification for the caller's workspace."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request

from app.api.auth import current_principal
from app.api.docs import api_doc
from app.api.schemas import AuditList, AuditVerify
from app.services import audit
from app.services.pagination import parse_limit

bp = Blueprint("audit", __name__, url_prefix="/audit")

AUDIT_QUERY: dict[str, dict[str, Any]] = {
    "agent_id": {"type": "string"},
    "execution_id": {"type": "string"},
    "action": {"type": "string"},
    "limit": {"type": "integer", "minimum": 1, "maximum": 200},
    "cursor": {"type": "string"},
}


@bp.get("")
@api_doc(summary="Audit rows, newest first", responses={200: AuditList}, query=AUDIT_QUERY, tags=["audit"])
def list_audit() -> dict[str, Any]:
    items, next_cursor = audit.list_rows(
        workspace_id=current_principal().workspace_id,
        agent_id=request.args.get("agent_id"),
        execution_id=request.args.get("execution_id"),
        action=request.args.get("action"),
        limit=parse_limit(request.args.get("limit")),
        cursor=request.args.get("cursor"),
    )
    return {"items": items, "next_cursor": next_cursor}


@bp.get("/verify")
@api_doc(summary="Recompute the hash chain", responses={200: AuditVerify}, tags=["audit"])
def verify_audit() -> dict[str, Any]:
    return audit.verify_chain(current_principal().workspace_id)

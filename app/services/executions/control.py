"""What a client asks of an execution after it started: cancel, approve, reject."""

from __future__ import annotations

import logging

from flask import current_app

from app.extensions import db
from app.models import Execution, ExecutionStatus
from app.services.auth import Principal
from app.services.errors import Conflict
from app.services.executions import state
from app.services.executions.events import event_log
from app.services.executions.read import get
from app.services.executions.requests import Enqueue, bound_enqueue, new_task_ids, start
from app.services.tools import pauses, resume
from app.timeutil import iso, utcnow

log = logging.getLogger(__name__)

S = ExecutionStatus
# A cancel ends these at once; a running execution is told through its flag and ends within one chunk.
ENDED_BY_CANCEL = (S.PENDING, S.AWAITING_APPROVAL, S.REQUIRES_ACTION, S.WAITING)


def _conflict(execution: Execution, expected: str) -> Conflict:
    return Conflict(f"execution is {execution.status}, not {expected}",
                    {"execution_id": execution.id, "status": execution.status})


def cancel(principal: Principal, execution_id: str) -> Execution:
    """Raise the cancel flag (the LLM step stops within one chunk); a not-yet-running one ends here and now."""
    execution = get(principal, execution_id)
    if S(execution.status).terminal:
        raise Conflict(f"execution is already {execution.status}",
                       {"execution_id": execution.id, "status": execution.status})
    event_log().request_cancel(execution.id)
    pauses.cancel_calls(execution.id, principal.actor)  # a pause's pending calls end with it (same transaction)
    ended = state.move(
        execution.id, S.CANCELLED, actor=principal.actor, from_statuses=ENDED_BY_CANCEL,
        values={"cancel_requested_at": utcnow(), "error_code": "cancelled",
                "error_message": f"cancelled by {principal.actor}"},
        audit_rows=[state.Audit("execution.cancelled", "ok", {"while": "queued"})],
    )
    if ended is not None:
        _revoke(execution.task_ids or [])
    else:
        state.flag_cancel(execution.id)
    db.session.refresh(execution)
    return execution


def _revoke(task_ids: list[str]) -> None:
    """Queued steps are dropped by workers; every step also re-checks the status, so this is an optimisation."""
    if not task_ids:
        return
    try:
        current_app.extensions["celery"].control.revoke(task_ids)
    except Exception:  # noqa: BLE001 - best effort
        log.warning("could not broadcast revoke for %s", task_ids)


def approve(principal: Principal, execution_id: str, *, enqueue: Enqueue | None = None) -> Execution:
    """awaiting_approval -> pending, then the chain is enqueued (after commit); a second approve is 409."""
    execution = get(principal, execution_id)
    if execution.pending_approval:  # paused on tool calls: run them (DESIGN.md, Tools)
        return resume.decide_approval(principal, execution, approve=True)
    moved = state.move(
        execution.id, S.PENDING, actor=principal.actor, from_statuses=[S.AWAITING_APPROVAL],
        values={"task_ids": new_task_ids(),
                "governance": {**(execution.governance or {}), "approved_by": principal.actor,
                               "approved_at": iso(utcnow())}},
        audit_rows=[state.Audit("execution.approved")],
        announce=False,
    )
    db.session.refresh(execution)
    if moved is None:
        raise _conflict(execution, "awaiting_approval")
    start(execution, enqueue or bound_enqueue())
    return execution


def reject(principal: Principal, execution_id: str) -> Execution:
    """awaiting_approval -> denied (terminal)."""
    execution = get(principal, execution_id)
    if execution.pending_approval:  # paused on tool calls: they get a `rejected` result and the loop goes on
        return resume.decide_approval(principal, execution, approve=False)
    ended = state.move(
        execution.id, S.DENIED, actor=principal.actor, from_statuses=[S.AWAITING_APPROVAL],
        values={"error_code": "rejected", "error_message": f"rejected by {principal.actor}"},
        audit_rows=[state.Audit("execution.rejected", "denied")],
    )
    db.session.refresh(execution)
    if ended is None:
        raise _conflict(execution, "awaiting_approval")
    return execution

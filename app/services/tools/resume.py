"""Resuming a paused tool loop: approve or reject the calls awaiting approval, submit client outputs, or an
asked agent's answer. Each is one conditional move of the execution with its ledger and audit rows in the
same transaction; the tools task is queued after the commit. A second, late or racing resume gets 409.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import current_app
from sqlalchemy import func

from app.extensions import db
from app.models import Execution, ExecutionStatus, ToolCallStatus
from app.services.auth import Principal
from app.services.errors import Conflict
from app.services.tools import ledger
from app.services.tools.events import emit, send_tools
from app.services.tools.outputs import check_outputs
from app.services.tools.plan import REJECTED, ready_status
from app.services.tools.runner import result_event
from app.timeutil import as_utc, utcnow

S = ExecutionStatus
T = ToolCallStatus


def wait_timeout_of(execution: Execution) -> int:
    """The execution's wait_timeout_s, or the deployment's default when the execute body set none."""
    return int(execution.wait_timeout_s or current_app.config["EXECUTION_WAIT_TIMEOUT_S"])


def paused_for(execution: Execution) -> timedelta:
    """How long the current pause has lasted (it started wait_timeout_s before paused_until)."""
    if execution.paused_until is None:
        return timedelta(0)
    since = as_utc(execution.paused_until) - timedelta(seconds=wait_timeout_of(execution))
    return max(timedelta(0), utcnow() - since)


def _resume_values(execution: Execution) -> dict[str, Any]:
    """Leave the pause: clear what it waited for; timeout_s counts running time, so the clock skips the pause."""
    values: dict[str, Any] = {"required_action": None, "pending_approval": None, "paused_until": None}
    if execution.started_at is not None:
        values["started_at"] = as_utc(execution.started_at) + paused_for(execution)
    return values


def _conflict(execution: Execution, expected: str) -> Conflict:
    return Conflict(f"execution is {execution.status}, not {expected}",
                    {"execution_id": execution.id, "status": execution.status})


def _current_turn(execution: Execution) -> int:
    return max(0, int(execution.turns) - 1)


def decide_approval(principal: Principal, execution: Execution, *, approve: bool) -> Execution:
    """POST /approve | /reject of an execution paused on tool calls: run them, or answer them `rejected`."""
    from app.services.executions import state

    turn = _current_turn(execution)
    rows = [row for row in ledger.rows_of(execution.id, turn) if row.status == T.AWAITING_APPROVAL.value]
    decided = [row.tool_call_id for row in rows]
    details: dict[str, Any] = {"tool_call_ids": decided, "turn": turn}
    audits: list[Any] = []
    for row in rows:
        base = {"tool_call_id": row.tool_call_id, "name": row.name, "turn": turn}
        if approve:
            ledger.move(execution.id, [row.tool_call_id], ready_status({"kind": row.kind}),
                        from_statuses=[T.AWAITING_APPROVAL])
            audits.append(state.Audit("tool.approved", "ok", base))
        else:
            error = {"code": REJECTED, "message": f"a person rejected this call ({principal.actor})"}
            ledger.move(execution.id, [row.tool_call_id], T.REJECTED, from_statuses=[T.AWAITING_APPROVAL],
                        values={"error": error})
            audits.append(state.Audit("tool.rejected", "denied", base))
    action = "execution.approved" if approve else "execution.rejected"
    moved = state.move(execution.id, S.RUNNING, actor=principal.actor, from_statuses=[S.AWAITING_APPROVAL],
                       values=_resume_values(execution),
                       audit_rows=[state.Audit(action, "ok" if approve else "denied", details), *audits])
    db.session.refresh(execution)
    if moved is None:
        raise _conflict(execution, "awaiting_approval")
    if not approve:
        for row in ledger.rows_of(execution.id, turn):
            if row.tool_call_id in decided:
                emit(execution.id, "tool_result", result_event(row))
    send_tools(execution.id, turn)
    return execution


def submit_outputs(principal: Principal, execution: Execution, outputs: list[dict[str, Any]]) -> Execution:
    """POST /executions/{id}/tool_outputs: every call waiting for the client, answered at once (409 otherwise)."""
    from app.services.executions import state

    if execution.status != S.REQUIRES_ACTION.value:
        raise _conflict(execution, "requires_action")
    turn = _current_turn(execution)
    every = ledger.rows_of(execution.id)
    waiting = [row for row in every if row.turn == turn and row.status == T.REQUIRES_ACTION.value]
    answers = check_outputs(outputs, waiting_ids=[row.tool_call_id for row in waiting],
                            known_ids=[row.tool_call_id for row in every])
    audits: list[Any] = []
    now = utcnow()
    for row in waiting:
        ledger.move(execution.id, [row.tool_call_id], T.COMPLETED, from_statuses=[T.REQUIRES_ACTION],
                    values={"output": answers[row.tool_call_id], "started_at": func.coalesce(
                        ledger.TABLE.c.started_at, now)})
        base = {"tool_call_id": row.tool_call_id, "name": row.name, "turn": turn}
        audits += [state.Audit("tool.output_submitted", "ok", base), state.Audit("tool.completed", "ok", base)]
    moved = state.move(execution.id, S.RUNNING, actor=principal.actor, from_statuses=[S.REQUIRES_ACTION],
                       values=_resume_values(execution), audit_rows=audits)
    db.session.refresh(execution)
    if moved is None:
        raise _conflict(execution, "requires_action")
    for row in ledger.rows_of(execution.id, turn):
        if row.tool_call_id in answers:
            emit(execution.id, "tool_result", result_event(row))
    send_tools(execution.id, turn)
    return execution


def resume_waiting(execution_id: str, turn: int) -> bool:
    """An asked agent answered: once no asked agent of the turn still runs, waiting -> running and go on."""
    from app.services.executions import state

    execution = db.session.get(Execution, execution_id)
    if execution is None or execution.status != S.WAITING.value or _current_turn(execution) != turn:
        db.session.rollback()
        return False
    if any(row.status == T.RUNNING.value for row in ledger.rows_of(execution_id, turn)):
        db.session.rollback()
        return False
    if state.move(execution_id, S.RUNNING, actor="worker", from_statuses=[S.WAITING],
                  values=_resume_values(execution)) is None:
        return False
    send_tools(execution_id, turn)
    return True

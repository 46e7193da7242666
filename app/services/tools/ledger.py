"""The tool-call ledger: rows written with the change that asks for them, finished once, read back as results.

A row's status only moves forward (conditional UPDATEs from the unfinished statuses), so a redelivered task
that finds a row finished never runs that call again, and two racing finishers get one winner.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import select, update

from app.extensions import db
from app.llm.base import ToolResult
from app.models import ToolCall, ToolCallStatus
from app.services import audit
from app.services.tools.plan import PlannedCall
from app.timeutil import iso, utcnow

S = ToolCallStatus
TABLE = ToolCall.__table__
UNFINISHED = tuple(status.value for status in S if not status.finished)
DECISION_AUDIT = {"allowed": "ok", "approval_required": "ok", "denied": "denied"}


def serialize(row: ToolCall) -> dict[str, Any]:
    """A ledger row as GET /executions/{id} shows it."""
    return {
        "tool_call_id": row.tool_call_id,
        "name": row.name,
        "kind": row.kind,
        "arguments": row.arguments,
        "turn": row.turn,
        "status": row.status,
        "output": row.output,
        "error": row.error,
        "started_at": iso(row.started_at) if row.started_at else None,
        "finished_at": iso(row.finished_at) if row.finished_at else None,
    }


def rows_of(execution_id: str, turn: int | None = None) -> list[ToolCall]:
    """The execution's calls in the order they were asked for (one turn's, when given)."""
    query = select(ToolCall).where(ToolCall.execution_id == execution_id)
    if turn is not None:
        query = query.where(ToolCall.turn == turn)
    return list(db.session.execute(query.order_by(ToolCall.turn, ToolCall.id)).scalars())


def record_turn(*, workspace_id: str, agent_id: str, execution_id: str, turn: int, actor: str,
                planned: Sequence[PlannedCall]) -> list[ToolCall]:
    """Insert the turn's rows and their tool.requested / governance audit rows, in the caller's transaction.

    Rows already there (a redelivered LLM turn) are kept as they are and not audited again.
    """
    existing = {row.tool_call_id for row in rows_of(execution_id)}
    now = utcnow()
    for item in planned:
        if item.call.id in existing:
            continue
        finished = item.status.finished
        db.session.add(ToolCall(
            execution_id=execution_id, tool_call_id=item.call.id, turn=turn, name=item.call.name, kind=item.kind,
            action=item.action, arguments=item.call.arguments, status=item.status.value, error=item.error,
            attempts=0, created_at=now, finished_at=now if finished else None,
        ))
        base = {"tool_call_id": item.call.id, "name": item.call.name, "turn": turn}
        entries = [("tool.requested", "ok", {**base, "arguments": item.call.arguments, "kind": item.kind})]
        if item.decision is not None:
            outcome = item.decision.outcome
            entries.append((f"tool.{outcome}", DECISION_AUDIT[outcome],
                            {**base, "action": item.action, "reason": item.decision.reason}))
        if item.status == S.FAILED:
            entries.append(("tool.failed", "error", {**base, "error": item.error}))
        for action, result, details in entries:
            audit.record(workspace_id=workspace_id, actor=actor, agent_id=agent_id, execution_id=execution_id,
                         action=action, result=result, details=details)
    db.session.flush()
    return rows_of(execution_id, turn)


def move(execution_id: str, tool_call_ids: Iterable[str], target: ToolCallStatus, *,
         from_statuses: Iterable[ToolCallStatus], values: dict[str, Any] | None = None) -> list[str]:
    """Conditionally move calls (in the caller's transaction); returns the ids this call moved."""
    ids = list(tool_call_ids)
    if not ids:
        return []
    fields: dict[str, Any] = {"status": target.value, **(values or {})}
    if target.finished:
        fields.setdefault("finished_at", utcnow())
    moved = db.session.execute(
        update(TABLE)
        .where(TABLE.c.execution_id == execution_id, TABLE.c.tool_call_id.in_(ids),
               TABLE.c.status.in_([status.value for status in from_statuses]))
        .values(**fields)
        .returning(TABLE.c.tool_call_id)
    ).scalars().all()
    return list(moved)


def start(execution_id: str, tool_call_id: str) -> bool:
    """pending|running -> running, attempts + 1 (a running row is a call whose worker died: same key again)."""
    return bool(move(execution_id, [tool_call_id], S.RUNNING, from_statuses=[S.PENDING, S.RUNNING],
                     values={"attempts": TABLE.c.attempts + 1, "started_at": utcnow()}))


def finish(execution_id: str, tool_call_id: str, *, output: Any = None, error: dict[str, Any] | None = None,
           from_statuses: Iterable[ToolCallStatus] = (S.RUNNING,)) -> bool:
    """running -> completed (output) or failed (error), once; False if something else finished it first."""
    target = S.FAILED if error is not None else S.COMPLETED
    return bool(move(execution_id, [tool_call_id], target, from_statuses=from_statuses,
                     values={"output": output, "error": error}))


def content_of(row: ToolCall) -> tuple[str, bool]:
    """What the LLM reads for a finished call: the output (a string as is, JSON otherwise) or the error."""
    if row.status == S.COMPLETED.value:
        output = row.output
        return (output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)), False
    error = row.error or {"code": row.status, "message": f"the call ended {row.status}"}
    return json.dumps({"error": error}, ensure_ascii=False), True


def result_messages(rows: Sequence[ToolCall]) -> list[ToolResult]:
    """The turn's results, in call order, as the next LLM turn's ToolResult messages."""
    out: list[ToolResult] = []
    for row in rows:
        content, is_error = content_of(row)
        out.append(ToolResult(tool_call_id=row.tool_call_id, name=row.name, content=content, is_error=is_error))
    return out


def pending_view(rows: Sequence[ToolCall], status: ToolCallStatus) -> dict[str, Any] | None:
    """required_action / pending_approval: {tool_calls: [{id, name, arguments}]} of the rows in `status`."""
    calls = [{"id": row.tool_call_id, "name": row.name, "arguments": row.arguments}
             for row in rows if row.status == status.value]
    return {"tool_calls": calls} if calls else None

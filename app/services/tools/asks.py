"""Agent tools: the question goes to the asked agent as a confirmed inbox message and runs it; its end answers.

The message id and the asked execution's Idempotency-Key derive from (execution, tool_call_id), so a
redelivered tools task never asks twice. The hop count grows by one per ask and is capped by MAX_HOPS: a
ping-pong of agents asking each other ends with a `max_hops` error result.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from typing import Any

from flask import current_app

from app.extensions import db
from app.models import Agent, Execution, ExecutionStatus, ToolCall, ToolCallStatus
from app.services.errors import GovernanceDenied, ServiceError
from app.services.tools import ledger
from app.services.tools.events import emit
from app.services.tools.runner import Caller, audit_finished, result_event
from coordination.envelope import next_hop

log = logging.getLogger(__name__)

T = ToolCallStatus
S = ExecutionStatus
MAX_QUESTION = 32768
ASK_TIMEOUT_S = 120


def ask_message_id(execution_id: str, tool_call_id: str) -> str:
    """A stable message id per call (at most 128 characters whatever the ids are)."""
    return "tool-" + hashlib.sha256(f"{execution_id}\0{tool_call_id}".encode()).hexdigest()[:40]


def _question(arguments: Any) -> str:
    """What the asked agent's LLM reads: a lone `question`/`message` string as is, other arguments as JSON."""
    if isinstance(arguments, dict) and len(arguments) == 1:
        only = next(iter(arguments.values()))
        if isinstance(only, str) and only:
            return only[:MAX_QUESTION]
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return text[:MAX_QUESTION] or "(empty question)"


def _fail(caller: Caller, row: ToolCall, error: dict[str, Any], from_statuses: Sequence[T]) -> None:
    if ledger.finish(caller.execution_id, row.tool_call_id, error=error, from_statuses=from_statuses):
        db.session.flush()
        db.session.refresh(row)
        audit_finished(caller, row)
        db.session.commit()
        emit(caller.execution_id, "tool_result", result_event(row))
    else:
        db.session.rollback()


def ask_agents(caller: Caller, rows: Sequence[ToolCall], tools: dict[str, dict[str, Any]], *, hop: int) -> None:
    """Send each pending agent call as a message and start the asked agent's execution on it."""
    for row in rows:
        if row.kind != "agent" or row.status != T.PENDING.value:
            continue
        tool = tools.get(row.name)
        message_hop = next_hop(hop, int(current_app.config["MAX_HOPS"]))
        if tool is None:
            _fail(caller, row, {"code": "unknown_tool", "message": f"tool {row.name!r} is gone"}, (T.PENDING,))
            continue
        if message_hop is None:
            _fail(caller, row, {"code": "max_hops", "message": f"asking another agent would pass MAX_HOPS "
                                f"({current_app.config['MAX_HOPS']})"}, (T.PENDING,))
            continue
        _ask(caller, row, str(tool["agent_id"]), message_hop)


def _ask(caller: Caller, row: ToolCall, asked_id: str, hop: int) -> None:
    """Mark the call running, send the confirmed message, start the asked agent's execution (both idempotent)."""
    from app.services import messaging
    from app.services.auth import Principal
    from app.services.executions import requests

    asked = db.session.get(Agent, asked_id)
    if asked is None or asked.deleted_at is not None or asked.workspace_id != caller.workspace_id:
        _fail(caller, row, {"code": "unknown_agent", "message": f"agent {asked_id} is gone"}, (T.PENDING,))
        return
    if not ledger.start(caller.execution_id, row.tool_call_id):
        db.session.rollback()
        return
    db.session.commit()
    message_id = ask_message_id(caller.execution_id, row.tool_call_id)
    actor = f"agent:{caller.agent_id}"
    try:
        messaging.deliver(workspace_id=caller.workspace_id, actor=actor, from_agent_id=caller.agent_id,
                          to_agent_id=asked_id, message=row.arguments, correlation_id=row.tool_call_id,
                          message_id=message_id, hop=hop, execution_id=caller.execution_id)
        body = requests.ExecutionRequest(
            message=_question(row.arguments), stream=False, action="chat", timeout_s=ASK_TIMEOUT_S,
            metadata={"hop": hop, "correlation_id": row.tool_call_id, "in_reply_to": message_id,
                      "tool_call": {"execution_id": caller.execution_id, "tool_call_id": row.tool_call_id}})
        requests.request(Principal(workspace_id=caller.workspace_id, key_id="", actor=actor), asked_id, body,
                         idempotency_key=f"ask:{message_id}")
    except GovernanceDenied as exc:
        _fail(caller, row, {"code": "denied", "message": f"the asked agent may not run this: {exc.message}"},
              (T.RUNNING,))
    except ServiceError as exc:  # the broker did not confirm: the call stays running, a retry asks again
        db.session.rollback()
        log.warning("asking agent %s for call %s failed: %s", asked_id, row.tool_call_id, exc.message)
        raise


def answer(asked_execution_id: str) -> bool:
    """The asked execution ended: its output (or error) answers the call; resume the asker when nothing else runs."""
    asked = db.session.get(Execution, asked_execution_id)
    link = ((asked.meta or {}).get("tool_call") if asked is not None else None) or {}
    if asked is None or not link or not S(asked.status).terminal:
        db.session.rollback()
        return False
    asker_id, tool_call_id = str(link["execution_id"]), str(link["tool_call_id"])
    asker = db.session.get(Execution, asker_id)
    if asker is None:
        db.session.rollback()
        return False
    if asked.status == S.COMPLETED.value:
        finished = ledger.finish(asker_id, tool_call_id, output=asked.output or "")
    else:
        finished = ledger.finish(asker_id, tool_call_id, error={
            "code": asked.error_code or asked.status,
            "message": f"the asked agent's execution ended {asked.status}: {asked.error_message or ''}".strip()})
    if not finished:
        db.session.rollback()
        return False
    row = next(row for row in ledger.rows_of(asker_id) if row.tool_call_id == tool_call_id)
    audit_finished(Caller(asker_id, asker.workspace_id, asker.agent_id, "worker"), row,
                   asked_execution_id=asked_execution_id)
    db.session.commit()
    emit(asker_id, "tool_result", result_event(row))
    from app.services.tools.resume import resume_waiting

    resume_waiting(asker_id, int(row.turn))
    return True


def answer_ended(*, page: int = 500) -> list[str]:
    """Answer the calls of `waiting` executions whose asked execution ended without its persist step answering
    (cancelled, ended by a sweep, given up): the asker would otherwise wait until its wait_timeout_s. Every
    waiting call is looked at, page by page, so asks still running do not hide an ended one behind a limit."""
    from sqlalchemy import select

    query = (select(ToolCall.id, ToolCall.execution_id, ToolCall.tool_call_id, Execution.workspace_id)
             .join(Execution, Execution.id == ToolCall.execution_id)
             .where(Execution.status == S.WAITING.value, ToolCall.kind == "agent", ToolCall.status == T.RUNNING.value)
             .order_by(ToolCall.id).limit(page))
    answered: list[str] = []
    after = 0
    while True:
        waiting = db.session.execute(query.where(ToolCall.id > after)).all()
        keys = {f"ask:{ask_message_id(asker_id, tool_call_id)}": workspace_id
                for _id, asker_id, tool_call_id, workspace_id in waiting}
        ended = db.session.execute(
            select(Execution.id).where(Execution.workspace_id.in_(set(keys.values())),
                                       Execution.idempotency_key.in_(list(keys)),
                                       Execution.status.in_([status.value for status in S if status.terminal]))
        ).scalars().all() if keys else []
        db.session.rollback()
        answered += [asked_id for asked_id in ended if answer(asked_id)]
        if len(waiting) < page:
            return answered
        after = int(waiting[-1].id)

"""The `executions.tools` task: run a turn's due calls, then pause for what only others can do, or go on.

After the runs it decides from the ledger alone: calls awaiting approval pause the execution
`awaiting_approval`; client calls pause it `requires_action`; asked agents pause it `waiting`; when every call
of the turn is finished their results join the conversation and the next turn is queued (pending -> the chain).
A pause ends the task, so it holds no worker slot; the resume (approve, reject, tool_outputs, an answer) queues
this task again. Cancel and the running-time deadline are checked between calls.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import select

from app.extensions import db
from app.llm.conversation import dump
from app.models import Agent, Execution, ExecutionStatus, ToolCall, ToolCallStatus
from app.services import admission
from app.services.tools import asks, ledger
from app.services.tools.events import cancel_seen, emit, event_log, tools_lease
from app.services.tools.resume import wait_timeout_of
from app.services.tools.runner import Caller, run_webhooks
from app.timeutil import as_utc, iso, utcnow

log = logging.getLogger(__name__)

S = ExecutionStatus
T = ToolCallStatus
ACTOR = "worker"
PAUSES: tuple[tuple[ToolCallStatus, ExecutionStatus, str], ...] = (
    (T.AWAITING_APPROVAL, S.AWAITING_APPROVAL, "pending_approval"),
    (T.REQUIRES_ACTION, S.REQUIRES_ACTION, "required_action"),
)


def _status_of(execution_id: str) -> str | None:
    status = db.session.execute(select(Execution.status).where(Execution.id == execution_id)).scalar_one_or_none()
    db.session.rollback()
    return status


def run(execution_id: str, turn: int) -> dict[str, Any]:
    """Run the turn's due calls under the execution's tools lease, then pause or queue the next turn."""
    with tools_lease(execution_id, _status_of) as held:
        if not held:
            return {"execution_id": execution_id, "skip": "ended or another tools run holds it"}
        return _run(execution_id, turn)


def _run(execution_id: str, turn: int) -> dict[str, Any]:
    execution = db.session.get(Execution, execution_id)
    if execution is not None and execution.status == S.PENDING.value and int(execution.turns) == turn + 1:
        return _requeue_next_turn(execution)
    if execution is None or execution.status != S.RUNNING.value or int(execution.turns) != turn + 1:
        status = execution.status if execution else "missing"
        db.session.rollback()
        return {"execution_id": execution_id, "skip": f"status {status}"}
    if _results_in(execution):  # a redelivery after this turn went on: the next LLM turn is running now
        db.session.rollback()
        return {"execution_id": execution_id, "skip": "the turn's results are in; the next turn runs"}
    started = str(iso(utcnow()))
    agent = db.session.get(Agent, execution.agent_id)
    tools = {str(tool["name"]): tool for tool in ((agent.tools if agent else None) or [])}
    caller = Caller(execution_id, execution.workspace_id, execution.agent_id, ACTOR)
    deadline = as_utc(execution.started_at or execution.created_at) + timedelta(seconds=int(execution.timeout_s))

    loaded = execution

    def should_stop() -> bool:
        return utcnow() >= deadline or cancel_seen(loaded)

    rows = ledger.rows_of(execution_id, turn)
    db.session.commit()
    run_webhooks(caller, rows, tools, should_stop=lambda: should_stop(),
                 emit=lambda event, data: emit(execution_id, event, data))
    asks.ask_agents(caller, ledger.rows_of(execution_id, turn), tools, hop=int((execution.meta or {}).get("hop") or 0))
    db.session.expire_all()
    execution = db.session.get(Execution, execution_id)
    if execution is None or execution.status != S.RUNNING.value:
        db.session.rollback()
        return {"execution_id": execution_id, "skip": "ended while running tools"}
    if cancel_seen(execution):
        return _end(execution, S.CANCELLED, "cancelled", f"cancelled during turn {turn + 1}'s tool calls",
                    "execution.cancelled", "ok")
    if utcnow() >= deadline:
        return _end(execution, S.TIMED_OUT, "timeout", "the execution exceeded its timeout_s", "execution.timed_out",
                    "error")
    rows = ledger.rows_of(execution_id, turn)
    for row_status, target, field in PAUSES:
        view = ledger.pending_view(rows, row_status)
        if view is not None:
            return _pause(execution, target, {field: view}, turn)
    if any(row.status == T.RUNNING.value and row.kind == "agent" for row in rows):
        return _pause(execution, S.WAITING, {}, turn)
    if any(not T(row.status).finished for row in rows):  # a webhook stopped by cancel or the deadline
        db.session.rollback()
        return {"execution_id": execution_id, "skip": "calls left unfinished"}
    return _next_turn(execution, rows, turn, started)


def _results_in(execution: Execution) -> bool:
    """Whether the conversation already ends with the turn's results (only _next_turn appends them)."""
    conversation = execution.conversation or []
    return bool(conversation) and conversation[-1].get("role") == "tool"


def _pause(execution: Execution, target: ExecutionStatus, view: dict[str, Any], turn: int) -> dict[str, Any]:
    """Pause until someone acts; bounded by wait_timeout_s (the workers' sweep ends it timed_out)."""
    from app.services.executions import state

    values = {"required_action": None, "pending_approval": None, **view,
              "paused_until": utcnow() + timedelta(seconds=wait_timeout_of(execution))}
    moved = state.move(execution.id, target, actor=ACTOR, from_statuses=[S.RUNNING], values=values)
    if moved is not None:
        try:
            admission.paused(execution.id)
        except RedisError:  # the slots lapse with their lease instead
            log.warning("could not free the slots of paused execution %s", execution.id)
    return {"execution_id": execution.id, "status": target.value if moved is not None else "ended", "turn": turn}


def _next_turn(execution: Execution, rows: list[ToolCall], turn: int, started: str) -> dict[str, Any]:
    """Every call answered: results into the conversation, a `tools` step, and the next turn's chain."""
    from app.services.executions import requests, state
    from app.services.executions.step_support import step_record

    conversation = [*(execution.conversation or []), *dump(ledger.result_messages(rows))]
    steps = [*(execution.steps or []), step_record("tools", "completed", started)]
    # Before the commit: a pending turn without the queued mark is one the sweep (and a redelivery) sends again.
    event_log().unmark_queued(execution.id)
    moved = state.move(execution.id, S.PENDING, actor=ACTOR, from_statuses=[S.RUNNING], announce=False,
                       values={"conversation": conversation, "steps": steps, "attempts": 0,
                               "task_ids": requests.new_task_ids()})
    if moved is None:
        return {"execution_id": execution.id, "skip": "ended"}
    db.session.refresh(execution)
    requests.start(execution, requests.bound_enqueue())
    return {"execution_id": execution.id, "status": S.PENDING.value, "turn": turn + 1}


def _requeue_next_turn(execution: Execution) -> dict[str, Any]:
    """A redelivery after this step queued the next turn, or died between that commit and the send: send the
    chain again unless it is marked queued or the workers' sweep claimed it (the same claim, so one sender)."""
    from app.services.executions import requests

    if not event_log().claim_requeue(execution.id):
        db.session.rollback()  # queued, or the workers' sweep is sending it right now
        return {"execution_id": execution.id, "skip": "next turn already queued"}
    requests.start(execution, requests.bound_enqueue())
    return {"execution_id": execution.id, "status": S.PENDING.value, "requeued": True}


def _end(execution: Execution, target: ExecutionStatus, code: str, message: str, action: str,
         result: str) -> dict[str, Any]:
    """End the execution from the tools step, resolving its unfinished calls in the same transaction."""
    from app.services.executions import state

    resolve_unfinished(execution.id, {"code": code, "message": message})
    state.move(execution.id, target, actor=ACTOR, from_statuses=[S.RUNNING],
               values={"error_code": code, "error_message": message},
               audit_rows=[state.Audit(action, result, {"during": "tools"})])
    return {"execution_id": execution.id, "status": target.value}


def resolve_unfinished(execution_id: str, error: dict[str, Any]) -> list[str]:
    """Fail every unfinished call of the execution (in the caller's transaction): the execution is ending."""
    unfinished = [status for status in T if not status.finished]
    ids = [row.tool_call_id for row in ledger.rows_of(execution_id) if not T(row.status).finished]
    return ledger.move(execution_id, ids, T.FAILED, from_statuses=unfinished, values={"error": error})

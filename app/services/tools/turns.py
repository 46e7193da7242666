"""The LLM turn's side of the loop: what a turn sends the provider, and the hand-off when it called tools.

The hand-off claims the turn with a conditional UPDATE (running, turns == this turn), so a redelivered persist
step records nothing twice; it writes the ledger rows with their audit rows in that same transaction, then
queues the `executions.tools` task after the commit.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update

from app import tool_spans
from app.extensions import db
from app.llm.base import AssistantTurn, Message, ToolCall, ToolSpec
from app.llm.conversation import dump, load
from app.models import Agent, Execution, ExecutionStatus, ToolCallStatus
from app.models import ToolCall as ToolCallRow
from app.services.tools import ledger
from app.services.tools.declarations import DEFAULT_PARAMETERS
from app.services.tools.events import emit_calls, event_log, send_tools
from app.services.tools.plan import plan_turn

S = ExecutionStatus
EXECUTIONS = Execution.__table__
ACTOR = "worker"
MAX_TURNS = "max_turns"


def specs_of(tools: list[dict[str, Any]] | None) -> list[ToolSpec]:
    """The agent's declarations as the provider offers them."""
    return [ToolSpec(name=str(tool["name"]), description=str(tool.get("description") or ""),
                     parameters=dict(tool.get("parameters") or DEFAULT_PARAMETERS)) for tool in tools or []]


def stream_extras(execution_id: str, *, conversation: list[dict[str, Any]] | None,
                  tools: list[dict[str, Any]] | None) -> dict[str, Any]:
    """provider.stream's `messages` (the conversation so far) and `tools` (the agent's), for this turn; the
    execution's conversation and the agent's tools as the LLM step read them (no query for an agent without tools)."""
    if not tools and not conversation:
        return {}
    if unfinished_calls(execution_id):
        # A second chain of this turn (a re-sent one after a kill) while the tools step still runs the calls:
        # the turn's results are not in yet, so this run must not answer in their place.
        from app.services.executions.llm_run import Lost

        raise Lost()
    messages: list[Message] = load(conversation)
    return {"messages": messages, "tools": specs_of(tools)}


def unfinished_calls(execution_id: str) -> bool:
    """Whether a call of the execution still waits for its result (then no LLM turn may run)."""
    return unfinished_turn(execution_id) is not None


def unfinished_turn(execution_id: str) -> int | None:
    """The turn whose calls still wait for results, if any (only the last handed-off turn can have them)."""
    unfinished = [status.value for status in ToolCallStatus if not status.finished]
    found = db.session.execute(
        select(ToolCallRow.turn).where(ToolCallRow.execution_id == execution_id, ToolCallRow.status.in_(unfinished))
        .order_by(ToolCallRow.turn.desc()).limit(1)
    ).scalar_one_or_none()
    return None if found is None else int(found)


def calls_of(items: list[ToolCall]) -> list[dict[str, Any]]:
    """ToolCall items as JSON, for the task result the persist step receives."""
    return [{"id": item.id, "name": item.name, "arguments": item.arguments} for item in items]


def _usage(result: dict[str, Any]) -> tuple[int, int]:
    usage = result.get("usage") or {}
    return int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))


def after_llm_turn(result: dict[str, Any]) -> dict[str, Any] | None:
    """A completed turn with tool calls: record them and queue their run; None when the turn called no tools."""
    if not result.get("tool_loop"):  # an agent without tools: the ordinary persist, no extra query
        return None
    execution_id = str(result["execution_id"])
    if (handed_off := unfinished_turn(execution_id)) is not None:
        # This turn was handed off already: a persist step redelivered after a kill between the hand-off's commit
        # and the send of its tools task, or a stale run of a re-sent chain (see stream_extras). Drop the result
        # and send the tools task again: it is idempotent, and without it a lost send leaves the loop stuck.
        db.session.rollback()
        event_log().end_run(execution_id)
        send_tools(execution_id, handed_off)
        return {"execution_id": execution_id, "skip": "the turn's tool calls are already handed off"}
    raw_calls = result.get("tool_calls") or []
    if result.get("outcome") != "completed" or not raw_calls:
        return None
    execution = db.session.get(Execution, execution_id)
    if execution is None or execution.status != S.RUNNING.value:
        db.session.rollback()
        return {"execution_id": execution_id, "skip": "not running"}
    agent = db.session.get(Agent, execution.agent_id)
    turn = int(result.get("turn", execution.turns))  # the turn this run answered, not whatever runs now
    calls = [ToolCall(id=str(call["id"]), name=str(call["name"]), arguments=call.get("arguments"))
             for call in raw_calls]
    text = str(result.get("output") or "")
    prompt, completion = _usage(result)
    claimed = db.session.execute(
        update(EXECUTIONS)
        .where(EXECUTIONS.c.id == execution_id, EXECUTIONS.c.status == S.RUNNING.value, EXECUTIONS.c.turns == turn)
        .values(turns=turn + 1,
                conversation=[*(execution.conversation or []), *dump([AssistantTurn(text, tuple(calls))])],
                prompt_tokens=EXECUTIONS.c.prompt_tokens + prompt,
                completion_tokens=EXECUTIONS.c.completion_tokens + completion,
                steps=[*(result.get("steps") or []), result["llm_step"]])
    ).rowcount  # type: ignore[attr-defined]
    if not claimed:  # a redelivery after the hand-off committed: the tools task may not have been sent
        db.session.rollback()
        send_tools(execution_id, turn)
        return {"execution_id": execution_id, "skip": "turn already handed off"}
    agent_status = "deleted" if agent is None or agent.deleted_at is not None else agent.status
    planned = plan_turn(calls, (agent.tools if agent else None) or [],
                        maturity_level=agent.maturity_level if agent else "STUDENT", agent_status=agent_status)
    rows = ledger.record_turn(workspace_id=execution.workspace_id, agent_id=execution.agent_id,
                              execution_id=execution_id, turn=turn, actor=ACTOR, planned=planned)
    if turn + 1 >= int(execution.max_turns):
        return _out_of_turns(execution_id, [row.tool_call_id for row in rows], turn)
    db.session.commit()
    tool_spans.decision_spans(planned)
    events = event_log()
    events.end_run(execution_id)  # the next turn's LLM run claims its own lease
    emit_calls(execution_id, rows)
    send_tools(execution_id, turn)
    return {"execution_id": execution_id, "status": S.RUNNING.value, "reply": False, "turn": turn}


def _out_of_turns(execution_id: str, tool_call_ids: list[str], turn: int) -> dict[str, Any]:
    """The last allowed turn still called tools: no turn would read their results, so the execution fails."""
    from app.services.executions import state

    error = {"code": MAX_TURNS, "message": f"the loop reached max_turns ({turn + 1}) with tool calls pending"}
    unfinished = [status for status in ToolCallStatus if not status.finished]
    ledger.move(execution_id, tool_call_ids, ToolCallStatus.FAILED, from_statuses=unfinished, values={"error": error})
    row = state.move(execution_id, S.FAILED, actor=ACTOR, from_statuses=[S.RUNNING],
                     values={"error_code": MAX_TURNS, "error_message": error["message"]},
                     audit_rows=[state.Audit("execution.failed", "error", {"error": error, "turns": turn + 1})])
    return {"execution_id": execution_id, "status": S.FAILED.value if row is not None else "ended", "reply": False}

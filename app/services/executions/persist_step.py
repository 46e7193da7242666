"""The chain's last step: write the final state exactly once and emit the one terminal event; and giving up.

Idempotent: the final state is a conditional move from `running` with its audit rows in the same transaction,
and the stream refuses a second terminal event, so a redelivery after the commit only re-emits it.
"""

from __future__ import annotations

from typing import Any

from app.extensions import db
from app.models import Execution, ExecutionStatus
from app.services.executions import state
from app.services.executions.events import emit_terminal, event_log
from app.services.executions.step_support import ACTOR, skipped, step_record
from app.services.tools import turns
from app.timeutil import iso, utcnow

OUTCOME_AUDIT: dict[str, list[tuple[str, str]]] = {
    "completed": [("llm.completed", "ok"), ("execution.completed", "ok")],
    "failed": [("llm.failed", "error"), ("execution.failed", "error")],
    "cancelled": [("execution.cancelled", "ok")],
    "timed_out": [("execution.timed_out", "error")],
}


def run(result: dict[str, Any]) -> dict[str, Any]:
    """Write output, usage, attempts, steps and the final status once; then emit the one terminal event.

    Returns {execution_id, status, reply}: reply says the execution answers a message (workflows send it back).
    """
    execution_id = str(result["execution_id"])
    if result.get("skip"):
        return result
    started = iso(utcnow())
    holder = event_log().current_run(execution_id)
    if holder is not None and holder != result.get("run"):
        return skipped(execution_id, "a newer LLM run owns it")
    if (handed_off := turns.after_llm_turn(result)) is not None:  # the turn called tools: the loop goes on
        return handed_off
    outcome = ExecutionStatus(str(result["outcome"]))
    usage = result.get("usage") or {}
    error = result.get("error")
    details = {"usage": usage} if outcome == ExecutionStatus.COMPLETED else {"error": error}
    row = state.move(
        execution_id, outcome, actor=ACTOR, from_statuses=[ExecutionStatus.RUNNING],
        values={
            "output": result.get("output") or "",
            # summed over the turns of a tool loop (a single-turn execution starts from 0)
            "prompt_tokens": state.Add(int(usage.get("prompt_tokens", 0))),
            "completion_tokens": state.Add(int(usage.get("completion_tokens", 0))),
            "turns": state.Add(1),
            "error_code": error["code"] if error else None,
            "error_message": error["message"] if error else None,
            "steps": [*(result.get("steps") or []), result["llm_step"], step_record("persist", "completed", started)],
        },
        audit_rows=[state.Audit(action, res, details) for action, res in OUTCOME_AUDIT[outcome.value]],
        returning=("metadata",),
    )  # the terminal event it emits also drops the LLM run's lease
    if row is None:
        return _already_final(execution_id)
    return {"execution_id": execution_id, "status": outcome.value, "reply": _answers_a_message(row.metadata),
            "tool_call": bool((row.metadata or {}).get("tool_call"))}


def _already_final(execution_id: str) -> dict[str, Any]:
    """A redelivery after the commit: make sure the terminal event went out (the stream keeps only one)."""
    db.session().expire_on_commit = False
    execution = db.session.get(Execution, execution_id)
    if execution is None:
        db.session.rollback()
        return skipped(execution_id, "missing")
    status, meta = ExecutionStatus(execution.status), execution.meta
    if status.terminal:
        emit_terminal(execution)
    db.session.rollback()
    if not status.terminal:
        return skipped(execution_id, f"status {status.value}")
    return {"execution_id": execution_id, "status": status.value, "reply": _answers_a_message(meta),
            "tool_call": bool((meta or {}).get("tool_call"))}


def _answers_a_message(meta: dict[str, Any] | None) -> bool:
    return bool((meta or {}).get("reply_to"))


def abandon(execution_id: str, step: str, error: BaseException) -> bool:
    """A step failed for good (a bug, or an outage that outlasted its retries): end the execution `failed`
    instead of leaving it pending or running for ever. False if it had already ended (or cannot be reached)."""
    return state.move(
        execution_id, ExecutionStatus.FAILED, actor=ACTOR,
        values={"error_code": "internal_error", "error_message": f"the {step} step failed ({type(error).__name__})"},
        audit_rows=[state.Audit("execution.failed", "error", {"reason": "step_failed", "step": step,
                                                             "error": type(error).__name__})],
    ) is not None

"""Running a turn's server-side calls (webhooks) against the ledger: each call at most once once it completed."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from flask import current_app

from app import tool_spans
from app.extensions import db
from app.llm.base import ShouldStop
from app.models import ToolCall, ToolCallStatus
from app.services import audit
from app.services.tools import ledger
from app.services.tools.webhook import WebhookCall, WebhookSettings, call_webhook, settings_from_config

log = logging.getLogger(__name__)

S = ToolCallStatus
Emit = Callable[[str, dict[str, Any]], None]
"""(event, data) onto the execution's stream."""


@dataclass(frozen=True)
class Caller:
    """The execution a call belongs to, as the runner needs it."""

    execution_id: str
    workspace_id: str
    agent_id: str
    actor: str


def result_event(row: ToolCall) -> dict[str, Any]:
    """tool_result event data: {tool_call_id, status, output | error}."""
    data: dict[str, Any] = {"tool_call_id": row.tool_call_id, "status": row.status}
    if row.status == S.COMPLETED.value:
        data["output"] = row.output
    else:
        data["error"] = row.error
    return data


def audit_finished(caller: Caller, row: ToolCall, **extra: Any) -> None:
    """tool.completed or tool.failed, in the transaction that finished the row."""
    completed = row.status == S.COMPLETED.value
    details: dict[str, Any] = {"tool_call_id": row.tool_call_id, "name": row.name, "turn": row.turn, **extra}
    if not completed:
        details["error"] = row.error
    audit.record(workspace_id=caller.workspace_id, actor=caller.actor, agent_id=caller.agent_id,
                 execution_id=caller.execution_id, action="tool.completed" if completed else "tool.failed",
                 result="ok" if completed else "error", details=details)


def run_webhook(caller: Caller, row: ToolCall, tool: dict[str, Any], *, settings: WebhookSettings,
                should_stop: ShouldStop, emit: Emit) -> bool:
    """Mark the row running (committed before the POST), call, finish it once; False if it was not ours to run."""
    tool_call_id = row.tool_call_id
    if not ledger.start(caller.execution_id, tool_call_id):
        db.session.rollback()
        return False
    db.session.commit()  # the running mark (and attempts) survive a worker kill; no transaction while calling
    # Governance allowed it (or a person approved it): one span per call, the webhook's HTTP request under it.
    with tool_spans.tool_span(row.name, "webhook", "allowed", tool_call_id=tool_call_id,
                           arguments=row.arguments) as span:
        outcome = call_webhook(
            WebhookCall(url=str(tool["url"]), execution_id=caller.execution_id, agent_id=caller.agent_id,
                        tool_call_id=tool_call_id, name=row.name, arguments=row.arguments,
                        timeout_s=float(tool.get("timeout_s") or 30)),
            settings, should_stop=should_stop,
        )
        span.set_attribute("agent_runtime.tool.status", "completed" if outcome.error is None else "failed")
    if not ledger.finish(caller.execution_id, tool_call_id, output=outcome.output, error=outcome.error):
        db.session.rollback()
        return False
    db.session.flush()
    db.session.refresh(row)
    audit_finished(caller, row, attempts=outcome.attempts, status=outcome.status)
    db.session.commit()
    emit("tool_result", result_event(row))
    return True


def run_webhooks(caller: Caller, rows: Sequence[ToolCall], tools: dict[str, dict[str, Any]], *,
                 should_stop: ShouldStop, emit: Emit) -> int:
    """Every pending (or orphaned running) webhook call of the turn, in order; returns how many ran."""
    settings = settings_from_config(current_app.config)
    ran = 0
    for row in rows:
        if row.kind != "webhook" or row.status not in (S.PENDING.value, S.RUNNING.value):
            continue
        if should_stop():
            break
        tool = tools.get(row.name)
        if tool is None:  # the agent's tools changed since the call was planned
            if ledger.finish(caller.execution_id, row.tool_call_id, from_statuses=(S.PENDING, S.RUNNING),
                             error={"code": "unknown_tool", "message": f"tool {row.name!r} is gone"}):
                db.session.flush()
                db.session.refresh(row)
                audit_finished(caller, row)
                db.session.commit()
                emit("tool_result", result_event(row))
            continue
        ran += run_webhook(caller, row, tool, settings=settings, should_stop=should_stop, emit=emit)
    return ran

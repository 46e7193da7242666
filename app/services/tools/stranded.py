"""The workers' sweep for tool loops whose tools task was never queued: a web process died (or the broker refused
the publish) between a resume's commit and its send, or a worker between a hand-off's commit and its send."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from app.extensions import db
from app.models import AuditLog, Execution, ExecutionStatus
from app.services.tools.events import event_log, tools_run_held
from app.timeutil import utcnow

log = logging.getLogger(__name__)


def waits_for_tools(conversation: list[dict[str, Any]] | None) -> bool:
    """The turn was handed off and its results are not in: the conversation ends with its tool calls."""
    last = (conversation or [{}])[-1]
    return last.get("role") == "assistant" and bool(last.get("tool_calls"))


def resend(send: Callable[[str, int], object], *, older_than_s: float, limit: int = 100) -> list[str]:
    """Send the tools task again for running loops that wait for it with no tools run or LLM run holding them
    and nothing recorded (no audit row) for older_than_s. A second copy is harmless: the task takes a lease
    and skips calls that finished and turns that went on."""
    last_change = select(func.max(AuditLog.at)).where(AuditLog.execution_id == Execution.id).scalar_subquery()
    candidates = db.session.execute(
        select(Execution.id, Execution.turns, Execution.conversation)
        .where(Execution.status == ExecutionStatus.RUNNING.value, Execution.turns > 0,
               last_change < utcnow() - timedelta(seconds=older_than_s))
        .order_by(Execution.created_at).limit(limit)
    ).all()
    db.session.rollback()
    events = event_log()
    sent: list[str] = []
    for execution_id, turns, conversation in candidates:
        if not waits_for_tools(conversation) or tools_run_held(execution_id) or events.current_run(execution_id):
            continue
        send(execution_id, int(turns) - 1)
        log.warning("re-sent the tools task of execution %s: none was queued after its last change", execution_id,
                    extra={"execution_id": execution_id})
        sent.append(execution_id)
    return sent

"""The workers' sweep for tool loops whose tools task was never queued: a web process died (or the broker refused
the publish) between a resume's commit and its send, or a worker between a hand-off's commit and its send."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, tuple_

from app.extensions import db
from app.models import AuditLog, Execution, ExecutionStatus
from app.services.tools.events import event_log, tools_run_held
from app.timeutil import utcnow

log = logging.getLogger(__name__)


def waits_for_tools(conversation: list[dict[str, Any]] | None) -> bool:
    """The turn was handed off and its results are not in: the conversation ends with its tool calls."""
    last = (conversation or [{}])[-1]
    return last.get("role") == "assistant" and bool(last.get("tool_calls"))


def resend(send: Callable[[str, int], object], *, older_than_s: float, page: int = 500) -> list[str]:
    """Send the tools task again for running loops that wait for it with no tools run or LLM run holding them
    and nothing recorded (no audit row) for older_than_s. A second copy is harmless: the task takes a lease
    and skips calls that finished and turns that went on. Every candidate is looked at, page by page: long LLM
    turns (running, an LLM lease held) must not hide a stranded loop behind a limit."""
    last_change = select(func.max(AuditLog.at)).where(AuditLog.execution_id == Execution.id).scalar_subquery()
    query = (select(Execution.id, Execution.turns, Execution.created_at)
             .where(Execution.status == ExecutionStatus.RUNNING.value, Execution.turns > 0,
                    last_change < utcnow() - timedelta(seconds=older_than_s))
             .order_by(Execution.created_at, Execution.id).limit(page))
    events = event_log()
    sent: list[str] = []
    after: tuple[Any, str] | None = None
    while True:
        paged = query if after is None else query.where(tuple_(Execution.created_at, Execution.id) > after)
        candidates = db.session.execute(paged).all()
        db.session.rollback()
        for execution_id, turns, _created in candidates:
            if tools_run_held(execution_id) or events.current_run(execution_id) or not waits_for_tools(
                    _conversation(execution_id)):
                continue
            send(execution_id, int(turns) - 1)
            log.warning("re-sent the tools task of execution %s: none was queued after its last change",
                        execution_id, extra={"execution_id": execution_id})
            sent.append(execution_id)
        if len(candidates) < page:
            return sent
        after = (candidates[-1].created_at, candidates[-1].id)


def _conversation(execution_id: str) -> list[dict[str, Any]] | None:
    conversation = db.session.execute(
        select(Execution.conversation).where(Execution.id == execution_id)).scalar_one_or_none()
    db.session.rollback()
    return conversation

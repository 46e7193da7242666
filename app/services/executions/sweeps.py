"""The workers' sweeps for executions nothing else would finish: pending ones whose chain no broker confirmed,
and running ones abandoned long past their deadline."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import select, tuple_

from app.extensions import db
from app.models import Execution, ExecutionStatus
from app.services.executions import state
from app.services.executions.events import event_log
from app.services.executions.requests import Enqueue
from app.timeutil import as_utc, utcnow

log = logging.getLogger(__name__)


def requeue_stranded(enqueue: Enqueue, *, older_than_s: float, limit: int = 100, page: int = 500) -> list[str]:
    """Send the chain of pending executions that no broker ever confirmed: a web process died between the commit
    and the confirm. The mark is set after the confirm, so one older than older_than_s without it was never
    queued (or Redis lost the mark: then the chain runs twice, and the steps' status checks and LLM lease make
    the second one a no-op or a restart, never a second end).

    Every pending execution past the grace is looked at, page by page with one Redis round trip for the marks:
    an admission backlog (pending, marked queued, thousands) must not hide a stranded one behind a limit. At
    most `limit` chains are sent per pass."""
    query = (select(Execution.id, Execution.task_ids, Execution.created_at)
             .where(Execution.status == ExecutionStatus.PENDING.value,
                    Execution.created_at < utcnow() - timedelta(seconds=older_than_s))
             .order_by(Execution.created_at, Execution.id).limit(page))
    events = event_log()
    requeued: list[str] = []
    after: tuple[Any, str] | None = None
    while len(requeued) < limit:
        paged = query if after is None else query.where(tuple_(Execution.created_at, Execution.id) > after)
        stranded = db.session.execute(paged).all()
        db.session.rollback()
        marks = events.queued_marks([row.id for row in stranded]) if stranded else []
        for (execution_id, task_ids, _created), marked in zip(stranded, marks, strict=True):
            if marked or len(requeued) >= limit or not events.claim_requeue(execution_id):
                continue
            try:
                enqueue(execution_id, list(task_ids or []))
            except Exception:
                events.unmark_queued(execution_id)  # the next sweep tries again (or the claim expires)
                raise
            events.mark_queued(execution_id)
            log.warning("re-queued execution %s: no broker had confirmed its chain", execution_id,
                        extra={"execution_id": execution_id})
            requeued.append(execution_id)
        if len(stranded) < page:
            break
        after = (stranded[-1].created_at, stranded[-1].id)
    return requeued


def end_abandoned(*, grace_s: float, limit: int = 100) -> list[str]:
    """End `failed` the running executions that no task will end any more: past their deadline by more than
    grace_s (longer than a step's retries) with no LLM run holding the lease. That happens when a worker lost
    them, or when their last step could not even record its failure because the database was still down."""
    now = utcnow()
    candidates = db.session.execute(
        select(Execution.id, Execution.started_at, Execution.created_at, Execution.timeout_s)
        .where(Execution.status == ExecutionStatus.RUNNING.value,
               Execution.created_at < now - timedelta(seconds=grace_s))
        .order_by(Execution.created_at)
        .limit(limit)
    ).all()
    db.session.rollback()
    events = event_log()
    ended: list[str] = []
    for execution_id, started_at, created_at, timeout_s in candidates:
        if as_utc(started_at or created_at) + timedelta(seconds=timeout_s + grace_s) > now:
            continue
        if events.current_run(execution_id) is not None:
            continue
        if state.move(execution_id, ExecutionStatus.FAILED, actor="sweeper", from_statuses=[ExecutionStatus.RUNNING],
                      values={"error_code": "internal_error",
                              "error_message": "abandoned: no worker finished it before its deadline"},
                      audit_rows=[state.Audit("execution.failed", "error", {"reason": "abandoned"})]):
            log.warning("ended abandoned execution %s", execution_id, extra={"execution_id": execution_id})
            ended.append(execution_id)
    return ended

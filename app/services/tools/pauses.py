"""Ends of a paused tool loop that no task drives: wait_timeout_s past (the workers' sweep) and cancel."""

from __future__ import annotations

import logging

from sqlalchemy import select

from app.extensions import db
from app.models import Execution, ExecutionStatus
from app.services.tools.step import resolve_unfinished
from app.timeutil import utcnow

log = logging.getLogger(__name__)

S = ExecutionStatus
PAUSED = (S.REQUIRES_ACTION, S.WAITING, S.AWAITING_APPROVAL)
WAIT_TIMEOUT = "wait_timeout"


def end_expired(*, limit: int = 100) -> list[str]:
    """End `timed_out` every pause past its wait_timeout_s, resolving its pending calls in the same transaction."""
    from app.services.executions import state

    expired = db.session.execute(
        select(Execution.id, Execution.status)
        .where(Execution.paused_until.is_not(None), Execution.paused_until < utcnow(),
               Execution.status.in_([status.value for status in PAUSED]))
        .order_by(Execution.paused_until).limit(limit)
    ).all()
    db.session.rollback()
    ended: list[str] = []
    for execution_id, status in expired:
        message = f"no answer within wait_timeout_s while {status}"
        resolve_unfinished(execution_id, {"code": WAIT_TIMEOUT, "message": message})
        if state.move(execution_id, S.TIMED_OUT, actor="sweeper", from_statuses=[S(status)],
                      values={"error_code": WAIT_TIMEOUT, "error_message": message, "paused_until": None},
                      audit_rows=[state.Audit("execution.timed_out", "error", {"reason": WAIT_TIMEOUT,
                                                                              "while": status})]):
            log.info("ended paused execution %s: wait_timeout_s", execution_id, extra={"execution_id": execution_id})
            ended.append(execution_id)
    return ended


def cancel_calls(execution_id: str, actor: str) -> None:
    """Before a cancel's move (same transaction): its unfinished calls end `failed` with code cancelled."""
    resolve_unfinished(execution_id, {"code": "cancelled", "message": f"the execution was cancelled by {actor}"})
